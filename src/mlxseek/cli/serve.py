"""`mlxseek serve`: OpenAI- and Anthropic-compatible HTTP server for one model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..formats import STYLES
from .group import library_errors, main


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Checkpoint folder (HF, mlx-lm or mlxseek convert output) with its tokenizer.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default is this machine only; 0.0.0.0 opens it to the network "
                   "(use --api-key then).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--api-key", envvar="MLXSEEK_API_KEY", default=None,
              help="Require this key (`Authorization: Bearer KEY` or `x-api-key: KEY`) on every route but "
                   "/health. Also read from $MLXSEEK_API_KEY.")
@click.option("--prompt-cache-gb", default=2.0, show_default=True, type=click.FloatRange(min=0.0),
              help="RAM for the prefix cache (least recently used prefixes are evicted first); 0 turns it off.")
@click.option("--prompt-cache-dir", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Also keep prefixes on disk in this folder; they survive a restart.")
@click.option("--draft", default="none", show_default=True, type=click.Choice(["none", "mtp", "dspark", "auto"]),
              help="Self-speculative decoding for greedy requests with the model's drafter: mtp or dspark "
                   "always, auto (the checkpoint's own drafter) where it is faster.")
@click.option("--max-queue", default=16, show_default=True, type=click.IntRange(min=1),
              help="Requests that may wait for the model; past that, clients get 429 with Retry-After.")
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together (continuous batching: they join and leave at step boundaries, each "
                   "gets the tokens it gets alone; --draft mtp/auto drafts only while one runs). Every family: V3.2 and "
                   "V4 rows run one forward each over their own caches.")
@click.option("--model-id", "model_ids", multiple=True,
              help="Name clients send as `model` (default: the folder's name); repeat it for several names.")
@click.option("--model-alias", "model_aliases", multiple=True, metavar="NAME=thinking|chat|default",
              help="One more name, selecting thinking on or off where the chat format has a toggle (a request's "
                   "own thinking switch still wins); repeatable.")
@click.option("--deepseek-names/--no-deepseek-names", default=True, show_default=True,
              help="Also answer to DeepSeek's API names: deepseek-chat (thinking off), deepseek-reasoner (on), "
                   "deepseek-v4-flash, deepseek-v4-pro.")
@click.option("--chat-style", default=None, type=click.Choice(STYLES),
              help="Chat format for /v1/chat/completions and /v1/messages (default: detected from the checkpoint).")
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest request body accepted (bigger: 413).")
@click.option("--max-tokens", default=None, type=click.IntRange(min=1),
              help="Most tokens one request generates (default: the model's context); larger requests are clamped "
                   "to it and end with finish `length`.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="A browser origin allowed to call the API (CORS), e.g. http://localhost:3000; repeat for more, "
                   "'*' for any. Off by default.")
@click.option("--log-prompts", is_flag=True, help="Write prompt text to the log (off: logs carry counts only).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log level.")
@library_errors
def serve(model_dir: Path, host: str, port: int, api_key: Optional[str], prompt_cache_gb: float,
          prompt_cache_dir: Optional[Path], draft: str, max_queue: int, max_batch: int, model_ids: tuple,
          model_aliases: tuple, deepseek_names: bool, chat_style: Optional[str], max_body_mb: float,
          max_tokens: Optional[int], log_prompts: bool, log_level: str, cors_origins: tuple[str, ...]) -> None:
    """Serve a model over the OpenAI (/v1/chat/completions, /v1/completions, /v1/responses) and Anthropic
    (/v1/messages) APIs.

    Point clients at http://HOST:PORT/v1 (OpenAI), http://HOST:PORT (Anthropic, or DeepSeek's API layout:
    every /v1 route is also served at the root and under /beta). /health, /v1/models and /metrics
    (Prometheus) are there too.
    """
    from ..serve import serve as run_server
    from ..serve.runner import bind_warning

    if (warning := bind_warning(host, api_key)) is not None:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    run_server(model_path=model_dir, host=host, port=port, api_key=api_key, prompt_cache_gb=prompt_cache_gb,
               prompt_cache_dir=prompt_cache_dir, draft=draft, max_queue=max_queue, max_batch=max_batch,
               model_id=list(model_ids), model_aliases=list(model_aliases), deepseek_names=deepseek_names,
               chat_style=chat_style, max_body_mb=max_body_mb, max_tokens=max_tokens,
               log_prompts=log_prompts, log_level=log_level, warn=False, cors_origins=cors_origins)

"""`serve(...)`: load a checkpoint once, start its Engine and run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import ServeError
from .limits import Limits
from .model_names import model_names

log = logging.getLogger("mlxseek.serve")
DRAFTS = ("none", "mtp", "auto")


def bind_warning(host: str, api_key: Optional[str]) -> Optional[str]:
    """A warning when the server would listen beyond this machine without an API key."""
    if api_key:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"listening on {host} without an API key: anyone who can reach this port can use the model; "
            "pass --api-key KEY (clients send it as `Authorization: Bearer KEY`) or bind 127.0.0.1")


def _check(port: int, prompt_cache_gb: float, draft: str, max_queue: int, max_batch: int) -> None:
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: a TCP port is 0..65535")
    if prompt_cache_gb < 0:
        raise ServeError(f"--prompt-cache-gb {prompt_cache_gb}: must be >= 0 (0 turns the RAM tier off)")
    if draft not in DRAFTS:
        raise ServeError(f"--draft {draft!r}: choose one of {', '.join(DRAFTS)}")
    if max_queue < 1 or max_batch < 1:
        raise ServeError(f"--max-queue {max_queue} / --max-batch {max_batch}: both must be >= 1")


def serve(*, model_path: str | Path, host: str = "127.0.0.1", port: int = 8080, api_key: Optional[str] = None,
          prompt_cache_gb: float = 2.0, prompt_cache_dir: Optional[str | Path] = None, draft: str = "none",
          max_queue: int = 16, max_batch: int = 1, model_id: Union[str, Sequence[str], None] = None,
          model_aliases: Sequence[str] = (), deepseek_names: bool = True, chat_style: Optional[str] = None,
          max_body_mb: float = 8.0, max_tokens: Optional[int] = None, log_prompts: bool = False,
          log_level: str = "info", warn: bool = True, cors_origins: tuple[str, ...] = ()) -> None:
    """Serve the checkpoint at `model_path` until interrupted (OpenAI and Anthropic APIs on host:port).

    model_id: the name clients send as `model` (default: the folder's name), or several names (the first is
    the one responses report). model_aliases: more names with the thinking mode they select ("NAME=thinking",
    "NAME=chat", "NAME=default"). deepseek_names: also answer to DeepSeek's API names (deepseek-chat: thinking
    off, deepseek-reasoner: on, deepseek-v4-flash, deepseek-v4-pro). Raises ServeError for a bad
    option and CheckpointError for a folder that cannot be loaded or has no tokenizer. warn: log a warning
    when listening beyond this machine without an API key (the CLI prints its own). cors_origins: browser
    origins allowed to call the API (off by default).
    """
    import uvicorn

    from ..errors import CheckpointError
    from ..loading.loader import load
    from .app import create_app
    from .engine import Engine

    _check(port, prompt_cache_gb, draft, max_queue, max_batch)
    ids = [model_id] if isinstance(model_id, str) else list(model_id or ())
    names = model_names(ids or [Path(model_path).resolve().name], aliases=model_aliases, deepseek=deepseek_names)
    name = next(iter(names))
    if not logging.getLogger().handlers:  # request summaries (counts and timings, no text) go to stderr
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if warn and (warning := bind_warning(host, api_key)) is not None:
        log.warning(warning)
    model, tokenizer = load(model_path)
    if tokenizer is None:
        raise CheckpointError(f"{model_path}: no tokenizer.json or tokenizer.model; the server needs a tokenizer")
    engine = Engine(model, tokenizer, model_id=name, max_queue=max_queue,
                    prompt_cache_bytes=int(prompt_cache_gb * (1 << 30)),
                    prompt_cache_dir=None if prompt_cache_dir is None else str(prompt_cache_dir),
                    draft=draft, max_batch=max_batch)
    limits = Limits(max_body_bytes=int(max_body_mb * (1 << 20)), max_tokens=max_tokens)
    app = create_app(model=model, tokenizer=tokenizer, engine=engine, model_id=name, api_key=api_key,
                     limits=limits, chat_style=chat_style, log_prompts=log_prompts, model_names=names,
                     cors_origins=cors_origins)
    engine.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        engine.stop()

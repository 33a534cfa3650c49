"""`mlxseek eval`: perplexity on a text file, and KL divergence / top-1 agreement against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from .group import library_errors, main


@main.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Checkpoint folder to score (HF, mlx-lm or mlxseek convert output; needs its tokenizer).")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="UTF-8 text file to score.")
@click.option("--kl-vs", "kl_vs", type=click.Path(path_type=Path), default=None,
              help="Reference checkpoint (same vocabulary, e.g. the unquantized model): adds KL divergence and "
                   "top-1 agreement per token.")
@click.option("--ctx", type=click.IntRange(min=2), default=None,
              help="Tokens per chunk [default: min(512, the model's context)].")
@click.option("--score-from", type=click.IntRange(min=0), default=None,
              help="Score predictions from this position of each chunk on [default: ctx/2, as llama.cpp].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Compute dtype [default: float32 on CPU, bfloat16 on Metal].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@library_errors
def eval_command(model_dir: Path, data: Path, kl_vs: Optional[Path], ctx: Optional[int], score_from: Optional[int],
                 dtype: Optional[str], as_json: bool) -> None:
    """Perplexity of a model on a text file; with --kl-vs, KL divergence and top-1 agreement too."""
    from ..tools.evaluate import evaluate, format_result

    result = evaluate(model=model_dir, data=data, kl_vs=kl_vs, ctx=ctx, score_from=score_from, dtype=dtype)
    click.echo(json.dumps(result.to_dict()) if as_json else format_result(result))

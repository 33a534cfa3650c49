"""Shared `--draft` options (self-speculative decoding with the model's MTP or DSpark drafter) for
`mlxseek generate`, `chat` and `bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click


def draft_options(fn):
    """--draft/--num-draft: draft with the model's own drafter and verify in one forward pass."""
    for opt in reversed([
        click.option("--draft", type=click.Choice(["mtp", "dspark", "auto", "none"]), default=None,
                     callback=lambda ctx, param, v: None if v == "none" else v,
                     help="Self-speculative decoding: 'mtp' (the MTP head) or 'dspark' (the DSpark block drafter of "
                          "V4-0731/0813) always drafts; 'auto' takes the checkpoint's own drafter and drafts only "
                          "where it pays on this device; 'none' decodes plainly. Greedy output is unchanged."),
        click.option("--num-draft", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Tokens drafted per verify step (MTP: chained drafts; DSpark: the block size, "
                          "config.json dspark_block_size is what it was trained for)."),
    ]):
        fn = opt(fn)
    return fn


def run_draft_bench(model_dir: Path, *, draft: str, num_draft: int, prompt_file: Optional[Path], prompts: int,
                    prompt_tokens: int, gen_tokens: int, as_json: bool, load_options: dict) -> None:
    """`mlxseek bench --draft`: plain decoding vs speculation (MTP or DSpark) on the same prompts."""
    from ..errors import GenerationError
    from ..loading.loader import load
    from ..tools.draft_bench import (
        bench_draft,
        format_rows,
        random_prompts,
        text_prompts,
    )

    model, tokenizer = load(model_dir, **load_options)
    if prompt_file is not None:
        if tokenizer is None:
            raise GenerationError(f"{model_dir}: --prompt-file needs the model's tokenizer, and the folder has none")
        batch = text_prompts(tokenizer, prompt_file, prompts, prompt_tokens)
    else:
        batch = random_prompts(model.config.vocab_size, prompts, prompt_tokens)
    row = bench_draft(model, batch, gen_tokens=gen_tokens, num_draft=num_draft, draft=draft)
    row["model"] = str(model_dir)
    click.echo(json.dumps(row) if as_json else format_rows([row]))

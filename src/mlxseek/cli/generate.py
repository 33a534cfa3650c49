"""`mlxseek generate`: stream one completion to stdout; timing and memory go to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .distributed import placement_options
from .draft_options import draft_options
from .group import library_errors, main


def sampling_options(fn):
    """--temp/--top-p/--seed/--max-tokens/--system, shared by generate and chat."""
    for opt in reversed([
        click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
                     help="Checkpoint folder (HF, mlx-lm or mlxseek convert output)."),
        click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1),
                     help="Most tokens to generate per reply."),
        click.option("--temp", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
                     help="Sampling temperature; 0 is greedy."),
        click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0.0, 1.0),
                     help="Nucleus sampling mass (with --temp > 0)."),
        click.option("--seed", default=None, type=int, help="Seed MLX's random generator for reproducible sampling."),
        click.option("--system", default=None, help="System prompt (chat template)."),
    ]):
        fn = opt(fn)
    return fn


def load_for_text(model_dir: Path, **load_options):
    """(model, tokenizer); a folder without a tokenizer is refused with the fix named."""
    from ..errors import CheckpointError
    from ..loading.loader import load

    model, tokenizer = load(model_dir, **load_options)
    if tokenizer is None:
        raise CheckpointError(
            f"{model_dir}: no tokenizer.json or tokenizer.model; copy the source checkpoint's tokenizer files here"
        )
    return model, tokenizer


def make_sampler_for(temp: float, top_p: float):
    from ..speculative import (
        make_sampler,  # mlx-lm's sampler that also exposes its distribution (for --draft)
    )

    return make_sampler(temp=temp, top_p=top_p if top_p < 1.0 else 0.0)


def drafter_label(model, draft: Optional[str]) -> str:
    """How the stats line names the drafter that ran: "MTP" or "DSpark"."""
    kind = draft if draft in ("mtp", "dspark") else next(iter(getattr(model, "drafters", ())), "mtp")
    return {"mtp": "MTP", "dspark": "DSpark"}[kind]


def print_stats(r, drafter: str = "MTP") -> None:
    click.echo(
        f"prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.1f} tok/s | generation: {r.generation_tokens} tokens, "
        f"{r.generation_tps:.1f} tok/s | peak memory {r.peak_memory:.2f} GB | finish: {r.finish_reason}"
        + (f" | {drafter} drafts accepted {r.accepted_tokens}/{r.draft_tokens} ({100 * r.acceptance_rate:.0f}%)"
           if r.draft_tokens else ""),
        err=True,
    )


@main.command()
@sampling_options
@click.option("--prompt", required=True, help="Prompt text (rendered with the chat template unless --raw).")
@click.option("--raw", is_flag=True, help="Feed --prompt as is, without the chat template.")
@click.option("--stop", multiple=True, help="Stop at this string (repeatable); it is not printed.")
@draft_options
@library_errors
@placement_options
def generate(model_dir: Path, prompt: str, max_tokens: int, temp: float, top_p: float, seed: Optional[int],
             system: Optional[str], raw: bool, stop: tuple[str, ...], load_options: dict,
             draft: Optional[str] = None, num_draft: int = 1) -> None:
    """Generate text for one prompt."""
    from ..generation.stream import stream_generate
    from ..loading.tokenizer import apply_chat_template

    model, tokenizer = load_for_text(model_dir, **load_options)
    if not raw:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        prompt = apply_chat_template(tokenizer, messages)
    r = None
    for r in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler_for(temp, top_p),
                             seed=seed, stop=list(stop), draft=draft, num_draft=num_draft):
        click.echo(r.text, nl=False)
    click.echo()
    print_stats(r, drafter_label(model, draft))

"""`mlxseek chat`: an interactive multi-turn conversation on stdin/stdout, one prompt cache throughout.

Commands: `/reset` forgets the conversation, `/exit` (or end of input) quits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from ..errors import GenerationError
from .group import library_errors, main
from .generate import load_for_text, make_sampler_for, print_stats, sampling_options


@main.command()
@sampling_options
@click.option("--stats", is_flag=True, help="Print speed and memory after each reply (stderr).")
@library_errors
def chat(model_dir: Path, max_tokens: int, temp: float, top_p: float, seed: Optional[int], system: Optional[str],
         stats: bool) -> None:
    """Chat with a model (type /reset to start over, /exit to quit)."""
    from ..generation.chat import ChatSession

    model, tokenizer = load_for_text(model_dir)
    session = ChatSession(model, tokenizer, system=system, max_tokens=max_tokens,
                          sampler=make_sampler_for(temp, top_p), seed=seed)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("[mlxseek chat: /reset to start over, /exit to quit]")
    while True:
        if interactive:
            click.echo(">> ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if text == "/reset":
            session.reset()
            click.echo("[conversation reset]")
            continue
        if not text:
            continue
        try:
            r = None
            for r in session.send(text):
                click.echo(r.text, nl=False)
            click.echo()
            if stats:
                print_stats(r)
        except GenerationError as e:  # e.g. the context is full: the session goes on, /reset frees it
            click.echo(f"Error: {e}", err=True)

"""`mlxseek chat`: an interactive multi-turn conversation on stdin/stdout, one prompt cache throughout.

Commands: `/reset` forgets the conversation, `/tool ID RESULT` answers a tool call, `/exit` (or end of
input) quits. With `--tools FILE.json` (a list of OpenAI function schemas) the model's tool calls are
printed as JSON lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import ChatFormatError, GenerationError
from .draft_options import draft_options
from .generate import drafter_label, load_for_text, make_sampler_for, print_stats, sampling_options
from .group import library_errors, main


def read_tools(path: Path | None) -> list | None:
    if path is None:
        return None
    try:
        tools = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{path}: not a readable JSON file ({e})", param_hint="--tools") from None
    if not isinstance(tools, list):
        raise click.BadParameter(f"{path}: expected a JSON list of OpenAI tool schemas", param_hint="--tools")
    return tools


def print_reply(records) -> object:
    """Echo reasoning and content as they stream, then each tool call as one JSON line; returns the last record."""
    r, in_reasoning = None, False
    for r in records:
        if r.reasoning and not in_reasoning:
            click.echo("[thinking] ", nl=False)
            in_reasoning = True
        click.echo(r.reasoning, nl=False)
        if r.content and in_reasoning:
            click.echo("\n[answer] ", nl=False)
            in_reasoning = False
        click.echo(r.content, nl=False)
        for call in r.tool_calls:
            click.echo("\n" + json.dumps(call.to_openai(), ensure_ascii=False), nl=False)
    click.echo()
    return r


@main.command()
@sampling_options
@click.option("--thinking/--no-thinking", default=None, help="Reasoning on or off (formats with a toggle).")
@click.option("--tools", "tools_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON file with a list of OpenAI tool schemas the model may call.")
@click.option("--stats", is_flag=True, help="Print speed and memory after each reply (stderr).")
@draft_options
@library_errors
def chat(model_dir: Path, max_tokens: int, temp: float, top_p: float, seed: int | None, system: str | None,
         thinking: bool | None, tools_file: Path | None, stats: bool, draft: str | None = None,
         num_draft: int = 1) -> None:
    """Chat with a model (/reset to start over, /tool ID RESULT to answer a tool call, /exit to quit)."""
    from ..generation.chat import ChatSession

    tools = read_tools(tools_file)
    model, tokenizer = load_for_text(model_dir)
    session = ChatSession(model, tokenizer, system=system, thinking=thinking, tools=tools, max_tokens=max_tokens,
                          sampler=make_sampler_for(temp, top_p), seed=seed,
                          **({"draft": draft, "num_draft": num_draft} if draft else {}))
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("[mlxseek chat: /reset to start over, /tool ID RESULT to answer a tool call, /exit to quit]")
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
            if text.startswith("/tool"):
                parts = text.split(maxsplit=2)
                if len(parts) < 3:
                    raise ChatFormatError("usage: /tool ID RESULT")
                stream = session.send_tool_result(parts[1], parts[2])
            else:
                stream = session.send(text)
            r = print_reply(stream)
            if stats and r is not None:
                print_stats(r, drafter_label(model, draft))
        except (GenerationError, ChatFormatError) as e:  # the session goes on (/reset frees a full context)
            click.echo(f"Error: {e}", err=True)

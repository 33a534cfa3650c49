"""`mlxseek launch`, and the placement options (`--distributed`, `--ranks`, `--expert-memory-gb`) that
`mlxseek generate` and `mlxseek bench` share.

`--distributed pipeline|expert` inside a rank (MLX_RANK, OMPI_COMM_WORLD_RANK or PMI_RANK set, as
`mlx.launch`, `mpirun` and `mlxseek launch` do) joins the group and loads this rank's share; only rank
0 prints. Outside one, the command re-runs itself as `--ranks` local ranks on 127.0.0.1 under
`mlxseek.parallel.launcher`, which returns the first failing rank's exit code and kills the rest.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Optional

import click

from .group import library_errors, main

RANK_ENTRY = "import sys; from mlxseek.cli import main; main(prog_name='mlxseek')"


def _echo(rank: int, stream: str, line: str) -> None:
    if stream == "stdout":
        if rank == 0:  # every rank computes the same tokens: show them once
            click.echo(line, nl=False)
    else:
        click.echo(line if rank == 0 else f"[rank {rank}] {line}", nl=False, err=True)


def run_ranks(args: list[str], ranks: int, deadline: float) -> int:
    """Run `mlxseek <args>` as `ranks` local ranks; returns the launcher's exit code."""
    from ..parallel.launcher import launch

    result = launch([sys.executable, "-c", RANK_ENTRY, *args], ranks, deadline=deadline, echo=_echo)
    if result.returncode != 0:
        click.echo(f"mlxseek launch: {result.summary()}", err=True)
    return result.returncode


def _argv(ctx: click.Context) -> list[str]:
    """The command line that reproduces `ctx`'s command with its parsed options (for the ranks)."""
    out = [ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if not isinstance(p, click.Option) or value is None or p.name == "ranks":
            continue
        if p.is_flag:
            out += [p.opts[0]] if value else p.secondary_opts[:1]
        elif p.multiple:
            for v in value:
                out += [p.opts[0], str(v)]
        else:
            out += [p.opts[0], str(value)]
    return out


def placement_options(fn):
    """Adds --distributed/--ranks/--deadline/--expert-memory-gb/--engram-memory-gb; `fn` receives `load_options` (the keyword
    arguments for `mlxseek.load`)."""

    @click.option("--distributed", type=click.Choice(["pipeline", "expert"]), default=None,
                  help="Split the model over ranks: contiguous layers (pipeline) or each MoE layer's experts (expert).")
    @click.option("--ranks", type=click.IntRange(min=2), default=2, show_default=True,
                  help="With --distributed outside a launcher: how many local ranks to start on 127.0.0.1.")
    @click.option("--deadline", type=click.FloatRange(min=1), default=3600.0, show_default=True,
                  help="With --distributed: seconds before the local launcher kills every rank.")
    @click.option("--expert-memory-gb", type=click.FloatRange(min=0), default=None,
                  help="Keep at most this many GB of routed experts in memory; read the rest from disk on demand.")
    @click.option("--engram-memory-gb", type=click.FloatRange(min=0), default=None,
                  help="DeepSeek-V4.1: GB of hot Engram rows kept in RAM (default 1); the tables stay on disk.")
    @functools.wraps(fn)
    def wrapper(*args, distributed: Optional[str], ranks: int, deadline: float, expert_memory_gb: Optional[float],
                engram_memory_gb: Optional[float], **kwargs):
        from ..parallel.rank import join, launched_as_rank

        options = {} if expert_memory_gb is None else {"expert_memory_gb": expert_memory_gb}
        if engram_memory_gb is not None:
            options["engram_memory_gb"] = engram_memory_gb
        if distributed is None:
            return fn(*args, load_options=options, **kwargs)
        if not launched_as_rank():
            sys.exit(run_ranks(_argv(click.get_current_context()), ranks, deadline))
        rank = join()
        if rank.rank != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank
        with rank.lost_peer_is_fatal():
            out = fn(*args, load_options={**options, "group": rank.group, "parallel": distributed}, **kwargs)
        # Every rank must have finished: a command that swallowed a lost peer's error must not exit 0.
        rank.barrier("finishing the command")
        return out

    return wrapper


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--ranks", type=click.IntRange(min=1), default=2, show_default=True, help="Local ranks to start.")
@click.option("--deadline", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds before every rank is killed.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@library_errors
def launch(ranks: int, deadline: float, command: tuple[str, ...]) -> None:
    """Run an mlxseek command as N ranks on this machine (MLX ring backend on 127.0.0.1).

    Example: mlxseek launch -n 2 -- generate --model DIR --prompt hi --distributed expert

    Exits with the first failing rank's code (mlx.launch exits 0); the other ranks are stopped."""
    sys.exit(run_ranks(list(command), ranks, deadline))

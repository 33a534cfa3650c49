"""`mlxseek bench`: decode/prefill tok/s, achieved GB/s, % of the memory roofline and peak memory,
optionally next to mlx-lm on the same checkpoint in the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from .distributed import placement_options
from .draft_options import draft_options, run_draft_bench
from .group import library_errors, main


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint folder.")
@click.option("--prompt-tokens", default=512, show_default=True, type=click.IntRange(min=1))
@click.option("--gen-tokens", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(min=1), help="Timed runs; medians are shown.")
@click.option("--vs", multiple=True, type=click.Choice(["mlx-lm", "mlx-lm-fp32"]),
              help="Also measure mlx-lm on the same folder: its default (bf16 activations on mlx-community "
                   "weights) and/or with every floating parameter cast to float32. Repeatable.")
@click.option("--ours", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --vs: the folder mlxseek reads instead of --model, e.g. `mlxseek convert --layout kmajor` "
                   "of the same source (only mlxseek reads that layout).")
@click.option("--bandwidth", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Memory bandwidth in GB/s for the roofline (default: the chip's published figure on a Mac, "
                   "else a NumPy probe).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per measurement.")
@draft_options  # with --draft: plain vs MTP drafting over --runs prompts (mlxseek.tools.draft_bench)
@click.option("--prompt-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --draft: cut the prompts from this text file (default: random token ids).")
@library_errors
@placement_options
def bench(model_dir: Path, prompt_tokens: int, gen_tokens: int, runs: int, vs: tuple[str, ...], ours: Optional[Path],
          bandwidth: Optional[float], as_json: bool, load_options: dict, draft: Optional[str] = None,
          num_draft: int = 1, prompt_file: Optional[Path] = None) -> None:
    """Measure generation speed against the memory roofline."""
    if draft is not None:
        return run_draft_bench(model_dir, draft=draft, num_draft=num_draft, prompt_file=prompt_file, prompts=runs,
                               prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, as_json=as_json,
                               load_options=load_options)
    from ..tools.bench import bench as run_bench
    from ..tools.bench import format_table

    def on_row(row: dict) -> None:
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"measured {row['engine']}", err=True)

    rows = run_bench(model_dir, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, runs=runs, vs=vs,
                     bandwidth=bandwidth, on_row=on_row, load_options=load_options, ours=ours)
    if not as_json:
        click.echo(format_table(rows))

"""mlxseek vs mlx-lm (bf16 default and float32-forced) on the same weights, in one run.

    python benchmarks/bench_vs_mlx_lm.py                         # the ~1 GB random V3 (written if missing)
    python benchmarks/bench_vs_mlx_lm.py --runs 3 --jsonl out.jsonl
    python benchmarks/bench_vs_mlx_lm.py --fixtures               # also the committed tiny fixtures

Batch 1, 512-token random prompt, 128 greedy tokens, medians over --runs. Prints a markdown table per
model (the README's benchmark table) and, with --jsonl, appends one JSON object per measurement.
mlx-lm at its bf16 default runs about 1 tok/s on MLX's CPU backend: a full run takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlxseek.tools.bench import bench, format_table

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"
sys.path.insert(0, str(HERE))
from make_random_v3 import BENCH_MODEL as DEFAULT_MODEL  # noqa: E402
from make_random_v3 import ensure_bench_model as ensure_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (default: generated)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vs", nargs="*", default=["mlx-lm", "mlx-lm-fp32"], choices=["mlx-lm", "mlx-lm-fp32"])
    ap.add_argument("--bandwidth", type=float, help="GB/s (default: published figure on a Mac, else probe)")
    ap.add_argument("--fixtures", action="store_true", help="also bench tests/fixtures/* (short prompts)")
    ap.add_argument("--jsonl", type=Path, help="append every measurement here as JSON lines")
    args = ap.parse_args()

    jobs = [(ensure_model(args.model), args.prompt_tokens, args.gen_tokens)]
    if args.fixtures:
        jobs += [(f, 64, 32) for f in sorted(FIXTURES.iterdir()) if (f / "config.json").exists()]

    def on_row(row: dict) -> None:
        print(f"measured {row['engine']} on {Path(row['model']).name}", file=sys.stderr)
        if args.jsonl:  # as each engine finishes: a long run keeps what it measured
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")

    for folder, p, g in jobs:
        rows = bench(folder, prompt_tokens=p, gen_tokens=g, runs=args.runs, vs=args.vs, bandwidth=args.bandwidth,
                     on_row=on_row)
        print(f"\n### {folder.name}\n\n{format_table(rows)}\n", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""MTP self-speculative decoding on the DeepSeek-V4 fixtures (random weights): acceptance, tokens per
verify step, tok/s with and without drafting, and greedy identity with plain decoding.

    python benchmarks/v4_mtp_speed.py > /tmp/v4_mtp.jsonl     # table on stderr, JSON lines on stdout

Random weights draft almost nothing the model accepts (the MTP head was never trained to agree with the
main model), so acceptance is near 1/vocab and the speedup below 1: the figures show the cost of drafting
and that outputs are unchanged, not what a real checkpoint gains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", nargs="+", default=["v4_flash", "v4_pro"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=48)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    import mlx.core as mx

    import mlxseek
    from mlxseek.tools.draft_bench import bench_draft, format_rows

    tables = []
    for name in args.fixtures:
        model = mlxseek.load(FIX / name, tokenizer=False)[0]
        ids = np.load(FIX / name / "golden.npz")["prompt"].astype(np.uint32)
        step = (ids.size - args.prompt_tokens) // max(1, args.prompts - 1)
        prompts = [mx.array(ids[i * step: i * step + args.prompt_tokens]) for i in range(args.prompts)]
        rows = []
        for draft, k in [("mtp", k) for k in args.k] + [("auto", 1)]:
            row = bench_draft(model, prompts, gen_tokens=args.gen_tokens, num_draft=k, draft=draft)
            rows.append(row)
            print(json.dumps({"fixture": name, "backend": model.backend.kind, **row}), flush=True)
        tables.append(f"{name}:\n{format_rows(rows)}")
    print("\n\n".join(tables), file=sys.stderr)


if __name__ == "__main__":
    main()

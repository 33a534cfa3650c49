#!/usr/bin/env python
"""MTP self-speculative decoding on the trained tiny DeepSeek-V3: acceptance, tokens per verify step, tok/s
with and without drafting, and token-for-token identity with plain greedy decoding.

    python benchmarks/mtp_speed.py > /tmp/mtp_speed.jsonl      # table on stderr, JSON lines on stdout

20 held-out prompts x 128 new tokens, float32 weights (the bf16 checkpoint computed in float32) and the
4-bit g64 conversion; k = 1, 2, 3 drafts, draft="auto", and sampling at temperature 0.7 (acceptance under
rejection sampling; outputs then differ from plain decoding by construction, so identity is not checked).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=FIX / "trained_v3")
    ap.add_argument("--data", type=Path, default=FIX / "trained_v3_heldout.txt")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-mtp-speed"))
    args = ap.parse_args()
    import mlxseek
    from mlxseek.speculative import make_sampler
    from mlxseek.tools.draft_bench import bench_draft, format_rows, text_prompts

    q4 = args.work / "q4g64"
    mlxseek.convert(hf_path=args.model, mlx_path=q4, quantize=True, q_bits=4, q_group_size=64, force=True, quiet=True)
    tables = []
    for label, folder in (("float32", args.model), ("4-bit g64", q4)):
        model, tok = mlxseek.load(folder, dtype="float32")
        prompts = text_prompts(tok, args.data, args.prompts, args.prompt_tokens)
        rows = []
        for draft, k in (("mtp", 1), ("mtp", 2), ("mtp", 3), ("auto", 1)):
            row = bench_draft(model, prompts, gen_tokens=args.gen_tokens, num_draft=k, draft=draft)
            rows.append(row)
            emit(label, row)
        row = bench_draft(model, prompts, gen_tokens=args.gen_tokens, num_draft=1,
                          sampler=make_sampler(temp=0.7), seed=0)
        row["draft"] = "mtp temp 0.7"
        rows.append(row)
        emit(label, row)
        tables.append(f"{label} ({folder}):\n{format_rows(rows)}")
    print("\n\n".join(tables), file=sys.stderr)


def emit(label: str, row: dict) -> None:
    print(json.dumps({"weights": label, **row}), flush=True)
    print(f"done {label} {row['draft']} k={row['num_draft']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

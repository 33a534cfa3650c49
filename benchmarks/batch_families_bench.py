"""Aggregate batched decode tok/s per family, V4 fused (one attention pass per step) beside its row-by-row
reference, in one run; prints JSON lines.

    python benchmarks/batch_families_bench.py --jsonl benchmarks/results/issue23_batch_v4_fused.jsonl
    python benchmarks/batch_families_bench.py --models v4=DIR --batches 1 2 4 8 --rounds 3
    python benchmarks/batch_families_bench.py --models v4=tests/fixtures/v4_flash --rounds 0   # paired steps only

Each (family, path, batch) runs `--rounds` times, the rounds interleaved (round r runs every configuration,
the order alternating between rounds) so a loaded machine's drift hits all alike; the line holds the median
and every round. Aggregate decode tok/s: every row's tokens after its first, over the wall clock from all
rows admitted to the last token (as `agent_bench.py --turns 0`). Rows have different prompt lengths
(--prompt + 37 * row), so V4 rows sit at different window and compressor positions. "rows" is the slow
reference (`model.fuse_batch_rows = False`: rows of solo caches, attention row by row in one trunk forward).
Then, per batch size, "paired_steps": a fused and a row-by-row decoder over the same rows step in turn, and
the line has each one's milliseconds per step and their ratio (robust to a loaded machine's drift).
The default models are the tiny test fixtures: the figures show per-step overhead (dispatch, Python), not a
real model's memory-bound speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx

import mlxseek
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DEFAULT_MODELS = {"v3": FIXTURES / "v3", "v3.2": FIXTURES / "v32", "v4": FIXTURES / "v4_flash"}


def emit(line: dict, out) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.write(text + "\n")
        out.flush()


def decode(model, prompts: list[list[int]], gen: int, fused: bool) -> tuple[int, float]:
    """(decode tokens, wall seconds) of the prompts decoded together."""
    model.fuse_batch_rows = fused
    try:
        dec = BatchDecoder(model, None)
        for p in prompts:
            dec.add(p, RowParams(max_tokens=gen))
        mx.eval(mx.zeros(1))
        t0, n = time.perf_counter(), 0
        while dec.active or dec.pending:
            n += sum(rec.generation_tokens > 1 for _, rec in dec.step())
        return n, time.perf_counter() - t0
    finally:
        del model.fuse_batch_rows


def paired_steps(model, prompts: list[list[int]], gen: int) -> dict:
    """Fused and row-by-row decoders over the same rows, stepping in turn (the order alternating), so both
    see the same machine load: milliseconds per step of each."""
    decs, spent = {}, {True: 0.0, False: 0.0}
    for fused in (True, False):
        model.fuse_batch_rows = fused
        try:
            decs[fused] = BatchDecoder(model, None)
            for p in prompts:
                decs[fused].add(p, RowParams(max_tokens=gen))
        finally:
            del model.fuse_batch_rows
    for step in range(gen - 1):
        for fused in ((True, False) if step % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            decs[fused].step()
            spent[fused] += time.perf_counter() - t0
    ms = {k: 1e3 * v / (gen - 1) for k, v in spent.items()}
    return {"fused_ms_per_step": round(ms[True], 2), "rows_ms_per_step": round(ms[False], 2),
            "rows_over_fused": round(ms[False] / ms[True], 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=[], metavar="FAMILY=DIR", help="default: the v3, v3.2, v4 fixtures")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--prompt", type=int, default=64, help="row 0's prompt tokens; row i has 37 * i more")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jsonl", type=Path, help="also append the lines to this file")
    args = ap.parse_args(argv)
    folders = dict(m.split("=", 1) for m in args.models) or {k: str(v) for k, v in DEFAULT_MODELS.items()}
    models = {f: mlxseek.load(d, dtype="float32", tokenizer=False)[0] for f, d in folders.items()}
    # V4 (whose batch cache differs from its reference) both ways; the others as they run (fused rows)
    configs = [(f, path) for f, m in models.items() for path in (("fused", "rows") if m.attends_row_caches else ("fused",))]
    rng = random.Random(0)
    prompts = {f: [[rng.randrange(10, m.config.vocab_size) for _ in range(args.prompt + 37 * i)]
                   for i in range(max(args.batches))] for f, m in models.items()}
    out = open(args.jsonl, "a") if args.jsonl else None
    runs: dict = {}
    try:
        emit({"bench": "batch_families", "argv": sys.argv[1:], "models": folders, "device": str(mx.default_device()),
              "loadavg_start": os.getloadavg()}, out)
        for r in range(args.rounds):
            order = [(c, b) for c in configs for b in args.batches]
            for (family, path), b in (order if r % 2 == 0 else order[::-1]):
                n, wall = decode(models[family], prompts[family][:b], args.gen_tokens, path == "fused")
                runs.setdefault((family, path, b), []).append(n / wall)
        for (family, path, b), tps in runs.items():
            emit({"bench": "batched_decode", "family": family, "path": path, "batch": b,
                  "aggregate_tok_s": round(statistics.median(tps), 2), "rounds": [round(t, 2) for t in tps],
                  "gen_tokens": args.gen_tokens, "prompt_tokens": [args.prompt + 37 * i for i in range(b)]}, out)
        for family, path in configs:
            if path == "rows":  # the same rows decoded both ways, step by step in turn
                for b in args.batches:
                    emit({"bench": "paired_steps", "family": family, "batch": b, "loadavg": os.getloadavg()[0],
                          **paired_steps(models[family], prompts[family][:b], args.gen_tokens)}, out)
        emit({"bench": "batch_families_end", "loadavg_end": os.getloadavg()}, out)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()

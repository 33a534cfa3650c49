#!/usr/bin/env python
"""Throughput of the importance-weighted search (convert/weighted.py) against its op-by-op reference and
plain `mx.quantize`, on one DeepSeek-V3 routed-expert-shaped matrix (2048 x 7168, bf16, group 64).

    python benchmarks/weighted_speed.py >> benchmarks/results/issue25_weighted_speed.jsonl

One JSON line per (function, bits): the best of --repeats runs in weights per second (the best, not the
mean, because the machine is shared and other jobs only ever slow a run down), and whether its outputs
equal the reference's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import mlx.core as mx

from mlxseek.convert.weighted import quantize_weighted, quantize_weighted_reference


def _best_seconds(fn, repeats: int) -> tuple[float, tuple]:
    best, out = float("inf"), ()
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        mx.eval(*out)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=7168)
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    w = (0.02 * mx.random.normal((args.rows, args.cols), key=mx.random.key(0))).astype(mx.bfloat16)
    imp = mx.random.uniform(shape=(args.cols,), key=mx.random.key(1)) ** 4
    mx.eval(w, imp)
    n = args.rows * args.cols
    for bits in args.bits:
        kw = dict(group_size=64, bits=bits, dtype=mx.bfloat16)
        ref_s, ref = _best_seconds(lambda: quantize_weighted_reference(w, imp, **kw), args.repeats)
        new_s, new = _best_seconds(lambda: quantize_weighted(w, imp, **kw), args.repeats)
        plain_s, _ = _best_seconds(lambda: mx.quantize(w, group_size=64, bits=bits), args.repeats)
        same = all(mx.array_equal(a, b).item() for a, b in zip(new, ref))
        for name, s in (("reference", ref_s), ("quantize_weighted", new_s), ("mx.quantize", plain_s)):
            print(json.dumps({"bench": "weighted_speed", "function": name, "bits": bits, "shape": [args.rows, args.cols],
                              "device": str(mx.default_device()), "machine": platform.machine(),
                              "best_of": args.repeats, "seconds": round(s, 3), "mweights_per_s": round(n / s / 1e6, 1),
                              **({"equal_to_reference": same} if name == "quantize_weighted" else {})}), flush=True)


if __name__ == "__main__":
    main()

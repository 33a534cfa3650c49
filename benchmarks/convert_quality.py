"""Quantization quality of the conversion recipes on the committed tiny checkpoints.

    python benchmarks/convert_quality.py [--group-size 32] [--work /tmp/convert-quality]

For each fixture and variant (bf16 storage, and 4-bit uniform / experts / mixed), convert with
`mlxseek.convert`, load in float32 and compare the logits on the fixture's golden prompt with the
HF folder loaded directly in float32 (exact weights): max and mean |diff|, and top-1 agreement
(share of positions whose argmax is unchanged). One JSON line per (fixture, variant).
Random-weight models have tiny argmax margins, so top-1 agreement here is a pessimistic figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np

import mlxseek

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
VARIANTS = {
    "bf16": {"dtype": "bfloat16"},
    "q4-uniform": {"quantize": True, "q_bits": 4, "recipe": "uniform"},
    "q4-experts": {"quantize": True, "q_bits": 4, "recipe": "experts"},
    "q4-mixed": {"quantize": True, "q_bits": 4, "recipe": "mixed"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", nargs="+", default=["v3", "v3_fp8", "v2_lite"])
    ap.add_argument("--group-size", type=int, default=32, help="32 quantizes the tiny dims (32, 96) too")
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert-quality"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    for name in args.fixtures:
        src = FIXTURES / name
        prompt = mx.array(np.load(src / "golden.npz")["prompt"])[None]
        ref_model, _ = mlxseek.load(src, dtype="float32")
        ref = np.array(ref_model(prompt)[0])
        for variant, kw in VARIANTS.items():
            kw = {"q_group_size": args.group_size, **kw}
            result = mlxseek.convert(hf_path=src, mlx_path=args.work / f"{name}-{variant}", quiet=True, **kw)
            model, _ = mlxseek.load(result.path, dtype="float32")
            out = np.array(model(prompt)[0])
            diff = np.abs(out - ref)
            print(json.dumps({
                "fixture": name, "variant": variant, "group_size": args.group_size if kw.get("quantize") else None,
                "bits_per_weight": round(result.bits_per_weight, 3), "output_bytes": result.output_bytes,
                "logits_max_abs_diff": float(f"{diff.max():.4g}"), "logits_mean_abs_diff": float(f"{diff.mean():.4g}"),
                "top1_agreement": round(float((out.argmax(-1) == ref.argmax(-1)).mean()), 4),
                "positions": int(ref.shape[0]),
            }), flush=True)


if __name__ == "__main__":
    main()

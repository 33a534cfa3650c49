#!/usr/bin/env python
"""Where does calibration's gain come from on the trained V3? The calibrated conversion of
benchmarks/quant_quality.py, except that the routed experts (`switch_mlp`) get weight-only statistics (their
groups are then searched for the plain, unweighted error), scored by the same `mlxseek eval` against bf16.
Compare with the "calibrated N-bit g64" rows of benchmarks/results/issue25_quant_quality.jsonl.

    python benchmarks/expert_importance_ablation.py >> benchmarks/results/issue25_expert_importance.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", default="3,2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-expert-importance"))
    args = ap.parse_args()
    import mlxseek
    from mlxseek.convert import calibrate
    from mlxseek.tools.evaluate import evaluate
    from quant_quality import CALIBRATION_TOKENS, FIX, calibration_text

    importance = calibrate.Statistics.importance

    def without_experts(self, path, expert=0):  # a routed expert reads as never seen: weight-only
        return None if ".switch_mlp." in path else importance(self, path, expert)

    calibrate.Statistics.importance = without_experts
    text = calibration_text(args.work, FIX / "trained_v3")
    for bits in (int(b) for b in args.bits.split(",")):
        out = args.work / f"{bits}bit"
        res = mlxseek.convert(hf_path=FIX / "trained_v3", mlx_path=out, quantize=True, q_bits=bits, q_group_size=64,
                              force=True, quiet=True, calibration=str(text), calibration_tokens=CALIBRATION_TOKENS)
        r = evaluate(model=out, data=FIX / "trained_v3_heldout.txt", kl_vs=FIX / "trained_v3", ctx=256)
        print(json.dumps({"variant": f"calibrated {bits}-bit g64, routed experts weight-only", "source": "bf16",
                          "bits_per_weight": round(res.bits_per_weight, 3), "ppl": round(r.ppl, 4),
                          "kl_mean": round(r.kl_mean, 6), "kl_p99": round(r.kl_p99, 6),
                          "top1_agreement": round(r.top1_agreement, 4), "tokens": r.tokens, "ctx": r.ctx,
                          "calibration_tokens": CALIBRATION_TOKENS}), flush=True)


if __name__ == "__main__":
    main()

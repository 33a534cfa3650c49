#!/usr/bin/env python
"""Calibrated vs uniform conversion of the tiny DeepSeek-V4 fixtures (`v4_fp4`: official FP4 experts, requantized
below 4 bits; `v4_flash`: bf16): conversion time and the importance-weighted error of every quantized matrix.

    python benchmarks/v4_calibration.py >> benchmarks/results/issue25_v4_calibration.jsonl

The fixtures carry random weights, so this measures the rounding (the objective the weighted search minimises,
summed over tensors and experts, each expert weighted by its token count), not model quality; the trained
V3's KL table is in benchmarks/quant_quality.py. The tokenizer is trained_v3's cut to the fixture's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", default="2,3")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-v4-calibration"))
    args = ap.parse_args()
    import mlxseek
    from v4_calibration_kit import statistics, weighted_errors, with_tokenizer

    shutil.rmtree(args.work, ignore_errors=True)
    std = Path(sysconfig.get_paths()["stdlib"])
    text = args.work / "calibration.txt"
    args.work.mkdir(parents=True)
    text.write_text("".join((std / f).read_text() for f in ("textwrap.py", "string.py", "json/decoder.py")))
    for name in ("v4_fp4", "v4_flash"):
        src = with_tokenizer(name, args.work / name)
        source, stats = statistics(src, text, args.tokens)
        for bits in (int(b) for b in args.bits.split(",")):
            folders, seconds = [], []
            for cal in (None, text):
                t0 = time.perf_counter()
                res = mlxseek.convert(hf_path=src, mlx_path=args.work / f"{name}-{bits}-{bool(cal)}", quantize=True,
                                      q_bits=bits, q_group_size=args.group_size, quiet=True, calibration=cal,
                                      calibration_tokens=args.tokens)
                seconds.append(time.perf_counter() - t0)
                folders.append(res.path)
            errors = weighted_errors(source, stats, folders)
            count = lambda n, e: float(stats.modules[n[: -len(".weight")]].count[e]) \
                if n[: -len(".weight")] in stats.modules else 1.0
            total = [sum(count(n, e) * v[i] for (n, e), v in errors.items()) for i in (0, 1)]
            ratios = sorted(v[1] / v[0] for v in errors.values() if v[0] > 0)
            print(json.dumps({"benchmark": "v4_calibration", "model": name, "bits": bits, "group_size": args.group_size,
                              "calibration_tokens": stats.tokens, "bits_per_weight": round(res.bits_per_weight, 3),
                              "matrices": len(errors), "weighted_error_ratio_total": round(total[1] / total[0], 4),
                              "weighted_error_ratio_median": round(ratios[len(ratios) // 2], 4),
                              "weighted_error_ratio_max": round(ratios[-1], 6),
                              "seconds_uniform": round(seconds[0], 1), "seconds_calibrated": round(seconds[1], 1),
                              "cold_experts": stats.summary()["cold_experts"]}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Quantization quality of the trained tiny DeepSeek-V3: every bit width and converter recipe through the
real converter (`mlxseek.convert`), scored by `mlxseek.tools.evaluate` against the bf16 checkpoint.

    python benchmarks/quant_quality.py > /tmp/quant_quality.jsonl      # table on stderr, JSON lines on stdout
    python benchmarks/quant_quality.py --only 'calibrated|target|3-bit g|2-bit g32'   # issue 25's rows

Calibrated rows run `--calibration` on standard-library sources other than the held-out files
(CALIBRATION_FILES, at most CALIBRATION_TOKENS tokens).

One JSON line per variant: bits/weight (the converter's count, MTP included), size on disk, perplexity on
the held-out text, mean KL(bf16 || variant) and top-1 agreement per token (llama.cpp's semantics: see
mlxseek/tools/evaluate.py). Modules whose input dim a group size does not divide stay float (`skipped`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

CAL = "calibration"
# Calibration text: standard-library sources that are not the held-out files (training.json lists those);
# the trained fixture saw them in training, as a model sees its own domain.
CALIBRATION_FILES = ("textwrap.py", "string.py", "json/decoder.py", "shlex.py", "fnmatch.py", "heapq.py",
                     "bisect.py", "calendar.py")
CALIBRATION_TOKENS = 8192

# (name, source, convert options); source "bf16" = trained_v3, "fp8" = trained_v3_fp8
VARIANTS = [
    ("bf16", "bf16", None),
    ("fp8 (official blocks)", "fp8", None),
    ("8-bit g64", "bf16", dict(q_bits=8, q_group_size=64)),
    ("6-bit g64", "bf16", dict(q_bits=6, q_group_size=64)),
    ("4-bit g64", "bf16", dict(q_bits=4, q_group_size=64)),
    ("4-bit g64, --layout kmajor", "bf16", dict(q_bits=4, q_group_size=64, layout="kmajor")),
    ("4-bit g32", "bf16", dict(q_bits=4, q_group_size=32)),
    ("3-bit g64", "bf16", dict(q_bits=3, q_group_size=64)),
    ("2-bit g64", "bf16", dict(q_bits=2, q_group_size=64)),
    ("2-bit g64, --layout kmajor", "bf16", dict(q_bits=2, q_group_size=64, layout="kmajor")),
    ("recipe experts, 4-bit g64", "bf16", dict(q_bits=4, q_group_size=64, recipe="experts")),
    ("recipe mixed, 4-bit g64", "bf16", dict(q_bits=4, q_group_size=64, recipe="mixed")),
    ("recipe experts, 2-bit g64", "bf16", dict(q_bits=2, q_group_size=64, recipe="experts")),
    ("recipe mixed, 2-bit g64", "bf16", dict(q_bits=2, q_group_size=64, recipe="mixed")),
    ("fp8 source -> 4-bit g64", "fp8", dict(q_bits=4, q_group_size=64)),
    ("3-bit g32", "bf16", dict(q_bits=3, q_group_size=32)),
    ("2-bit g32", "bf16", dict(q_bits=2, q_group_size=32)),
    # Calibrated (issue 25): `calibration=CAL` is replaced by the calibration text (see calibration_text).
    ("calibrated 4-bit g64", "bf16", dict(q_bits=4, q_group_size=64, calibration=CAL)),
    ("calibrated 3-bit g64", "bf16", dict(q_bits=3, q_group_size=64, calibration=CAL)),
    ("calibrated 2-bit g64", "bf16", dict(q_bits=2, q_group_size=64, calibration=CAL)),
    ("calibrated 4-bit g32", "bf16", dict(q_bits=4, q_group_size=32, calibration=CAL)),
    ("calibrated 3-bit g32", "bf16", dict(q_bits=3, q_group_size=32, calibration=CAL)),
    ("calibrated 2-bit g32", "bf16", dict(q_bits=2, q_group_size=32, calibration=CAL)),
    ("--target-bpw 2.5", "bf16", dict(q_group_size=64, calibration=CAL, target_bpw=2.5)),
    ("--target-bpw 3.0", "bf16", dict(q_group_size=64, calibration=CAL, target_bpw=3.0)),
    ("--target-bpw 3.5", "bf16", dict(q_group_size=64, calibration=CAL, target_bpw=3.5)),
    ("fp8 source -> calibrated 3-bit g64", "fp8", dict(q_bits=3, q_group_size=64, calibration=CAL)),
    ("recipe experts, 3-bit g64", "bf16", dict(q_bits=3, q_group_size=64, recipe="experts")),
    ("recipe mixed, 3-bit g64", "bf16", dict(q_bits=3, q_group_size=64, recipe="mixed")),
    ("calibrated recipe experts, 3-bit g64", "bf16", dict(q_bits=3, q_group_size=64, recipe="experts",
                                                           calibration=CAL)),
    ("calibrated recipe mixed, 3-bit g64", "bf16", dict(q_bits=3, q_group_size=64, recipe="mixed", calibration=CAL)),
    ("calibrated recipe mixed, 2-bit g64", "bf16", dict(q_bits=2, q_group_size=64, recipe="mixed", calibration=CAL)),
]


def calibration_text(work: Path, model: Path) -> Path:
    import sysconfig

    std = Path(sysconfig.get_paths()["stdlib"])
    heldout = set(json.loads((model / "training.json").read_text())["heldout_files"])
    files = [f for f in CALIBRATION_FILES if Path(f).name not in heldout]
    path = work / "calibration.txt"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((std / f).read_text() for f in files))
    return path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def skipped_modules(folder: Path) -> list[str]:
    q = json.loads((folder / "config.json").read_text()).get("quantization") or {}
    return [k for k, v in q.items() if v is False]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=FIX / "trained_v3")
    ap.add_argument("--fp8", type=Path, default=FIX / "trained_v3_fp8")
    ap.add_argument("--data", type=Path, default=FIX / "trained_v3_heldout.txt")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlxseek-quant-quality"))
    ap.add_argument("--only", default=None, help="regular expression: run only the variants whose name matches")
    args = ap.parse_args()
    import re
    import mlxseek
    from mlxseek.tools.evaluate import evaluate

    n_params = None
    rows = []
    cal = calibration_text(args.work, args.model)
    for name, source, options in VARIANTS:
        if args.only and not re.search(args.only, name) and name != "bf16":
            continue
        if options and options.get("calibration") == CAL:
            options = {**options, "calibration": str(cal), "calibration_tokens": CALIBRATION_TOKENS}
        src = args.model if source == "bf16" else args.fp8
        folder, bpw = src, None
        if options is not None:
            folder = args.work / name.replace(" ", "_").replace(",", "").replace(">", "")
            res = mlxseek.convert(hf_path=src, mlx_path=folder, quantize=True, force=True, quiet=True, **options)
            bpw = res.bits_per_weight
        r = evaluate(model=folder, data=args.data, kl_vs=args.model, ctx=args.ctx)
        if n_params is None:  # the bf16 source: 2 bytes per weight (the tiny float32 router bias aside)
            n_params = folder_bytes(src) / 2
        size = folder_bytes(folder)
        row = {"variant": name, "source": source, **(options or {}),
               "bits_per_weight": round(bpw if bpw is not None else 8 * size / n_params, 3),
               "size_mb": round(size / 1e6, 3), "ppl": round(r.ppl, 4), "ppl_stderr": round(r.ppl_stderr, 4),
               "kl_mean": round(r.kl_mean, 6), "kl_p99": round(r.kl_p99, 6),
               "top1_agreement": round(r.top1_agreement, 4), "tokens": r.tokens, "ctx": r.ctx,
               "skipped": skipped_modules(folder)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(f"done {name}", file=sys.stderr, flush=True)
    print(markdown(rows), file=sys.stderr)


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | bits/weight | size (MB) | perplexity | KL vs bf16 (nats) | top-1 agreement | float modules |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['bits_per_weight']:.2f} | {r['size_mb']:.2f} | {r['ppl']:.3f} "
                     f"| {r['kl_mean']:.5f} | {100 * r['top1_agreement']:.2f}% | {len(r['skipped'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Converter throughput and peak RSS: `mlxseek convert` vs `mlx_lm.convert` in one run, same inputs.

    python benchmarks/convert_speed.py > /tmp/convert_speed.jsonl        # JSON lines; table on stderr
    python benchmarks/convert_speed.py --baseline-src /path/to/old/src   # also an older mlxseek checkout

The inputs are the synthetic DeepSeek-V3-shaped FP8 checkpoints of benchmarks/make_synthetic_fp8.py
(2 and 8 GB by default), generated when missing and deleted afterwards unless --keep. Every tool runs in
its own child process (benchmarks/convert_memory.py: peak RSS from wait4, killed past --rss-limit-gb),
4-bit affine g64, uniform, bf16 scales; the tools take turns on each input so load from other processes
hits them alike, and each output is deleted as soon as it is measured (disk stays at input + one output).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convert_memory import MLX_LM, OURS, describe, run  # noqa: E402


def _with_src(code: str, src: Path) -> str:
    return f"import sys; sys.path.insert(0, {str(src)!r}); " + code


def _make_input(path: Path, gb: float) -> None:
    subprocess.run([sys.executable, str(HERE / "make_synthetic_fp8.py"), "--out", str(path), "--target-gb", str(gb)],
                   check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[2, 8])
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert-speed"))
    ap.add_argument("--baseline-src", type=Path, help="an older mlxseek src/ folder to run as a third tool")
    ap.add_argument("--rss-limit-gb", type=float, default=12.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ours_src = HERE.parent / "src"
    tools = [("mlxseek", _with_src(OURS, ours_src)), ("mlx_lm", MLX_LM)]
    if args.baseline_src:
        tools.append(("mlxseek-baseline", _with_src(OURS, args.baseline_src)))
    rows = []
    for gb in args.sizes_gb:
        src = args.work / f"fp8-{gb:g}gb"
        made = not src.exists()
        if made:
            _make_input(src, gb)
        info = describe(src)
        source_bytes = info.pop("_source_bytes")
        for tool, code in tools:
            dst = args.work / f"{src.name}-{tool}"
            r = run(code, src, dst, int(args.rss_limit_gb * 1e9))
            r["source_gb_per_s"] = round(source_bytes / 1e9 / r["wall_s"], 4) if r["exit"] == 0 else None
            r["source_gb_per_cpu_s"] = round(source_bytes / 1e9 / r["cpu_s"], 4) if r["exit"] == 0 and r["cpu_s"] else None
            row = {"tool": tool, "target_gb": gb, **info, **r}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(dst, ignore_errors=True)
        if made and not args.keep:
            shutil.rmtree(src, ignore_errors=True)
    print(_table(rows), file=sys.stderr)


def _table(rows: list[dict]) -> str:
    lines = ["| input | tool | wall s | cpu s | source GB/s | peak RSS GB | vs mlx_lm (wall) |", "|" + "---|" * 7]
    for r in rows:
        ref = next((x for x in rows if x["tool"] == "mlx_lm" and x["target_gb"] == r["target_gb"]), None)
        ratio = (ref["wall_s"] / r["wall_s"]) if ref and r["exit"] == 0 and ref["exit"] == 0 else None
        lines.append(f"| {r['input_gb']} GB | {r['tool']} | {r['wall_s']} | {r['cpu_s']} | {r['source_gb_per_s']} | "
                     f"{r['peak_rss_gb']} | {f'{ratio:.2f}x' if ratio else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

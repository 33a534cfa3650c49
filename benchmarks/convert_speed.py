#!/usr/bin/env python
"""Converter throughput and peak RSS: `mlxseek convert` vs `mlx_lm.convert` in one run, same inputs.

    python benchmarks/convert_speed.py > /tmp/convert_speed.jsonl        # JSON lines; table on stderr
    python benchmarks/convert_speed.py --baseline-src /path/to/old/src   # also an older mlxseek checkout
    python benchmarks/convert_speed.py --source bf16 --sizes-gb 2 --rounds 3   # bf16, stacked (mlx-lm layout)

The inputs are the synthetic DeepSeek-V3-shaped FP8 checkpoints of benchmarks/make_synthetic_fp8.py
(2 and 8 GB by default), generated when missing and deleted afterwards unless --keep; with --source bf16,
the random V3-shaped bf16 model of benchmarks/make_random_v3.py (hidden 1024, 64 experts, vocab 129280)
with --sizes-gb read as its number of decoder layers (2 layers: 0.97 GB). Every tool runs in
its own child process (benchmarks/convert_memory.py: peak RSS from wait4, killed past --rss-limit-gb),
4-bit affine g64, uniform, bf16 scales; the tools take turns on each input so load from other processes
hits them alike (--rounds N: N rounds, the order reversed every other round), and each output is deleted
as soon as it is measured (disk stays at input + one output).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convert_memory import MLX_LM, OURS, describe, run  # noqa: E402


def _with_src(code: str, src: Path) -> str:
    return f"import sys; sys.path.insert(0, {str(src)!r}); " + code


def _make_input(path: Path, gb: float, source: str) -> None:
    if source == "bf16":
        cmd = ["make_random_v3.py", "--out", str(path), "--bits", "0", "--layers", str(int(gb))]
    else:
        cmd = ["make_synthetic_fp8.py", "--out", str(path), "--target-gb", str(gb)]
    subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[2, 8])
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert-speed"))
    ap.add_argument("--baseline-src", type=Path, help="an older mlxseek src/ folder to run as a third tool")
    ap.add_argument("--rss-limit-gb", type=float, default=12.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--source", choices=("fp8", "bf16"), default="fp8")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each tool, alternating their order")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ours_src = HERE.parent / "src"
    tools = [("mlxseek", _with_src(OURS, ours_src)), ("mlx_lm", MLX_LM)]
    if args.baseline_src:
        tools.append(("mlxseek-baseline", _with_src(OURS, args.baseline_src)))
    rows = []
    for gb in args.sizes_gb:
        src = args.work / (f"fp8-{gb:g}gb" if args.source == "fp8" else f"bf16-{gb:g}layers")
        made = not src.exists()
        if made:
            _make_input(src, gb, args.source)
        info = describe(src)
        source_bytes = info.pop("_source_bytes")
        order = [t for k in range(args.rounds) for t in (tools if k % 2 == 0 else tools[::-1])]
        for k, (tool, code) in enumerate(order):
            dst = args.work / f"{src.name}-{tool}"
            r = run(code, src, dst, int(args.rss_limit_gb * 1e9))
            r["source_gb_per_s"] = round(source_bytes / 1e9 / r["wall_s"], 4) if r["exit"] == 0 else None
            r["source_gb_per_cpu_s"] = round(source_bytes / 1e9 / r["cpu_s"], 4) if r["exit"] == 0 and r["cpu_s"] else None
            row = {"tool": tool, "source": args.source, "target_gb": gb, "round": k // len(tools), **info, **r}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(dst, ignore_errors=True)
        if made and not args.keep:
            shutil.rmtree(src, ignore_errors=True)
    print(_table(rows), file=sys.stderr)


def _table(rows: list[dict]) -> str:
    """One line per input and tool: medians over its rounds; the ratios are mlx_lm's median wall (cpu) seconds
    over the tool's (CPU seconds are steadier than wall time on a machine shared with other jobs)."""
    lines = ["| input | tool | runs | wall s | cpu s | source GB/s | peak RSS GB | vs mlx_lm (wall) | (cpu) |",
             "|" + "---|" * 9]
    ok = [r for r in rows if r["exit"] == 0]
    med = lambda tool, gb, key: round(statistics.median(r[key] for r in ok if r["tool"] == tool and r["target_gb"] == gb), 4)
    for gb, tool in dict.fromkeys((r["target_gb"], r["tool"]) for r in ok):
        n = sum(1 for r in ok if r["tool"] == tool and r["target_gb"] == gb)
        ref = any(r["tool"] == "mlx_lm" and r["target_gb"] == gb for r in ok)
        ratio = " | ".join(f"{med('mlx_lm', gb, k) / med(tool, gb, k):.2f}x" if ref else "-" for k in ("wall_s", "cpu_s"))
        first = next(r for r in ok if r["target_gb"] == gb)
        lines.append(f"| {first['input_gb']} GB | {tool} | {n} | {med(tool, gb, 'wall_s')} | {med(tool, gb, 'cpu_s')} | "
                     f"{med(tool, gb, 'source_gb_per_s')} | {med(tool, gb, 'peak_rss_gb')} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Peak RSS, wall time and throughput of `mlxseek convert` vs `mlx_lm.convert` on the same input.

    python benchmarks/make_synthetic_fp8.py --out /tmp/fp8-2gb --target-gb 2
    python benchmarks/convert_memory.py --input /tmp/fp8-2gb --mlx-lm --work /tmp/convert-bench

Each converter runs in its own child process (4-bit, group 64, uniform, bf16 scales: both tools'
defaults for a bf16-typed config); the peak RSS is the child's own `ru_maxrss` from wait4(2), and the
parent also polls /proc so it can stop a child that grows past --rss-limit-gb (the machine is shared).
With --calibration FILE, also `--calibration FILE --calibration-tokens N` (issue 25): its extra time and
peak RSS against the plain run. Prints one JSON line per run. The bound the issue sets is 1.5 GB + 3 x the largest single expert tensor
(taken as float32, the dtype it is dequantized to); a calibrated run also holds the largest decoder layer in
float32 (MLX's CPU compute dtype) while its statistics are gathered: `calibrated_bound_gb`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

OURS = ("import sys, mlxseek; mlxseek.convert(hf_path=sys.argv[1], mlx_path=sys.argv[2], quantize=True, "
        "q_bits=4, q_group_size=64, quiet=True)")
OURS_CALIBRATED = ("import sys, mlxseek; mlxseek.convert(hf_path=sys.argv[1], mlx_path=sys.argv[2], quantize=True, "
                   "q_bits=4, q_group_size=64, quiet=True, calibration=sys.argv[3], calibration_tokens=int(sys.argv[4]))")
# --reference-search: the same calibrated run with the op-by-op reference search (the speed before blocking).
REFERENCE_SEARCH = ("from mlxseek.convert import stream, weighted; "
                    "stream.quantize_weighted = weighted.quantize_weighted_reference; ")
MLX_LM = ("import sys; from mlx_lm import convert; "
          "convert(sys.argv[1], sys.argv[2], quantize=True, q_bits=4, q_group_size=64)")


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(code: str, src: Path, dst: Path, limit: int, extra: tuple = ()) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst.with_name(dst.name + ".partial"), ignore_errors=True)
    log = dst.with_name(dst.name + ".stderr")
    t0 = time.perf_counter()
    with open(log, "wb") as err_file:
        child = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst), *map(str, extra)],
                                 stdout=subprocess.DEVNULL, stderr=err_file)
        killed = False
        while True:  # wait4, not Popen.poll: the child's own rusage is needed
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if _rss_bytes(child.pid) > limit:
                child.send_signal(signal.SIGKILL)
                killed = True
            time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    err = log.read_text(errors="replace")
    # CPU seconds (user + system) are steadier than wall time on a machine shared with other jobs.
    out = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),
           "exit": child.returncode, "killed_over_limit": killed}
    if child.returncode != 0:
        out["stderr_tail"] = err[-500:]
    elif dst.exists():
        out["output_gb"] = round(sum(p.stat().st_size for p in dst.glob("*.safetensors")) / 1e9, 3)
    return out


def vocab_safe_text(text: Path, src: Path, work: Path) -> Path:
    """The calibration text re-spelled with only the token ids the (shrunken) synthetic vocabulary holds."""
    from mlx_lm.tokenizer_utils import load

    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    tok = load(src)
    body = text.read_text()
    for _ in range(20):  # dropping tokens can merge their neighbours into new large ids: repeat until none
        ids = tok.encode(body, add_special_tokens=False)
        if max(ids) < vocab:
            break
        body = tok.decode([i for i in ids if i < vocab])
    out = work / f"calibration-{src.name}.txt"
    out.write_text(body)
    return out


def largest_layer_elements(src: Path, index: dict) -> int:
    """Weights (elements, block scales left out) of the largest decoder layer, from the shards' headers."""
    per_layer: dict[str, int] = {}
    for shard in set(index["weight_map"].values()):
        with open(src / shard, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, t in header.items():
            if key.startswith("model.layers.") and not key.endswith("_scale_inv"):
                layer = key.split(".")[2]
                per_layer[layer] = per_layer.get(layer, 0) + math.prod(t["shape"])
    return max(per_layer.values())


def describe(src: Path) -> dict:
    cfg = json.loads((src / "config.json").read_text())
    index = json.loads((src / "model.safetensors.index.json").read_text())
    source = sum((src / f).stat().st_size for f in set(index["weight_map"].values()))
    expert = cfg["moe_intermediate_size"] * cfg["hidden_size"]  # one routed expert matrix, elements
    layer = largest_layer_elements(src, index)
    # A calibrated run holds one decoder layer in the compute dtype (float32 on MLX's CPU backend) on top.
    return {"input": str(src), "input_gb": round(source / 1e9, 3), "layers": cfg["num_hidden_layers"],
            "largest_expert_fp32_mb": round(expert * 4 / 1e6, 1), "largest_layer_fp32_gb": round(layer * 4 / 1e9, 3),
            "bound_gb": round((1.5e9 + 3 * expert * 4) / 1e9, 3),
            "calibrated_bound_gb": round((1.5e9 + 3 * expert * 4 + layer * 4) / 1e9, 3), "_source_bytes": source}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, action="append", required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert-bench"))
    ap.add_argument("--mlx-lm", action="store_true", help="also run mlx_lm.convert on the same input")
    ap.add_argument("--rss-limit-gb", type=float, default=16.0)
    ap.add_argument("--calibration", type=Path, default=None,
                    help="also run a calibrated conversion on this text (token ids outside the vocabulary dropped)")
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--reference-search", action="store_true",
                    help="with --calibration: also a calibrated run with the slow reference weighted search")
    ap.add_argument("--skip-plain", action="store_true", help="with --calibration: only the calibrated run")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tools = ([] if args.skip_plain else [("mlxseek", OURS)]) + ([("mlx_lm", MLX_LM)] if args.mlx_lm else [])
    tools += [("mlxseek-calibrated", OURS_CALIBRATED)] if args.calibration else []
    ref = REFERENCE_SEARCH + OURS_CALIBRATED
    tools += [("mlxseek-calibrated-reference-search", ref)] if args.calibration and args.reference_search else []
    for src in args.input:
        extra = (vocab_safe_text(args.calibration, src, args.work), args.calibration_tokens) if args.calibration else ()
        info = describe(src)
        source_bytes = info.pop("_source_bytes")
        for tool, code in tools:
            dst = args.work / f"{src.name}-{tool}"
            r = run(code, src, dst, int(args.rss_limit_gb * 1e9), extra if "calibrated" in tool else ())
            if "calibrated" in tool:
                r["calibration_tokens"] = args.calibration_tokens
            r["source_gb_per_s"] = round(source_bytes / 1e9 / r["wall_s"], 4) if r["exit"] == 0 else None
            if tool.startswith("mlxseek") and r["exit"] == 0:
                bound = info["calibrated_bound_gb" if "calibrated" in tool else "bound_gb"]
                r["within_bound"] = r["peak_rss_gb"] < bound
            print(json.dumps({"tool": tool, **info, **r}), flush=True)
            shutil.rmtree(dst, ignore_errors=True)


if __name__ == "__main__":
    main()

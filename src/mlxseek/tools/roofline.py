"""Memory bandwidth for the decode roofline: a published figure on Apple chips, a probe elsewhere.

Decode at batch 1 streams every active weight once per token, so tok/s can never exceed
bandwidth / active bytes per token. On a Mac the chip is named (`sysctl machdep.cpu.brand_string`)
and its published unified-memory bandwidth is used. Anywhere else (or on an unlisted chip) the probe
below runs once: a float32 matrix-vector product over a 512 MiB matrix in NumPy's multi-threaded BLAS,
which reads the matrix exactly once; the best of 5 runs gives bytes / seconds. It measures what a
streaming read achieves on this machine, independent of MLX's kernels.
"""

from __future__ import annotations

import platform
import subprocess
import time
from typing import Optional

import numpy as np

from .machines import MACHINES

# Published memory bandwidth (GB/s) per Apple chip: the same table `mlxseek estimate` uses.
CHIP_BANDWIDTH_GBPS = {m.chip: m.bandwidth_gbs for m in MACHINES.values()}
PROBE_BYTES = 512 << 20
PROBE_RUNS = 5


def chip_name() -> str:
    """'Apple M3 Ultra' on a Mac; the CPU model elsewhere (best effort)."""
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import mlx.core as mx

        return str(mx.device_info().get("device_name") or platform.processor() or platform.machine())
    except (AttributeError, RuntimeError):
        return platform.processor() or platform.machine()


def published_bandwidth(chip: str) -> Optional[float]:
    for name in sorted(CHIP_BANDWIDTH_GBPS, key=len, reverse=True):
        if f"{name} " in f"{chip} " or chip.endswith(name):
            return CHIP_BANDWIDTH_GBPS[name]
    return None


def measure_bandwidth(nbytes: int = PROBE_BYTES, runs: int = PROBE_RUNS) -> float:
    """Best-of-`runs` streaming read bandwidth in GB/s (see the module docstring)."""
    cols = 4096
    a = np.ones((nbytes // 4 // cols, cols), dtype=np.float32)  # touched once here, so pages are resident
    x = np.ones(cols, dtype=np.float32)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a @ x
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def memory_bandwidth(override: Optional[float] = None) -> tuple[float, str]:
    """(GB/s, where the number came from)."""
    if override is not None:
        return float(override), "--bandwidth"
    chip = chip_name()
    known = published_bandwidth(chip)
    if known is not None:
        return known, f"published figure for {chip}"
    return measure_bandwidth(), f"probe: NumPy float32 gemv over {PROBE_BYTES >> 20} MiB, best of {PROBE_RUNS}"

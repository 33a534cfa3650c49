"""Which BLAS runs MLX's float32 matmuls on Linux, chosen before `mlx.core` is first imported.

Why: MLX's Linux CPU wheel links the reference (netlib) BLAS it vendors. Its `cblas_sgemm` is 20-30x
slower than OpenBLAS on attention-shaped products (16x288 @ 288x8192: ~19 ms vs ~0.6 ms on this
project's 2-core box), which makes long-context decode and the float parts of every step crawl.
Loading a system OpenBLAS with RTLD_GLOBAL before libmlx.so is loaded makes the dynamic linker bind
libmlx's `cblas_*` calls to it (ELF symbol interposition, the same thing LD_PRELOAD does). Quantized
matmuls are MLX's own kernels and are unaffected. macOS builds use Accelerate (CPU) or Metal: no-op.

MLXSEEK_BLAS selects: unset or "auto" (a system OpenBLAS when one is installed, e.g. Debian's
`libopenblas0-pthread`, else the OpenBLAS of the scipy-openblas32 wheel, a Linux dependency of mlxseek,
through a small shim: see pip_openblas.py), "system" or "pip" (only that one), "bundled" (leave MLX's
own), or a path to a CBLAS shared library (an error if it cannot be loaded). `status()` says what happened; `mlxseek info` and the benchmarks report it.
The choice is made at `import mlxseek`, but an explicit path that fails is raised at first use (`check()`,
`status()`, `load`), where the CLI turns it into one line, rather than as a traceback out of the import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from ..errors import BlasError
from . import pip_openblas

ENV = "MLXSEEK_BLAS"
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0", "/usr/lib/libopenblas.so.0",
)
_state: dict = {"blas": "not chosen"}


def _find_openblas() -> str | None:
    found = next((p for p in _CANDIDATES if Path(p).exists()), None)
    return found or ctypes.util.find_library("openblas")


def choose(env: str | None = None, *, defer: bool = False) -> dict:
    """Pick the BLAS once per process (idempotent). Raises BlasError for an explicit path that fails;
    with `defer`, records it instead, for `check()` to raise at first use."""
    if _state["blas"] != "not chosen":
        if not defer:
            check()
        return dict(_state)
    try:
        return _choose(env)
    except BlasError as e:
        _state.update(blas="mlx-bundled", reason=str(e), error=e)
        if not defer:
            raise
        return dict(_state)


def check() -> None:
    """Raise the BlasError that choosing the BLAS met, if any (MLXSEEK_BLAS names a library that failed)."""
    if "error" in _state:
        raise _state["error"]


def _choose(env: str | None) -> dict:
    choice = (os.environ.get(ENV, "auto") if env is None else env).strip() or "auto"
    if not sys.platform.startswith("linux") or choice == "bundled":
        _state.update(blas="mlx-bundled", reason="macOS (Accelerate/Metal)" if sys.platform == "darwin"
                      else f"{ENV}={choice}")
        return dict(_state)
    explicit = choice not in ("auto", "system", "pip")
    if "mlx.core" in sys.modules:
        # libmlx.so has already bound its BLAS symbols: loading another library now changes nothing.
        if explicit or choice == "pip":
            raise BlasError(f"{ENV}={choice}: mlx.core was imported before mlxseek; import mlxseek first")
        _state.update(blas="mlx-bundled", reason="mlx.core was imported before mlxseek")
        return dict(_state)
    path, source = (choice, None) if explicit else (None if choice == "pip" else _find_openblas(), "system")
    if path is None and choice != "system":
        path, source = pip_openblas.shim()
        if path is None and choice == "pip":
            raise BlasError(f"{ENV}=pip: {source}")
    if path is None:
        why = "no system OpenBLAS found (apt-get install libopenblas0-pthread)" if choice == "system" else source
        _state.update(blas="mlx-bundled", reason=why)
        return dict(_state)
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        if explicit:
            raise BlasError(f"{ENV}={choice}: cannot load it ({e}); point it at a CBLAS shared library, or "
                            "unset it (auto) or set it to 'bundled'") from None
        _state.update(blas="mlx-bundled", reason=f"{path}: {e}")
        return dict(_state)
    if source not in (None, "system"):  # the pip wheel, through its shim
        _state.update(blas="openblas", source=source, path=path)
    else:
        _state.update(blas="openblas" if "openblas" in Path(path).name else "custom", path=path)
    return dict(_state)


def status() -> dict:
    """{"blas": "openblas" | "custom" | "mlx-bundled" | "not chosen", "path" or "reason": ..., and "source":
    the wheel when the OpenBLAS is scipy-openblas32's}.
    Raises the BlasError of an explicit MLXSEEK_BLAS that failed."""
    check()
    return dict(_state)

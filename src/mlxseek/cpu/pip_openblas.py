"""The OpenBLAS of the `scipy-openblas32` / `scipy-openblas64` wheels, made bindable by libmlx.so.

Why a shim: those wheels build OpenBLAS with every symbol prefixed (`scipy_cblas_sgemm`; the 64-bit-int
build also suffixed, `scipy_cblas_sgemm64_`) so they never clash with another BLAS in the process. libmlx.so
asks for the plain names, and only three of them run its float matmuls: `cblas_sgemm`, `cblas_dgemm`,
`cblas_cgemm` (`nm -D --undefined-only libmlx.so`; its LAPACK calls keep MLX's bundled LAPACK). A 3-function
C file forwarding those names to the wheel's is compiled once with the system C compiler into the user's
cache folder and loaded RTLD_GLOBAL before `mlx.core`, so the dynamic linker binds libmlx to it (blas.py
says how). Without a compiler, or without either wheel, this returns why, and MLX keeps its own BLAS.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

WHEELS = ("scipy_openblas32", "scipy_openblas64")  # 32-bit ints first: libmlx passes C ints

# Forwarders with the CBLAS prototypes libmlx calls (C ints), widened to the wheel's integer type.
_SHIM = r"""
typedef {int} I;
#define F(n) scipy_##n{suffix}
void F(cblas_sgemm)(int, int, int, I, I, I, float, const float*, I, const float*, I, float, float*, I);
void F(cblas_dgemm)(int, int, int, I, I, I, double, const double*, I, const double*, I, double, double*, I);
void F(cblas_cgemm)(int, int, int, I, I, I, const void*, const void*, I, const void*, I, const void*, void*, I);
void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float al, const float* a, int lda, const float* b,
                 int ldb, float be, float* c, int ldc) {{ F(cblas_sgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }}
void cblas_dgemm(int o, int ta, int tb, int m, int n, int k, double al, const double* a, int lda, const double* b,
                 int ldb, double be, double* c, int ldc) {{ F(cblas_dgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }}
void cblas_cgemm(int o, int ta, int tb, int m, int n, int k, const void* al, const void* a, int lda, const void* b,
                 int ldb, const void* be, void* c, int ldc) {{ F(cblas_cgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }}
"""


def _wheel():
    for name in WHEELS:
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    return None, None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "mlxseek" / "blas"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # a read-only home: the shim is tiny, build it per process
        return Path(tempfile.mkdtemp(prefix="mlxseek-blas-"))


def shim() -> tuple[str | None, str]:
    """(path of a shim library binding libmlx's CBLAS names to the wheel's OpenBLAS, what it is), or
    (None, why not)."""
    name, mod = _wheel()
    if mod is None:
        return None, "no system OpenBLAS and no scipy-openblas32 wheel (pip install scipy-openblas32)"
    lib_dir, lib = mod.get_lib_dir(), mod.get_library()  # e.g. .../scipy_openblas32/lib, "scipy_openblas"
    source = _SHIM.format(int="long long" if name.endswith("64") else "int",
                          suffix="64_" if name.endswith("64") else "")
    key = hashlib.sha256(f"{lib_dir}/{lib}\n{source}".encode()).hexdigest()[:16]
    out = _cache_dir() / f"cblas-shim-{key}.so"
    what = f"{name} {getattr(mod, '__version__', '')}".strip()
    if out.exists():
        return str(out), what
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, f"{name} is installed but no C compiler (cc) was found to build its 3-function CBLAS shim"
    src = out.with_suffix(".c")
    src.write_text(source)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src), f"-L{lib_dir}", f"-l{lib}",
           f"-Wl,-rpath,{lib_dir}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"building the {name} CBLAS shim failed ({e})"
    if r.returncode != 0:
        return None, f"building the {name} CBLAS shim failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    os.replace(tmp, out)  # atomic: a concurrent process sees the whole library or none
    return str(out), what

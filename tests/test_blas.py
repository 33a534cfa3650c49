"""MLXSEEK_BLAS: which BLAS MLX's float matmuls use on Linux (mlxseek/cpu/blas.py). Each case runs in a fresh
interpreter, since the choice must happen before mlx.core is first imported."""

import json
import os
import subprocess
import sys

import pytest

from mlxseek.cpu.blas import _find_openblas

PROBE = """
import json, sys
{pre}
import mlxseek, mlx.core as mx, numpy as np
a = np.random.default_rng(0).standard_normal((16, 288)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((288, 8192)).astype(np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
print(json.dumps({{"status": mlxseek.cpu.blas.status(), "err": err}}))
"""


def probe(env_value, pre="", extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "MLXSEEK_BLAS"}
    env.update(extra_env or {})
    if env_value is not None:
        env["MLXSEEK_BLAS"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_bundled_keeps_mlx_own_blas():
    r = probe("bundled")
    out = json.loads(r.stdout)
    assert out["status"]["blas"] == "mlx-bundled" and out["err"] < 1e-3


def test_explicit_path_that_cannot_load_is_a_named_error():
    r = probe("/nonexistent/libcblas.so")
    assert r.returncode != 0
    assert "BlasError" in r.stderr and "MLXSEEK_BLAS=/nonexistent/libcblas.so" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or _find_openblas() is None,
                    reason="no system OpenBLAS (Debian: apt-get install libopenblas0-pthread)")
def test_auto_binds_system_openblas_and_results_agree():
    out = json.loads(probe(None).stdout)
    assert out["status"]["blas"] == "openblas" and out["err"] < 1e-3


@pytest.mark.skipif(not sys.platform.startswith("linux") or _find_openblas() is None,
                    reason="no system OpenBLAS (Debian: apt-get install libopenblas0-pthread)")
def test_too_late_after_mlx_import():
    """mlx.core already loaded: auto says why it kept the bundled BLAS; an explicit path is an error."""
    auto = json.loads(probe(None, pre="import mlx.core").stdout)
    assert auto["status"] == {"blas": "mlx-bundled", "reason": "mlx.core was imported before mlxseek"}
    r = probe(_find_openblas(), pre="import mlx.core")
    assert r.returncode != 0 and "import mlxseek first" in r.stderr


NO_WHEEL = "import sys; sys.modules['scipy_openblas32'] = sys.modules['scipy_openblas64'] = None"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pip OpenBLAS is a Linux dependency")
def test_pip_openblas_is_bound_through_its_shim_and_results_agree(tmp_path):
    """MLXSEEK_BLAS=pip: scipy-openblas32's OpenBLAS (prefixed symbols) behind the CBLAS shim built once into
    the cache folder; numpy runs the same OpenBLAS, so the products agree to the last bit."""
    pytest.importorskip("scipy_openblas32")
    env_cache = {"XDG_CACHE_HOME": str(tmp_path)}
    out = json.loads(probe("pip", extra_env=env_cache).stdout)
    assert out["status"]["blas"] == "openblas" and out["status"]["source"].startswith("scipy_openblas32")
    assert out["status"]["path"].startswith(str(tmp_path)) and out["err"] < 1e-3
    again = json.loads(probe("pip", extra_env=env_cache).stdout)  # the cached shim is reused
    assert again["status"]["path"] == out["status"]["path"]


def test_without_the_pip_openblas_auto_says_why_and_pip_is_a_named_error():
    r = probe("pip", pre=NO_WHEEL)
    assert r.returncode != 0 and "MLXSEEK_BLAS=pip" in r.stderr and "pip install scipy-openblas32" in r.stderr
    if _find_openblas() is None:  # auto falls back to MLX's own BLAS and names the missing wheel
        out = json.loads(probe(None, pre=NO_WHEEL).stdout)
        assert out["status"]["blas"] == "mlx-bundled" and "scipy-openblas32" in out["status"]["reason"]

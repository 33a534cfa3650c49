"""The backend policy: one frozen record of every per-device choice, read by every place that decides.

MLX runs on its CPU backend or on a GPU (Metal on Apple Silicon, CUDA on Linux with the `mlx[cuda13]`
wheels). The question is "GPU or not" (`mx.default_device() == mx.gpu`), never "Metal or not": on the
CUDA backend `mx.metal.is_available()` is False although the device is a GPU.

  choice                cpu                     gpu (Metal, CUDA)          why
  compute_dtype         float32                 bfloat16                   CPU quantized matmul is ~8x faster
                                                                           in float32; GPU kernels want bf16
  weight_layout         kmajor (re-lay at load) checkpoint (transposed)    each backend's fast quantized kernel
  quantized_cache_read  dequantize              packed                     CPU packed transpose=True qmm is ~7x
                                                                           slower than dequantize + BLAS at 8K
  prefill_step / bytes  512 tok / 64 MiB scores 2048 tok / 512 MiB         bounded activation memory per chunk
  draft_auto            measure                 acceptance                 CPU: a (k+1)-token verify costs
                                                                           ~(k+1)x, so time it first; GPU: it
                                                                           costs ~1x, judge by acceptance only

Fallbacks (tested in tests/test_backend.py): an unknown device gets the cpu policy; half precision on
MLX's CPU backend (the policy's dtype, not an explicit `dtype=`) keeps float (unquantized) routed experts
in float32, since its gather_mm is float32-only; the K-major layout leaves modules it cannot hold
(mxfp4, indivisible shapes) as stored; a packed cache read applies to a quantized latent cache only;
prefill chunks shrink to fit the scores budget (down to 32 tokens); "acceptance" drafting stops when
drafts stop paying.

Every choice can be overridden: `mlxseek.load(path, backend="gpu")`, or
`backend=backend_policy(compute_dtype="float32")`; `dtype=` and `cpu_layout=` still win over the policy.
The policy a model runs with is `model.backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import mlx.core as mx

from .errors import ConfigError

KINDS = ("cpu", "gpu")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
WEIGHT_LAYOUTS = ("kmajor", "checkpoint")
CACHE_READS = ("dequantize", "packed")
DRAFT_AUTO_MODES = ("measure", "acceptance")


@dataclass(frozen=True)
class BackendPolicy:
    """The per-device choices (see the module docstring for the defaults and the reasons)."""

    kind: str  # "cpu" | "gpu"
    compute_dtype: str  # activations and float weights: "float32" | "bfloat16" | "float16"
    weight_layout: str  # quantized weights: "kmajor" (re-laid at load, CPU) | "checkpoint" (as stored)
    quantized_cache_read: str  # absorbed attention over a quantized latent cache: "dequantize" | "packed"
    prefill_step: int  # prompt tokens of the first prefill chunk
    prefill_scores_bytes: int  # largest float32 attention-score matrix one prefill chunk may build
    draft_auto: str  # draft="auto": "measure" (time verify vs plain first) | "acceptance" (draft, judge)
    gpu_backend: Optional[str] = None  # "metal" | "cuda" | None (cpu, or a GPU MLX does not name)

    def __post_init__(self) -> None:
        _check("kind", self.kind, KINDS)
        _check("compute_dtype", self.compute_dtype, tuple(DTYPES))
        _check("weight_layout", self.weight_layout, WEIGHT_LAYOUTS)
        _check("quantized_cache_read", self.quantized_cache_read, CACHE_READS)
        _check("draft_auto", self.draft_auto, DRAFT_AUTO_MODES)
        for name in ("prefill_step", "prefill_scores_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"backend policy {name}={v!r}: must be a positive integer")

    @property
    def dtype(self) -> mx.Dtype:
        return DTYPES[self.compute_dtype]

    @property
    def packed_cache_read(self) -> bool:
        return self.quantized_cache_read == "packed"

    @property
    def float32_float_experts(self) -> bool:
        """Half precision on MLX's CPU backend: float routed experts stay float32 (its gather_mm has no
        half kernel); on a GPU they run in the compute dtype."""
        return self.compute_dtype != "float32" and not gpu_available()

    def replace(self, **changes: Any) -> "BackendPolicy":
        _check_names(changes)
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"backend policy {name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def _check_names(changes: dict) -> None:
    known = {f.name for f in fields(BackendPolicy)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"backend policy: unknown choice(s) {', '.join(unknown)}; "
                          f"choose among {', '.join(sorted(known - {'kind'}))}")


def gpu_available() -> bool:
    """True when MLX runs on a GPU (Metal or CUDA): the default device is the GPU."""
    try:
        return mx.default_device() == mx.gpu and mx.is_available(mx.gpu)
    except (AttributeError, RuntimeError, ValueError):  # an MLX without is_available: trust the device
        return mx.default_device() == mx.gpu


def gpu_backend_name() -> Optional[str]:
    """'metal', 'cuda', or None (CPU, or a GPU this MLX does not name)."""
    if not gpu_available():
        return None
    for name in ("metal", "cuda"):
        module = getattr(mx, name, None)
        if module is not None and getattr(module, "is_available", lambda: False)():
            return name
    return None


def device_kind() -> str:
    return "gpu" if gpu_available() else "cpu"


def policy_for(kind: str) -> BackendPolicy:
    """The default choices for a device kind ("cpu" or "gpu")."""
    _check("kind", kind, KINDS)
    if kind == "gpu":
        return BackendPolicy(kind="gpu", compute_dtype="bfloat16", weight_layout="checkpoint",
                             quantized_cache_read="packed", prefill_step=2048, prefill_scores_bytes=512 << 20,
                             draft_auto="acceptance", gpu_backend=gpu_backend_name())
    return BackendPolicy(kind="cpu", compute_dtype="float32", weight_layout="kmajor",
                         quantized_cache_read="dequantize", prefill_step=512, prefill_scores_bytes=64 << 20,
                         draft_auto="measure")


def backend_policy(kind: Optional[str] = None, **overrides: Any) -> BackendPolicy:
    """The policy for `kind` (None: this process's device), with any choice overridden by name."""
    _check_names(overrides)
    base = policy_for(kind if kind is not None else device_kind())
    return base.replace(**overrides) if overrides else base


def resolve_policy(backend: Any = None) -> BackendPolicy:
    """`load(backend=...)`: None (this device), "cpu" / "gpu" (that kind's defaults), or a BackendPolicy."""
    if backend is None or isinstance(backend, str):
        return backend_policy(backend)
    if isinstance(backend, BackendPolicy):
        return backend
    raise ConfigError(f"backend={backend!r}: pass None (this device), 'cpu', 'gpu' or a "
                      "mlxseek.backend.BackendPolicy (see mlxseek.backend.backend_policy)")


def policy_of(model: Any) -> BackendPolicy:
    """The policy a model was loaded with (`model.backend`), or this device's for a model built directly."""
    policy = getattr(model, "backend", None)
    return policy if isinstance(policy, BackendPolicy) else backend_policy()

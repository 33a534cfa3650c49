"""The quantization DeepSeek-V4.1 applies inside its forward, even when the weights are unquantized: the
model was trained with it (QAT), so the reference logits depend on it.

  window KV      FP8 e4m3, one ue8m0 (power-of-two) scale per 32 channels, RoPE tail included
  compressed KV  FP4 e2m1, one e4m3 scale per 16 channels
  indexer q, k   FP4 e2m1, one ue8m0 scale per 32 channels

Provenance: transformers' V4.1 port (`_fake_quant_fp8_block`, `_fake_quant_fp4_block`) and mlx-lm 0.32.2's
`deepseek_v41.py` agree on these (whole-model goldens: tests/test_v41_goldens.py). A vector whose width the
block does not divide passes through unquantized, as in both references (tiny test configs).
Matmul inputs: DeepSeek's reference also rounds the *input* of each linear whose weight is stored FP8/FP4 to
FP8 (`linear()` -> `act_quant` before `fp8_gemm`/`fp4_gemm`, ue8m0 scales; vLLM's V4.1 path does the same,
MXFP8); the port and mlx-lm do not. mlxseek follows DeepSeek: a built V4.1 does it (`set_fake_quant(True)`)
with `fake_fp8` per weight block column (32): wq_a, wq_b (attention and indexer), wkv, wo_b, shared and routed
experts, the route weight applied before w2's input is rounded, as in DeepSeek's Expert.forward. It moves the
tiny fixture's logits by ~0.09 (README, V4.1); `set_fake_quant(True, activations=False)` is the port's forward.
Each function takes x (..., C) and returns the quantized-then-dequantized values in x's dtype.
"""

from __future__ import annotations

import mlx.core as mx

FP8_MAX, FP4_MAX = 448.0, 6.0
_E2M1 = mx.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=mx.float32)


def pow2_ceil(t: mx.array) -> mx.array:
    """2**ceil(log2(t)) for float32 t > 0 from the IEEE bits (exponent, plus one for any mantissa): the ue8m0
    scale rounding of DeepSeek's kernels; a float log2 can land one ulp off at exact powers of two."""
    bits = t.astype(mx.float32).view(mx.int32)
    k = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).astype(mx.int32)
    return mx.power(mx.array(2.0, dtype=mx.float32), k.astype(mx.float32))


def _blocks(x: mx.array, block: int) -> mx.array:
    return x.astype(mx.float32).reshape(*x.shape[:-1], x.shape[-1] // block, block)


def fake_fp8(x: mx.array, block: int = 32) -> mx.array:
    if x.shape[-1] % block:
        return x
    b = _blocks(x, block)
    scale = pow2_ceil(mx.maximum(mx.abs(b).max(axis=-1, keepdims=True), 1e-4) * (1.0 / FP8_MAX))
    q = mx.from_fp8(mx.to_fp8(mx.clip(b / scale, -FP8_MAX, FP8_MAX)), mx.float32)
    return (q * scale).reshape(x.shape).astype(x.dtype)


def round_e2m1(q: mx.array) -> mx.array:
    """Round clipped float32 values to the e2m1 grid, ties to the even code: a tie at 0.25, 1.25, 2.5, 5.0
    rounds down, at 0.75, 1.75, 3.5 up."""
    m = mx.abs(q)
    idx = sum(((m > t) for t in (0.25, 1.25, 2.5, 5.0)), mx.zeros(m.shape, mx.int32))
    idx = idx + sum(((m >= t) for t in (0.75, 1.75, 3.5)), mx.zeros(m.shape, mx.int32))
    return mx.where(q < 0, -_E2M1[idx], _E2M1[idx])


def fake_fp4(x: mx.array, block: int, *, e4m3_scale: bool = False) -> mx.array:
    if x.shape[-1] % block:
        return x
    b = _blocks(x, block)
    amax = mx.abs(b).max(axis=-1, keepdims=True)
    if e4m3_scale:
        scale = mx.from_fp8(mx.to_fp8(mx.maximum(amax, FP4_MAX * 2.0**-9) / FP4_MAX), mx.float32)
    else:
        scale = pow2_ceil(mx.maximum(amax, FP4_MAX * 2.0**-126) * (1.0 / FP4_MAX))
    q = round_e2m1(mx.clip(b / scale, -FP4_MAX, FP4_MAX))
    return (q * scale).reshape(x.shape).astype(x.dtype)

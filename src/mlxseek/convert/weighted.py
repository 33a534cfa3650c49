"""Importance-weighted affine quantization: per group, the scale and bias that minimise
sum_j imp_j (w_j - (s q_j + b))^2 instead of MLX's min/max choice; same bits, bytes and layout.

Shapes: R rows (output dim), G groups per row, g weights per group (input dim = G * g).
imp (G * g,) is the mean squared input of each column over the calibration tokens (llama.cpp's imatrix):
an error in a column the activations never excite costs nothing; one in a loud column costs a lot.

Why a clipping search and not AWQ's input-channel scaling: in a DeepSeekMoE layer the router, the
shared expert and every routed expert read the same normalised input, so an AWQ scale folded into the
RMSNorm weight would have to be one vector for all of them (and would move the router's float32
decisions); folding it per expert is impossible. A per-group search needs nothing outside the matrix,
so the output stays bit-compatible with `to_quantized` and mlx-lm reads it unchanged.

The search (per group, vectorised over all groups): MLX's own choice, then for each clipping ratio in
CLIP_RATIOS the range [ratio * min, ratio * max] and its weighted least-squares refit (the optimal
s, b for those codes), each rounded to the stored dtype before codes are taken; the lowest weighted
error wins. MLX's choice is a candidate, so no group is ever worse than uniform rounding.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

# Shrinking the range clips a few outliers to buy finer steps for the rest (llama.cpp's make_qx_quants
# and AWQ's clip search both scan ~0.7-1.0).
REFITS = 3  # least-squares refits per clipping ratio (codes, then s and b, then codes again)
CLIP_RATIOS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.7, 0.65, 0.6)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes (..., in) in [0, 2^bits) -> MLX's packed uint32 words (..., in * bits / 32).

    MLX packs a row as one little-endian bit stream, code k at bits [k * bits, (k + 1) * bits): for 2/4/8
    bits that is 32/bits codes per word; 3, 5 and 6 bits cross word boundaries (8 codes in 3 bytes ...)."""
    k = 8 // math.gcd(8, bits)  # codes per whole number of bytes
    nbytes = k * bits // 8
    c = codes.astype(np.uint64).reshape(*codes.shape[:-1], -1, k)
    v = (c << (np.arange(k, dtype=np.uint64) * bits)).sum(axis=-1)
    by = ((v[..., None] >> (np.arange(nbytes, dtype=np.uint64) * 8)) & 255).astype(np.uint8)
    return np.ascontiguousarray(by.reshape(*codes.shape[:-1], -1)).view("<u4")


def _codes(w, s, b, n):
    return mx.clip(mx.round((w - b) / s), 0, n)


def _err(w, s, b, q, imp):
    d = s * q + b - w
    return (imp * d * d).sum(axis=-1)  # (R, G)


def _refit(w, q, imp):
    """Weighted least squares for s, b given codes q: the normal equations of min sum imp (s q + b - w)^2."""
    si, sq, sqq = imp.sum(-1), (imp * q).sum(-1), (imp * q * q).sum(-1)
    sw, sqw = (imp * w).sum(-1), (imp * q * w).sum(-1)
    det = sqq * si - sq * sq
    ok = det > 1e-12 * mx.maximum(sqq * si, 1e-30)
    safe = mx.where(ok, det, 1.0)
    s = mx.where(ok, (sqw * si - sq * sw) / safe, 0.0)
    b = mx.where(ok, (sqq * sw - sq * sqw) / safe, 0.0)
    return s[..., None], b[..., None], ok[..., None]


def quantize_weighted(w: mx.array, imp: mx.array, *, group_size: int, bits: int, dtype: mx.Dtype):
    """(packed uint32 weight, scales, biases) for 2-D w (R, in) with column importance imp (in,),
    scales and biases in `dtype` (the conversion's float dtype, as mx.quantize of a `dtype` weight)."""
    R, cols = w.shape
    G, n = cols // group_size, float(2**bits - 1)
    wd = w.astype(dtype)
    packed, s0, b0 = mx.quantize(wd, group_size=group_size, bits=bits)
    wg = wd.astype(mx.float32).reshape(R, G, group_size)
    ig = imp.astype(mx.float32).reshape(1, G, group_size)
    ig = ig / mx.maximum(ig.mean(axis=-1, keepdims=True), 1e-30) + 1e-3  # no column counts for nothing
    q0 = mx.dequantize(packed, mx.ones_like(s0), mx.zeros_like(b0), group_size=group_size, bits=bits)
    best_s = s0.astype(mx.float32)[..., None]
    best_b = b0.astype(mx.float32)[..., None]
    best_q = q0.reshape(R, G, group_size)
    best = _err(wg, best_s, best_b, best_q, ig)
    lo, hi = wg.min(axis=-1, keepdims=True), wg.max(axis=-1, keepdims=True)
    rnd = lambda x: x.astype(dtype).astype(mx.float32)  # what the stored scale/bias will be
    for ratio in CLIP_RATIOS:
        s = rnd(mx.maximum((hi - lo) * ratio / n, 1e-8))
        b = rnd(lo * ratio)
        q = _codes(wg, s, b, n)
        candidates = [(s, b, q)]
        for _ in range(REFITS):
            fs, fb, ok = _refit(wg, q, ig)
            s, b = rnd(mx.where(ok & (mx.abs(fs) > 1e-8), fs, s)), rnd(mx.where(ok, fb, b))
            q = _codes(wg, s, b, n)
            candidates.append((s, b, q))
        for cs, cb, cq in candidates:
            e = _err(wg, cs, cb, cq, ig)
            better = e < best
            best = mx.where(better, e, best)
            m = better[..., None]
            best_s, best_b, best_q = mx.where(m, cs, best_s), mx.where(m, cb, best_b), mx.where(m, cq, best_q)
        mx.eval(best, best_s, best_b, best_q)  # bound the lazy graph to one ratio
    codes = np.array(best_q.reshape(R, cols).astype(mx.uint32))
    return (mx.array(pack(codes, bits)), best_s[..., 0].astype(dtype), best_b[..., 0].astype(dtype))

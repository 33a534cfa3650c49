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
# and AWQ's clip search scan ~0.7-1.0). On the trained fixture at 3 bits, 13 ratios x 3 refits reached
# KL 0.0158 vs bf16 and these 3 x 2 reach 0.0160 at a quarter of the cost.
REFITS = 2  # least-squares refits per clipping ratio
CLIP_RATIOS = (1.0, 0.9, 0.8)


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


def _score(w, imp, s, b, n):
    """One candidate (s, b) per group: its codes' weighted error, and the sums its least-squares refit needs."""
    q = mx.clip(mx.round((w - b) / s), 0, n)
    d = s * q + b - w
    iq = imp * q
    return (imp * d * d).sum(-1), iq.sum(-1), (iq * q).sum(-1), (iq * w).sum(-1)


def _refit(si, sw, sq, sqq, sqw, s, b):
    """Weighted least squares for s, b given the codes: min sum imp (s q + b - w)^2's normal equations."""
    det = sqq * si - sq * sq
    ok = det > 1e-12 * mx.maximum(sqq * si, 1e-30)
    safe = mx.where(ok, det, 1.0)
    fs = (sqw * si - sq * sw) / safe
    fb = (sqq * sw - sq * sqw) / safe
    ok = ok & (mx.abs(fs) > 1e-8)
    return mx.where(ok, fs, s), mx.where(ok, fb, b)


def pack_mx(codes: mx.array, bits: int) -> mx.array:
    """`pack` in MLX (same words): codes (..., in) uint32 -> (..., in * bits / 32) uint32, without a NumPy copy.

    32 codes fill exactly `bits` words; code i starts at bit i * bits, so it lands in word i * bits // 32
    shifted by the remainder, and its top bits spill into the next word when it crosses the boundary."""
    c = codes.astype(mx.uint32).reshape(*codes.shape[:-1], -1, 32)
    start = [i * bits for i in range(32)]
    lo = c << mx.array([p % 32 for p in start], dtype=mx.uint32)  # shifted-out top bits drop, as wanted
    spill = [i for i, p in enumerate(start) if p % 32 + bits > 32]
    words = []
    for j in range(bits):  # the bits of different codes are disjoint, so a sum is their OR
        own = [i for i, p in enumerate(start) if p // 32 == j]
        word = lo[..., own[0]:own[-1] + 1].sum(-1)
        for i in spill:
            if start[i] // 32 + 1 == j:
                word = word + (c[..., i] >> (32 - start[i] % 32))
        words.append(word)
    return mx.stack(words, axis=-1).reshape(*codes.shape[:-1], -1)


# Rows per block: ~1 MB of float32 per (rows, in) temporary keeps the ~40 elementwise passes of the search
# in cache instead of streaming 16 MB arrays through memory (2048 x 7168 at 3-4 bits: 13-17M weights/s vs
# the reference's 5-6M, benchmarks/weighted_speed.py); groups are independent, so blocking changes no result.
# Smaller blocks lose it again to MLX's per-op overhead; mx.compile was tried and fused nothing faster on CPU.
BLOCK_ELEMENTS = 1 << 18


def _search(wg, ig, s0, b0, n, dtype):
    """Best (scale, bias) per group of one row block wg (r, G, g), starting from MLX's (s0, b0)."""
    si, sw = ig.sum(-1), (ig * wg).sum(-1)  # (r, G), fixed for every candidate
    rnd = lambda x: x.astype(dtype).astype(mx.float32)  # what the stored scale/bias will be
    # Per group: the best scale and bias so far and their error. Codes are recomputed from them at the end:
    # rounding to nearest is each element's best code whatever its weight, MLX's own codes included.
    best_s, best_b = s0.astype(mx.float32), b0.astype(mx.float32)
    best = _score(wg, ig, best_s[..., None], best_b[..., None], n)[0]
    lo, hi = wg.min(axis=-1), wg.max(axis=-1)
    for ratio in CLIP_RATIOS:
        s, b = rnd(mx.maximum((hi - lo) * ratio / n, 1e-8)), rnd(lo * ratio)
        for k in range(REFITS + 1):
            e, sq, sqq, sqw = _score(wg, ig, s[..., None], b[..., None], n)
            better = e < best
            best, best_s, best_b = mx.where(better, e, best), mx.where(better, s, best_s), mx.where(better, b, best_b)
            if k < REFITS:
                s, b = (rnd(x) for x in _refit(si, sw, sq, sqq, sqw, s, b))
        mx.eval(best, best_s, best_b)  # bound the lazy graph to one ratio
    return best_s, best_b


def quantize_weighted(w: mx.array, imp: mx.array, *, group_size: int, bits: int, dtype: mx.Dtype):
    """(packed uint32 weight, scales, biases) for 2-D w (R, in) with column importance imp (in,),
    scales and biases in `dtype` (the conversion's float dtype, as mx.quantize of a `dtype` weight)."""
    R, cols = w.shape
    G, n = cols // group_size, mx.array(float(2**bits - 1))
    wd = w.astype(dtype)
    _, s0, b0 = mx.quantize(wd, group_size=group_size, bits=bits)
    ig = imp.astype(mx.float32).reshape(1, G, group_size)
    ig = ig / mx.maximum(ig.mean(axis=-1, keepdims=True), 1e-30) + 1e-3  # no column counts for nothing
    rows = max(1, BLOCK_ELEMENTS // cols)
    packed, scales, biases = [], [], []
    for r in range(0, R, rows):
        wg = wd[r:r + rows].astype(mx.float32).reshape(-1, G, group_size)
        s, b = _search(wg, mx.broadcast_to(ig, wg.shape), s0[r:r + rows], b0[r:r + rows], n, dtype)
        q = mx.clip(mx.round((wg - b[..., None]) / s[..., None]), 0, n)
        packed.append(pack_mx(q.reshape(-1, cols), bits))
        scales.append(s.astype(dtype))
        biases.append(b.astype(dtype))
        mx.eval(packed[-1], scales[-1], biases[-1])
    return mx.concatenate(packed), mx.concatenate(scales), mx.concatenate(biases)


def quantize_weighted_reference(w: mx.array, imp: mx.array, *, group_size: int, bits: int, dtype: mx.Dtype):
    """The whole matrix searched at once and packed by NumPy: the definition `quantize_weighted` (row blocks,
    MLX packing) must equal bit for bit; tests compare them."""
    R, cols = w.shape
    G, n = cols // group_size, mx.array(float(2**bits - 1))
    wd = w.astype(dtype)
    _, s0, b0 = mx.quantize(wd, group_size=group_size, bits=bits)
    wg = wd.astype(mx.float32).reshape(R, G, group_size)
    ig = imp.astype(mx.float32).reshape(1, G, group_size)
    ig = ig / mx.maximum(ig.mean(axis=-1, keepdims=True), 1e-30) + 1e-3  # no column counts for nothing
    best_s, best_b = _search(wg, mx.broadcast_to(ig, wg.shape), s0, b0, n, dtype)
    q = mx.clip(mx.round((wg - best_b[..., None]) / best_s[..., None]), 0, n)
    codes = np.array(q.reshape(R, cols).astype(mx.uint32))
    return mx.array(pack(codes, bits)), best_s.astype(dtype), best_b.astype(dtype)

"""DeepSeek's official FP8 weight format: float8 e4m3 values with one scale per 128x128 block.

Provenance: DeepSeek-V3 `inference/fp8_cast_bf16.py` / `kernel.py` (`weight_dequant`): a weight W (M, N)
is stored as e4m3 `weight` (M, N) plus float32 `weight_scale_inv` (ceil(M/bm), ceil(N/bn)), with
W = fp8 * scale_inv broadcast over each block. The block size comes from
`quantization_config.weight_block_size`; edge blocks may be partial. V3.1's `scale_fmt: ue8m0`
only constrains the scales to powers of two; they are still stored as float32.
"""

from __future__ import annotations

import mlx.core as mx

from ..errors import CheckpointError


def dequant_block_fp8(
    weight: mx.array, scale_inv: mx.array, block: tuple[int, int], dtype=mx.float32, *, key: str = "weight"
) -> mx.array:
    """weight (M, N) uint8 (e4m3 bits), scale_inv (ceil(M/bm), ceil(N/bn)) -> (M, N) in `dtype`.

    Dequantizes in float32 and casts once at the end (mlx-lm goes through bf16, which costs ~1e-2)."""
    if weight.ndim != 2:
        raise CheckpointError(f"{key}: FP8 block dequantization expects a 2-D weight, got {weight.shape}")
    (M, N), (bm, bn) = weight.shape, block
    gm, gn = -(-M // bm), -(-N // bn)
    if tuple(scale_inv.shape) != (gm, gn):
        raise CheckpointError(
            f"{key}_scale_inv: shape {tuple(scale_inv.shape)} does not match weight {(M, N)} "
            f"with {bm}x{bn} blocks (expected {(gm, gn)})"
        )
    w = mx.from_fp8(weight, dtype=mx.float32)
    w = mx.pad(w, ((0, gm * bm - M), (0, gn * bn - N)))  # partial edge blocks
    w = w.reshape(gm, bm, gn, bn) * scale_inv.astype(mx.float32)[:, None, :, None]
    return w.reshape(gm * bm, gn * bn)[:M, :N].astype(dtype)


def quant_block_fp8(w: mx.array, block: tuple[int, int]) -> tuple[mx.array, mx.array]:
    """Inverse of dequant_block_fp8 (for building test checkpoints): scale = block amax / 448."""
    (M, N), (bm, bn) = w.shape, block
    gm, gn = -(-M // bm), -(-N // bn)
    wp = mx.pad(w.astype(mx.float32), ((0, gm * bm - M), (0, gn * bn - N))).reshape(gm, bm, gn, bn)
    scale = mx.maximum(mx.abs(wp).max(axis=(1, 3)), 1e-12) / 448.0  # e4m3's largest finite value
    q = mx.to_fp8(wp / scale[:, None, :, None]).reshape(gm * bm, gn * bn)[:M, :N]
    return q, scale

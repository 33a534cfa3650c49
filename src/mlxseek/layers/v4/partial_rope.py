"""DeepSeek-V4 rotary embedding: interleaved RoPE on the *trailing* `qk_rope_head_dim` channels of a
head, at evenly spaced positions, and its inverse (V4 un-rotates the attention output).

Provenance: DeepSeek-V4 `inference/model.py` (`precompute_freqs_cis`, `apply_rotary_emb(x[..., -rd:])`)
and transformers' `DeepseekV4RotaryEmbedding`: sliding-only layers use plain RoPE with `rope_theta`;
compressed layers, their compressor and their indexer use `compress_rope_theta` with the YaRN
frequencies of `rope_scaling` but no YaRN cos/sin scale (`attention_factor` 1.0).

Shapes: x (..., L, Dh) with the positions on axis -2; only the last `dims` channels rotate.
"""

from __future__ import annotations

from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..rope import yarn_inv_freq


Offset = Union[int, mx.array]  # one position for every row, or per-row positions (B,) of batched rows


def positions(offset: Offset, L: int) -> mx.array:
    """(1, L) positions of L tokens from `offset`, or (B, L) from per-row offsets (B,)."""
    if isinstance(offset, mx.array):
        return offset[:, None] + mx.arange(L)[None]
    return (offset + mx.arange(L))[None]


class PartialRope(nn.Module):
    def __init__(self, dims: int, base: float, scaling: Optional[dict] = None):
        super().__init__()
        self.dims = dims
        kind = (scaling or {}).get("type", (scaling or {}).get("rope_type", "default"))
        if kind == "yarn":
            inv = yarn_inv_freq(dims, base, scaling)
        else:
            inv = 1.0 / (base ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
        self._inv_freq = mx.array(inv.astype(np.float32))  # (dims/2,), outside the parameter tree

    def __call__(self, x: mx.array, offset: Offset, stride: int = 1, inverse: bool = False) -> mx.array:
        """Rotate x's trailing `dims` channels at positions offset, offset+stride, ... along axis -2.
        `offset` is one int for every row, or per-row offsets (B,) for x (B, ..., L, Dh) (batched rows)."""
        L, d = x.shape[-2], self.dims
        if isinstance(offset, mx.array):
            pos = (offset[:, None] + stride * mx.arange(L)[None]).astype(mx.float32)  # (B, L)
            # (B, 1.., L, d/2): each row's angles broadcast over the axes between batch and positions
            angles = (pos[..., None] * self._inv_freq).reshape(x.shape[0], *(1,) * (x.ndim - 3), L, d // 2)
        else:
            pos = (offset + stride * mx.arange(L)).astype(mx.float32)
            angles = pos[:, None] * self._inv_freq[None]  # (L, d/2), float32 like the reference
        cos, sin = mx.cos(angles), mx.sin(angles)
        if inverse:
            sin = -sin
        pairs = x[..., -d:].astype(mx.float32).reshape(*x.shape[:-1], d // 2, 2)  # interleaved (x0, x1)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        rot = mx.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1).reshape(*x.shape[:-1], d)
        return mx.concatenate([x[..., :-d], rot.astype(x.dtype)], axis=-1)


def rope_for_layer(cfg, compress_ratio: int, dims: Optional[int] = None) -> PartialRope:
    """The rope a V4 layer uses: plain `rope_theta` for sliding-only layers, YaRN-scaled
    `compress_rope_theta` for compressed ones (their queries, keys, compressor and indexer alike)."""
    dims = dims or cfg.qk_rope_head_dim
    if compress_ratio == 0:
        return PartialRope(dims, cfg.rope_theta, None)
    return PartialRope(dims, cfg.compress_rope_theta, cfg.rope_scaling)

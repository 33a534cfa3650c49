"""Engram (DeepSeek-V4.1): an n-gram memory written into the residual streams before attention.

The (N-1)*H = C table rows a position reads (`engram_hash`) are dequantized, flattened and projected by
`wkv` to one key per hc stream plus one shared value; a sigmoid gate per stream, of the signed square root
of a normalised dot product between the stream and its key, decides how much value each stream takes:
  key_k, value = split(wkv(rows))                              key (B, L, n, D), value (B, L, D)
  dot_k = sum(h_k * q_weight_k * k_weight_k * key_k) * rstd(h_k) * rstd(key_k) / sqrt(D)
  h_k  += sigmoid(sign(dot_k) * sqrt(max(|dot_k|, 1e-6))) * value
Provenance: transformers' V4.1 port (`DeepseekV41Engram`), DeepSeek's `engram.py`. A row is 256 FP8 e4m3
values with one E8M0 scale per 32 (264 bytes). Shapes: B, L, n = hc_mult, D hidden, C columns, d head_dim.
"""

from __future__ import annotations

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

SCALE_BLOCK = 32


def dequant_rows(weights: np.ndarray, scales: np.ndarray) -> mx.array:
    """weights (n, d) FP8 e4m3 bits, scales (n, d/32) E8M0 bits -> (n, d) float32 (exact)."""
    w = mx.from_fp8(mx.array(weights), mx.float32)
    s = mx.power(mx.array(2.0, mx.float32), mx.array(scales).astype(mx.float32) - 127.0)
    return (w.reshape(*w.shape[:-1], -1, SCALE_BLOCK) * s[..., None]).reshape(w.shape)


def gather_rows(memory, table: int, rows: np.ndarray) -> mx.array:
    """rows (B, L, C) -> (B, L, C, d) float32, each distinct row fetched once (sorted) from `memory`: the
    synchronous reference of `PendingRows`."""
    uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
    t0 = time.perf_counter()
    w, s = memory.fetch(table, uniq, asked=rows.size)
    memory.stats.wait_s += time.perf_counter() - t0  # the forward waits for the whole fetch
    return dequant_rows(w, s)[mx.array(inverse.astype(np.int32))].reshape(*rows.shape, -1)


class PendingRows:
    """One Engram layer's rows, read in the background (`memory.fetch_async`) from the start of the forward:
    rows (B, L, C) -> on `get`, (B, L, C, d) float32, as `gather_rows` gives them."""

    def __init__(self, memory, table: int, rows: np.ndarray):
        uniq, self._inverse = np.unique(rows.reshape(-1), return_inverse=True)
        self._shape, self._stats = rows.shape, memory.stats
        self._future = memory.fetch_async(table, uniq, asked=rows.size)

    def get(self, before: mx.array | None = None) -> mx.array:
        """Wait for the reads; while they are not done, `before` (the streams the layers ahead of this one
        produce, still lazy) starts computing, so those layers run while the SSD answers."""
        if before is not None and not self._future.done():
            mx.async_eval(before)
        t0 = time.perf_counter()
        w, s = self._future.result()
        self._stats.wait_s += time.perf_counter() - t0
        return dequant_rows(w, s)[mx.array(self._inverse.astype(np.int32))].reshape(*self._shape, -1)


class Engram(nn.Module):
    def __init__(self, hidden_size: int, hc_mult: int, columns: int, head_dim: int, eps: float):
        super().__init__()
        self.hidden_size, self.hc_mult, self.eps = hidden_size, hc_mult, eps
        self.wkv = nn.Linear(columns * head_dim, hidden_size * (hc_mult + 1), bias=False)
        self.q_weight = mx.ones((hc_mult, hidden_size))
        self.k_weight = mx.ones((hc_mult, hidden_size))

    def __call__(self, streams: mx.array, rows: mx.array, live: mx.array | None = None) -> mx.array:
        """streams (B, L, n, D), rows (B, L, C, d) dequantized, live (B, L) bool or None -> (B, L, n, D)."""
        n, D = self.hc_mult, self.hidden_size
        kv = self.wkv(rows.reshape(*rows.shape[:2], -1).astype(self.wkv.weight.dtype))
        key = kv[..., : n * D].astype(mx.float32).reshape(*kv.shape[:2], n, D)
        value = kv[..., n * D:].astype(mx.float32)
        h = streams.astype(mx.float32)
        w = self.q_weight.astype(mx.float32) * self.k_weight.astype(mx.float32)  # only ever a product
        rstd = mx.rsqrt(mx.mean(h * h, axis=-1) + self.eps) * mx.rsqrt(mx.mean(key * key, axis=-1) + self.eps)
        dot = (h * w * key).sum(axis=-1) * rstd * D**-0.5
        gate = mx.sigmoid(mx.where(dot < 0, -1.0, 1.0) * mx.sqrt(mx.maximum(mx.abs(dot), 1e-6)))
        if live is not None:
            gate = mx.where(live[..., None], gate, 0.0)
        return (h + gate[..., None] * value[..., None, :]).astype(streams.dtype)

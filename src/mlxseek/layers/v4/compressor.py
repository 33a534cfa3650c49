"""DeepSeek-V4 KV compression (DeepSeek-V4 report section 2.3): every `ratio` consecutive tokens are pooled
into one compressed KV entry by a learned, position-biased softmax gate.

  HCA, heavily compressed attention (ratio 128): entry w pools the tokens of window w.
  CSA, compressed sparse attention (ratio 4): each token projects two series (Ca, Cb); entry w pools
      Cb over window w together with Ca over window w-1 (width 2*ratio, stride ratio), and a lightning
      indexer (`v4_indexer.py`) later picks which entries each query reads.
entry = RMSNorm(sum_j softmax_j(gate_j + position_bias_j) * kv_j), then RoPE (compress rope) on its
trailing rotary channels at the window's first position. Entry w is visible to the query at position
t only once its window is complete: w < (t + 1) // ratio.

Shapes: B batch, L new tokens, N retained raw rows, W windows, r ratio, d head dim, C = (1 + overlap) * d.
With a cache the raw per-token projections wait in a `CompressorState` (cache/v4.py) until their window
closes, so prefill, chunked prefill and token-by-token decode run the same pooling on the same rows.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..norms import RMSNorm
from .partial_rope import Offset, PartialRope


def pool_windows(kv: mx.array, gate: mx.array, ratio: int, overlap: bool, has_prev: bool) -> mx.array:
    """Softmax-gated pooling of whole windows. kv, gate (B, W*r, C) with position_bias already in `gate`.
    With overlap (C = 2d) window w also pools window w-1's first half; `has_prev` means the first
    window is only there to supply that half and produces no entry. Returns (B, W - has_prev, d)."""
    B, N, C = kv.shape
    kv = kv.reshape(B, N // ratio, ratio, C)
    gate = gate.reshape(B, N // ratio, ratio, C).astype(mx.float32)
    if overlap:
        d = C // 2
        # (B, W, 2r, d): [Ca of window w-1 | Cb of window w]; before the first window: empty slots.
        prev_kv = mx.concatenate([mx.zeros_like(kv[:, :1, :, :d]), kv[:, :-1, :, :d]], axis=1)
        prev_gate = mx.concatenate([mx.full(gate[:, :1, :, :d].shape, -mx.inf), gate[:, :-1, :, :d]], axis=1)
        kv = mx.concatenate([prev_kv, kv[..., d:]], axis=2)
        gate = mx.concatenate([prev_gate, gate[..., d:]], axis=2)
    weights = mx.softmax(gate, axis=2).astype(kv.dtype)
    pooled = (kv * weights).sum(axis=2)  # (B, W, d)
    return pooled[:, 1:] if has_prev else pooled


class Compressor(nn.Module):
    """Checkpoint `attn.compressor.{wkv, wgate, ape, norm}` (and the indexer's own, at its head dim)."""

    def __init__(self, hidden: int, head_dim: int, ratio: int, rope: PartialRope, norm_eps: float):
        super().__init__()
        self.ratio, self.head_dim = ratio, head_dim
        self.overlap = ratio == 4  # DeepSeek-V4 `Compressor`: overlapping windows exactly when ratio == 4
        C = (1 + self.overlap) * head_dim
        self.kv_proj = nn.Linear(hidden, C, bias=False)
        self.gate_proj = nn.Linear(hidden, C, bias=False)
        self.position_bias = mx.zeros((ratio, C))
        self.kv_norm = RMSNorm(head_dim, eps=norm_eps)
        self.rope = rope

    def __call__(self, x: mx.array, offset: Offset, state: Optional[object] = None) -> mx.array:
        """x (B, L, D) at positions offset.. -> every entry emitted so far (B, T, d), T = (offset+L) // r.
        Without a state, x must be the whole sequence so far (offset 0); per-row offsets (B,) come with
        a batch state and one token per row."""
        kv, gate = self.kv_proj(x), self.gate_proj(x)
        if isinstance(offset, mx.array):
            return self._emit_rows(kv, gate, state)
        if state is None:
            if offset:
                raise ValueError("Compressor without a cache state needs the sequence from position 0")
            rows_kv, rows_gate, start, done = kv, gate, 0, 0
        else:
            rows_kv, rows_gate, start, done = state.extend(kv, gate)
        total = (offset + x.shape[1]) // self.ratio
        new = self._emit(rows_kv, rows_gate, start, done, total)
        return new if state is None else state.add_entries(new)

    def _emit(self, rows_kv, rows_gate, start: int, done: int, total: int) -> mx.array:
        """Pool windows done..total-1 from raw rows that begin at absolute position `start`."""
        if total <= done:
            return mx.zeros((rows_kv.shape[0], 0, self.head_dim), rows_kv.dtype)
        r = self.ratio
        has_prev = self.overlap and done > 0
        first = done - has_prev  # the window whose Ca half the first new entry needs
        i0, i1 = first * r - start, total * r - start
        if i0 < 0:
            raise ValueError(f"compressor state lost raw rows from position {first * r} (kept from {start})")
        return self._pool(rows_kv[:, i0:i1], rows_gate[:, i0:i1], done * r, has_prev)

    def _pool(self, kv: mx.array, gate: mx.array, first: Offset, has_prev: bool) -> mx.array:
        """Whole windows' raw rows (B, W*r, C) -> entries (B, W - has_prev, d), the first at position
        `first` (an int, or per row (B,) for batched rows)."""
        gate = gate + mx.tile(self.position_bias, (kv.shape[1] // self.ratio, 1))  # float32 bias promotes
        pooled = pool_windows(kv, gate, self.ratio, self.overlap, has_prev)
        return self.rope(self.kv_norm(pooled), first, stride=self.ratio)  # entry w sits at position w * r

    def _emit_rows(self, kv: mx.array, gate: mx.array, state) -> mx.array:
        """Batched rows at their own positions (a batch state: `cache.v4_rings.BatchCompressor`), one new
        token each: kv, gate (B, 1, C) -> every row's entries (B, T, d), T its longest row's count. Only
        the rows whose window this token completes pool one (gathered (E, W*r, C), E such rows)."""
        state.extend(kv, gate)
        for rows, at, has_prev in state.due():  # rows (E,) and their new entries' window starts (E,)
            raw_kv, raw_gate = state.raw(rows, at, has_prev)  # from the previous window when has_prev
            state.add(rows, self._pool(raw_kv, raw_gate, at, has_prev))
        return state.settle()

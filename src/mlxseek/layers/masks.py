"""Attention masks. Shapes: L queries, S = offset + L keys."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx


def causal_mask(L: int, offset: int) -> Optional[mx.array]:
    """(L, offset+L) boolean mask, True where query i (at position offset+i) may attend key j; None for one
    query (it sees every key)."""
    if L == 1:
        return None
    q = mx.arange(offset, offset + L)[:, None]
    return q >= mx.arange(offset + L)[None]


def batch_causal_mask(L: int, positions: mx.array, S: int) -> mx.array:
    """(B, 1, L, S) boolean for ragged batched rows (cache/batch.py): row b's query i sits at position
    positions[b] + i and sees keys 0..positions[b]+i; columns past a row's own tokens (padding, or
    stale after a rollback) are never seen. Unlike the single-row mask it is needed at L == 1 too."""
    q = positions[:, None, None, None] + mx.arange(L)[None, None, :, None]
    return mx.arange(S)[None, None, None, :] <= q

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

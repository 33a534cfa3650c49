"""DeepSeek-V4.1 caches (CSA2). Every layer keeps its own sliding window of FP8-rounded KV rows; a KV-source
layer also keeps its compressed KV entries, its indexer keys (when it is an index source too) and the rows
of its still-open compress group; the layers after it read those through the forward's `shared` dict. The
Engram look-back (the last max_ngram - 1 compressed token ids per row) lives in layer 0's cache.

Shapes: B rows, S window rows (<= sliding_window after an update), T entries, d head_dim, di index dim.
Not trimmable: evicted window rows and closed groups cannot be restored, so drafting and prefix snapshots
are off for V4.1 (`capabilities` in models/deepseek_v41.py).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np


def append(old: Optional[mx.array], new: mx.array) -> mx.array:
    return new if old is None else mx.concatenate([old, new], axis=1)


class V41LayerCache:
    def __init__(self, window: int):
        self.window_size = window
        self.offset = 0  # tokens seen
        self.window: Optional[mx.array] = None  # (B, S, d)
        self.compress_kv: Optional[mx.array] = None  # (B, T, d), RoPE'd and FP4-rounded
        self.index_k: Optional[mx.array] = None  # (B, T, di)
        self.pending_kv: Optional[mx.array] = None  # (B, < ratio, d) the open group
        self.pending_gate: Optional[mx.array] = None
        self.engram_history: Optional[np.ndarray] = None  # (B, N-1) compressed ids, layer 0 only

    def update_window(self, kv: mx.array) -> tuple[mx.array, int]:
        """Append kv (B, L, d); return (all rows a query of this chunk may see, position of the first)."""
        rows = append(self.window, kv)
        start = self.offset + kv.shape[1] - rows.shape[1]
        self.window = rows[:, -self.window_size:]
        self.offset += kv.shape[1]
        return rows, start

    @property
    def state(self):
        return (self.window, self.compress_kv, self.index_k, self.pending_kv, self.pending_gate)

    def is_trimmable(self) -> bool:
        return False

    def empty(self) -> bool:
        return self.offset == 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state if a is not None)


def make_v41_cache(cfg) -> list:
    return [V41LayerCache(cfg.sliding_window) for _ in range(cfg.num_hidden_layers)]

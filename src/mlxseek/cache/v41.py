"""DeepSeek-V4.1 caches (CSA2). Every layer keeps its own sliding window of FP8-rounded KV rows; a KV-source
layer also keeps its compressed KV entries, its indexer keys (when it is an index source too) and the rows
of its still-open compress group; the layers after it read those through the forward's `shared` dict. The
Engram look-back (the last max_ngram - 1 compressed token ids per row) lives in layer 0's cache.

Shapes: B rows, S window rows (<= sliding_window after an update), T entries, d head_dim, di index dim.
The cache protocol (`cache.protocol`): a snapshot holds every part (the Engram look-back included) and is
valid only where it was taken, as V4's (the window and the open group are overwritten as tokens arrive), so
the server keeps snapshots at snapshot points; compressed entries and index keys only grow and are shared
between snapshots of one conversation. Not trimmable: drafting is off for V4.1 until its drafter lands.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np

from .protocol import Capabilities, CacheState, CacheStateError, check_kind, cut, owned


def append(old: Optional[mx.array], new: mx.array) -> mx.array:
    return new if old is None else mx.concatenate([old, new], axis=1)


_PARTS = ("window", "compress_kv", "index_k", "pending_kv", "pending_gate")


class V41LayerCache:
    kind = "v41"
    capabilities = Capabilities(cut=False, batch=False, quantize=False)

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

    def snapshot(self) -> CacheState:
        arrays = {k: owned(getattr(self, k)) for k in _PARTS if getattr(self, k) is not None}
        if self.engram_history is not None:
            arrays["engram_history"] = mx.array(self.engram_history)
        grows = {k: 1 for k in ("compress_kv", "index_k") if k in arrays}
        return CacheState(self.kind, self.offset, arrays, {"window_size": self.window_size}, append_axis=grows)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        if state.meta.get("window_size") != self.window_size:
            raise CacheStateError(f"cache state v41.window_size: {state.meta.get('window_size')} but this layer "
                                  f"keeps {self.window_size} rows (a snapshot of another model)")
        for k in _PARTS:
            setattr(self, k, owned(state.arrays[k]) if k in state.arrays else None)
        history = state.arrays.get("engram_history")
        self.engram_history = None if history is None else np.array(history, dtype=np.int64)
        self.offset = state.offset

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def is_trimmable(self) -> bool:
        return False

    def empty(self) -> bool:
        return self.offset == 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state if a is not None)


def make_v41_cache(cfg) -> list:
    return [V41LayerCache(cfg.sliding_window) for _ in range(cfg.num_hidden_layers)]

"""DeepSeek-V4.1 caches (CSA2). Every layer keeps its own sliding window of FP8-rounded KV rows; a KV-source
layer also keeps its compressed KV entries, its indexer keys (when it is an index source too) and the rows
of its still-open compress group; the layers after it read those through the forward's `shared` dict. The
Engram look-back (the last max_ngram - 1 compressed token ids per row) lives in layer 0's cache.

Shapes: B rows, S window rows (<= sliding_window after an update), T entries, d head_dim, di index dim.
The cache protocol (`cache.protocol`): a snapshot holds every part (the Engram look-back included) and is
valid only where it was taken, as V4's (the window and the open group are overwritten as tokens arrive), so
the server keeps snapshots at snapshot points; compressed entries and index keys only grow and are shared
between snapshots of one conversation.
Trimmable by up to `trim_slack` tokens (the speculative verify's rollback): the window keeps that many extra
rows, a compressing layer the raw (kv, gate) rows of its last groups, layer 0 a longer Engram look-back, so
a rollback rebuilds exactly the state a run that never saw the rejected tokens would hold.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np

from .v4 import DEFAULT_TRIM_SLACK
from .protocol import Capabilities, CacheState, CacheStateError, check_kind, cut, owned


def append(old: Optional[mx.array], new: mx.array) -> mx.array:
    return new if old is None else mx.concatenate([old, new], axis=1)


_PARTS = ("window", "compress_kv", "index_k", "pending_kv", "pending_gate")


class V41LayerCache:
    kind = "v41"
    capabilities = Capabilities(cut=False, batch=False, quantize=False)

    def __init__(self, window: int, ratio: int = 0, trim_slack: int = DEFAULT_TRIM_SLACK):
        self.window_size, self.ratio, self.trim_slack = window, ratio, trim_slack
        self.offset = 0  # tokens seen
        self.window: Optional[mx.array] = None  # (B, S, d)
        self.compress_kv: Optional[mx.array] = None  # (B, T, d), RoPE'd and FP4-rounded
        self.index_k: Optional[mx.array] = None  # (B, T, di)
        self.pending_kv: Optional[mx.array] = None  # (B, < ratio, d) the open group
        self.pending_gate: Optional[mx.array] = None
        self.engram_history: Optional[np.ndarray] = None  # (B, N-1) compressed ids, layer 0 only
        self.engram_trail: Optional[np.ndarray] = None  # (B, <= N-1+slack) the same, longer: for trim
        self.raw_kv: Optional[mx.array] = None  # (B, R, d) pre-pooling rows of positions raw_start..offset-1
        self.raw_gate: Optional[mx.array] = None
        self.raw_start = 0
        self.floor = 0  # trim cannot go below here (a restored state carries no raw rows)

    def update_window(self, kv: mx.array) -> tuple[mx.array, int]:
        """Append kv (B, L, d); return (all rows a query of this chunk may see, position of the first)."""
        kept = append(self.window, kv)
        # The attention sees the last window_size old rows only, as without slack: more (masked) keys
        # change the kernel's summation order, and FP4/FP8 rounding downstream can amplify that noise.
        rows = kept[:, -(self.window_size + kv.shape[1]):]
        start = self.offset + kv.shape[1] - rows.shape[1]
        self.window = kept[:, -(self.window_size + self.trim_slack):]  # the slack rows serve `trim` only
        self.offset += kv.shape[1]
        return rows, start

    def log_raw(self, kv: mx.array, gate: mx.array, offset: int) -> None:
        """Keep the compressor inputs of positions offset.. (B, L, d) back to the group holding offset - slack."""
        if self.raw_kv is None:
            self.raw_start = offset
        self.raw_kv, self.raw_gate = append(self.raw_kv, kv), append(self.raw_gate, gate)
        keep_from = max(self.raw_start, (offset + kv.shape[1] - self.trim_slack) // self.ratio * self.ratio)
        drop = keep_from - self.raw_start
        self.raw_kv, self.raw_gate, self.raw_start = self.raw_kv[:, drop:], self.raw_gate[:, drop:], keep_from

    def trim(self, n: int) -> int:
        """Forget the last n tokens (at most trim_slack); returns how many were forgotten."""
        n = max(0, min(n, self.trim_slack, self.offset - self.floor))
        if n == 0:
            return 0
        self.offset -= n
        if self.window is not None:
            self.window = self.window[:, :-n]
        if self.ratio:
            groups = self.offset // self.ratio
            self.compress_kv = None if self.compress_kv is None else self.compress_kv[:, :groups]
            self.index_k = None if self.index_k is None else self.index_k[:, :groups]
        if self.raw_kv is not None:
            lo, hi = groups * self.ratio - self.raw_start, self.offset - self.raw_start
            self.pending_kv, self.pending_gate = self.raw_kv[:, lo:hi], self.raw_gate[:, lo:hi]
            self.raw_kv, self.raw_gate = self.raw_kv[:, :hi], self.raw_gate[:, :hi]
        if self.engram_trail is not None:
            self.engram_trail = self.engram_trail[:, :-n]
            self.engram_history = self.engram_trail[:, -self.engram_history.shape[1]:]
        return n

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
        self.offset = self.floor = state.offset
        self.raw_kv = self.raw_gate = self.engram_trail = None

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def is_trimmable(self) -> bool:
        return True

    def empty(self) -> bool:
        return self.offset == 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state if a is not None)


def make_v41_cache(cfg) -> list:
    return [V41LayerCache(cfg.sliding_window, cfg.compress_ratios[i] if i in (cfg.kv_source_layer_ids or ()) else 0)
            for i in range(cfg.num_hidden_layers)]

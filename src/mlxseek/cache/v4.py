"""DeepSeek-V4 per-layer caches: a sliding window of KV rows, plus for compressed layers the emitted
compressed entries and the raw per-token projections of windows that are still open.

Per layer and token position the cache holds (d = head_dim, C = (1 + overlap) * d):
  window      the last `sliding_window - 1` KV rows (d each): what sliding-window attention reads;
  compressor  every emitted entry (d each, one per `ratio` tokens) and the raw (kv, gate) rows (2C each)
              of the open window (CSA also keeps the previous window: its Ca half feeds the next entry);
  indexer     the same at index_head_dim, on ratio-4 (CSA) layers only.
Each part also keeps `trim_slack` extra tokens of history, so the cache can be rolled back by up to
that many tokens (speculative decoding) and re-extended to exactly the state a fresh prefill reaches.

The classes follow mlx-lm's cache protocol (`offset`, `state`, `is_trimmable`, `trim`, `nbytes`), so
mlx-lm's generate loop and prompt-cache trimming drive them.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import _BaseCache

from .protocol import Capabilities, CacheState, CacheStateError, cut, check_kind, owned

DEFAULT_TRIM_SLACK = 16  # tokens of extra history per layer: the deepest rollback `trim` can undo
ENTRY_STEP = 256  # compressed entries are stored in a buffer grown in steps, as mlx-lm's KVCache does


def _cat(old: Optional[mx.array], new: mx.array) -> mx.array:
    return new if old is None else mx.concatenate([old, new], axis=1)


class WindowState:
    """KV rows (B, S, d) for absolute positions start .. offset-1, S <= window - 1 + slack."""

    def __init__(self, window: int, slack: int):
        self.keep = window - 1 + slack
        self.window, self.rows, self.start, self.offset = window, None, 0, 0

    def update(self, kv: mx.array) -> tuple[mx.array, int]:
        """Append kv (B, L, d); return (every retained row plus the new ones, position of the first)."""
        full, start = _cat(self.rows, kv), self.start
        self.offset += kv.shape[1]
        drop = max(0, full.shape[1] - self.keep)
        self.rows, self.start = full[:, drop:], start + drop
        return full, start

    def trim(self, n: int) -> None:
        self.offset -= n
        self.rows = self.rows[:, : self.offset - self.start]

    def save(self, prefix: str, arrays: dict, meta: dict) -> None:
        if self.rows is not None:
            arrays[f"{prefix}rows"] = owned(self.rows)
        meta[f"{prefix}start"], meta[f"{prefix}offset"] = self.start, self.offset

    def load(self, prefix: str, arrays: dict, meta: dict) -> None:
        rows = arrays.get(f"{prefix}rows")
        self.start, self.offset = meta[f"{prefix}start"], meta[f"{prefix}offset"]
        held = 0 if rows is None else rows.shape[1]
        if held != self.offset - self.start or held > self.keep:
            raise CacheStateError(f"cache state v4.{prefix}rows: {held} rows do not cover positions "
                                  f"{self.start}..{self.offset - 1} of a {self.keep}-row window")
        self.rows = None if rows is None else owned(rows)


class CompressorState:
    """Raw rows (B, N, C) from absolute position `start`, and the emitted entries (B, T, d)."""

    def __init__(self, ratio: int, overlap: bool, slack: int):
        self.ratio, self.overlap, self.slack = ratio, overlap, slack
        self.kv = self.gate = self._buf = None
        self.start = self.offset = self.count = 0

    @property
    def entries(self) -> Optional[mx.array]:
        return None if self._buf is None else self._buf[:, : self.count]

    def _append(self, new: mx.array) -> None:
        """Write new entries (B, n, d) after the current ones, growing the buffer (not re-copying it) per step."""
        B, n, d = new.shape
        if self._buf is None or self.count + n > self._buf.shape[1]:
            grow = mx.zeros((B, ENTRY_STEP * (n // ENTRY_STEP + 1), d), new.dtype)
            self._buf = grow if self._buf is None else mx.concatenate([self._buf[:, : self.count], grow], axis=1)
        self._buf[:, self.count : self.count + n] = new
        self.count += n

    def extend(self, kv: mx.array, gate: mx.array) -> tuple[mx.array, mx.array, int, int]:
        """Append one call's projections; returns (raw kv, raw gate, their first position, entries so far)."""
        self.kv, self.gate = _cat(self.kv, kv), _cat(self.gate, gate)
        self.offset += kv.shape[1]
        return self.kv, self.gate, self.start, self.count

    def add_entries(self, new: mx.array) -> mx.array:
        self._append(new)
        # Keep raw rows from the window before the one holding position offset - slack: enough to
        # rebuild the open window and its overlap after a rollback of up to `slack` tokens.
        r = self.ratio
        keep_from = max(0, ((self.offset - self.slack) // r - self.overlap) * r)
        if keep_from > self.start:
            cut = keep_from - self.start
            self.kv, self.gate, self.start = self.kv[:, cut:], self.gate[:, cut:], keep_from
        return self.entries

    def trim(self, n: int) -> None:
        self.offset -= n
        if self.kv is not None:
            self.count = min(self.count, self.offset // self.ratio)
            self.kv, self.gate = self.kv[:, : self.offset - self.start], self.gate[:, : self.offset - self.start]

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.kv, self.gate, self.entries) if a is not None]

    def save(self, prefix: str, arrays: dict, meta: dict) -> None:
        for name, a in (("kv", self.kv), ("gate", self.gate), ("entries", self.entries)):
            if a is not None:
                arrays[prefix + name] = owned(a)
        meta[f"{prefix}start"], meta[f"{prefix}offset"], meta[f"{prefix}count"] = self.start, self.offset, self.count

    def load(self, prefix: str, arrays: dict, meta: dict) -> None:
        self.start, self.offset, self.count = (meta[f"{prefix}{k}"] for k in ("start", "offset", "count"))
        kv, gate, entries = (arrays.get(prefix + k) for k in ("kv", "gate", "entries"))
        raw = 0 if kv is None else kv.shape[1]
        if raw != self.offset - self.start or (gate is None) != (kv is None) or (gate is not None and gate.shape[1] != raw):
            raise CacheStateError(f"cache state v4.{prefix}kv: {raw} raw rows do not cover positions "
                                  f"{self.start}..{self.offset - 1}")
        if (0 if entries is None else entries.shape[1]) != self.count:
            raise CacheStateError(f"cache state v4.{prefix}entries: expected {self.count} compressed entries")
        self.kv, self.gate = (None, None) if kv is None else (owned(kv), owned(gate))
        self._buf = None if entries is None else owned(entries)


class V4LayerCache(_BaseCache):
    """Cache of one V4 decoder layer: window rows, plus compressor / indexer states where the layer has them.

    A snapshot is valid only at the position it was taken: the window ring and the compressor's open
    group are overwritten as tokens arrive, so `cut_state` refuses any other length (the server keeps
    snapshots at snapshot points instead). The compressed entries are append-only."""

    kind = "v4"
    capabilities = Capabilities(cut=False, batch=True, quantize=False)  # rows merge in `cache.v4_batch`

    def __init__(self, window: int, ratio: int, overlap: bool, indexer: bool, trim_slack: int = DEFAULT_TRIM_SLACK):
        self.trim_slack = trim_slack
        self.window = WindowState(window, trim_slack)
        self.compressor = CompressorState(ratio, overlap, trim_slack) if ratio else None
        self.indexer = CompressorState(ratio, overlap, trim_slack) if indexer else None

    @property
    def offset(self) -> int:
        return self.window.offset

    def _parts(self) -> list:
        return [p for p in (self.compressor, self.indexer) if p is not None]

    @property
    def state(self) -> list[mx.array]:
        rows = [self.window.rows] if self.window.rows is not None else []
        return rows + [a for p in self._parts() for a in p.arrays()]

    @state.setter
    def state(self, v) -> None:
        raise NotImplementedError("V4LayerCache is restored with restore(snapshot()), not from bare arrays")

    def _named_parts(self) -> list:
        return [(p, s) for p, s in (("c.", self.compressor), ("i.", self.indexer)) if s is not None]

    def snapshot(self) -> CacheState:
        arrays, meta = {}, {}
        self.window.save("w.", arrays, meta)
        for prefix, part in self._named_parts():
            part.save(prefix, arrays, meta)
        # compressed entries only grow (one per `ratio` tokens): snapshots of one conversation share them
        grows = {k: 1 for k in arrays if k.endswith("entries")}
        return CacheState(self.kind, self.offset, arrays, meta, append_axis=grows)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        want = {"w.start", "w.offset"} | {p + k for p, _ in self._named_parts() for k in ("start", "offset", "count")}
        if set(state.meta) != want:
            raise CacheStateError(f"cache state v4.meta: lacks {sorted(want - set(state.meta))} and has "
                                  f"{sorted(set(state.meta) - want)} extra (a snapshot of another layer kind)")
        self.window.load("w.", state.arrays, state.meta)
        for prefix, part in self._named_parts():
            part.load(prefix, state.arrays, state.meta)
        if self.offset != state.offset:
            raise CacheStateError(f"cache state v4.offset: {state.offset} but its window ends at {self.offset}")

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Roll back the last min(n, offset, trim_slack) tokens; returns how many were removed."""
        n = min(n, self.offset, self.trim_slack)
        if n > 0:
            self.window.trim(n)
            for p in self._parts():
                p.trim(n)
        return n

    def size(self) -> int:
        return self.offset

    def empty(self) -> bool:
        return self.offset == 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


def v4_layer_cache(attn) -> V4LayerCache:
    """The cache one V4 attention needs: its window, compression ratio and overlap, and an indexer part
    on ratio-4 (CSA) layers."""
    comp = attn.get("compressor") if "compressor" in attn else None
    return V4LayerCache(attn.sliding_window, comp.ratio if comp else 0, comp.overlap if comp else False,
                        "indexer" in attn)


def make_v4_cache(model) -> list[V4LayerCache]:
    """One cache per decoder layer of a V4 model."""
    return [v4_layer_cache(layer.self_attn) for layer in model.layers]

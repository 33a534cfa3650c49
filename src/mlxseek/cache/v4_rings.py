"""The parts of a batched DeepSeek-V4 layer cache: each row's sliding window and each row's compressor
state (raw rows of open groups, emitted entries) in shared buffers, so one decode step attends every row
in one pass while each row keeps exactly the state its solo cache (`cache/v4.py`) would hold.

Shapes: B rows, K = window + slack window slots, R raw slots, T entries (the longest row's count), d head
dim, C = (1 + overlap) * d raw width.
  window ring (B, K, d)      row b's position p sits in slot p % K
  raw rings kv, gate (B, R, C)  the same for the compressor's raw per-token projections
  entries (B, Tcap, d)       row b's entries at columns 0..count_b-1, as in its solo cache; the rest padding
Rings, not left-aligned rows: a solo window drops its oldest row on every step (a copy of the window); a
ring writes one slot per row, at each row's own position. Attention does not care about slot order: the
window ring reports the position each slot holds (-1: empty) and the mask reads that. The per-row
bookkeeping (start, offset, count) is host ints following the solo classes' rules line for line, so a row
extracted from the batch is the solo cache its own run holds, and trimming a row (a rollback) is bookkeeping.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np

from ..errors import BatchingError
from .protocol import CacheStateError
from .v4 import ENTRY_STEP, CompressorState, WindowState


def _slots(first: int, n: int, cap: int) -> mx.array:
    """Ring slots of positions first .. first+n-1."""
    return (first + mx.arange(n)) % cap


def _one_token(a: mx.array, rows: int) -> None:
    if a.shape[0] != rows or a.shape[1] != 1:
        raise BatchingError(f"tokens per row: a batched V4 step takes one new token for each of its {rows} "
                            f"rows, got {tuple(a.shape[:2])}; prefill a row alone, then insert it")


def _stack(ring: Optional[mx.array], row: mx.array) -> mx.array:
    return row if ring is None else mx.concatenate([ring, row.astype(ring.dtype)], axis=0)


class BatchWindow:
    """Every row's window ring; start/offset per row as `WindowState`'s (positions start..offset-1 held)."""

    def __init__(self, window: int, slack: int):
        self.window, self.slack = window, slack
        self.keep = window - 1 + slack  # what a solo window keeps between steps
        self.cap = self.keep + 1  # plus the step's new row
        self.ring: Optional[mx.array] = None  # (B, K, d)
        self.start: list[int] = []
        self.offset: list[int] = []

    def update(self, kv: mx.array) -> tuple[mx.array, mx.array]:
        """Write each row's new row kv (B, 1, d) at its own slot; returns (the ring (B, K, d), the position
        each slot holds (B, K), -1 where it holds none of the row's retained rows)."""
        _one_token(kv, len(self.offset))
        q = np.array(self.offset)[:, None]  # (B, 1) each row's new position; host ints: one array per step
        self.ring[mx.arange(kv.shape[0]), mx.array(q[:, 0] % self.cap)] = kv[:, 0]
        # slot c holds the latest position <= q that is congruent to c
        pos = q - (q - np.arange(self.cap)[None]) % self.cap
        pos = mx.array(np.where(pos >= np.array(self.start)[:, None], pos, -1).astype(np.int32))
        self.offset = [o + 1 for o in self.offset]
        self.start = [max(s, o - self.keep) for s, o in zip(self.start, self.offset)]
        return self.ring, pos

    def insert(self, solo: WindowState) -> None:
        n = solo.offset - solo.start
        if solo.rows is None or n > self.keep:
            raise CacheStateError(f"cache state v4.w.rows: a window of {n} rows cannot join a batch of "
                                  f"{self.keep}-row windows")
        row = mx.zeros((1, self.cap, solo.rows.shape[-1]), solo.rows.dtype)
        row[0, _slots(solo.start, n, self.cap)] = solo.rows[0]
        self.ring = _stack(self.ring, row)
        self.start.append(solo.start)
        self.offset.append(solo.offset)

    def keep_rows(self, keep: list[int]) -> None:
        self.ring = self.ring[mx.array(keep)] if keep else None
        self.start, self.offset = [self.start[i] for i in keep], [self.offset[i] for i in keep]

    def extract(self, row: int) -> WindowState:
        solo = WindowState(self.window, self.slack)
        solo.start, solo.offset = self.start[row], self.offset[row]
        n = solo.offset - solo.start
        solo.rows = self.ring[row: row + 1, _slots(solo.start, n, self.cap)] if n else None
        return solo

    def trim_row(self, row: int, n: int) -> None:
        self.offset[row] -= n  # the slots past it are stale; the mask never reads them

    def arrays(self) -> list[mx.array]:
        return [] if self.ring is None else [self.ring]


class BatchCompressor:
    """Every row's compressor (or indexer) state: raw rings and padded entries; start/offset/count per row
    as `CompressorState`'s. A decode step (`layers/v4/compressor.py`): `extend`, then for the rows whose
    window the step completes `due` -> `raw` -> pool -> `add`, then `settle`."""

    def __init__(self, ratio: int, overlap: bool, slack: int):
        self.ratio, self.overlap, self.slack = ratio, overlap, slack
        # A solo state keeps at most slack + (1 + overlap) * ratio - 1 raw rows between steps; +1 new row.
        self.cap = slack + (1 + overlap) * ratio + 1
        self.kv = self.gate = self.buf = None  # (B, R, C), (B, R, C), (B, Tcap, d)
        self.start: list[int] = []
        self.offset: list[int] = []
        self.count: list[int] = []

    def _grow(self, need: int) -> None:
        """Room for `need` entries per row (capacity grows in ENTRY_STEP steps, as a solo state's)."""
        have = self.buf.shape[1]
        if need > have:
            pad = mx.zeros((self.buf.shape[0], ENTRY_STEP * ((need - have) // ENTRY_STEP + 1), self.buf.shape[2]),
                           self.buf.dtype)
            self.buf = mx.concatenate([self.buf, pad], axis=1)

    def extend(self, kv: mx.array, gate: mx.array) -> None:
        """Write each row's new raw rows kv, gate (B, 1, C) at its own slot."""
        _one_token(kv, len(self.offset))
        rows, slot = mx.arange(kv.shape[0]), mx.array(np.array(self.offset) % self.cap)
        self.kv[rows, slot], self.gate[rows, slot] = kv[:, 0], gate[:, 0]
        self.offset = [o + 1 for o in self.offset]

    def due(self) -> list[tuple[mx.array, mx.array, bool]]:
        """Rows whose window this step completed, grouped by whether their entry also pools the previous
        window's Ca half (overlap and not the first entry): [(rows (E,), window starts (E,), has_prev)]."""
        groups: dict[bool, list[int]] = {}
        for b, (o, c) in enumerate(zip(self.offset, self.count)):
            if o // self.ratio > c:
                has_prev = self.overlap and c > 0
                if o // self.ratio > c + 1 or (c - has_prev) * self.ratio < self.start[b]:
                    raise CacheStateError(f"cache state v4.count: row {b} at {o} tokens holds {c} entries and raw "
                                          f"rows from {self.start[b]}; a batched step completes one window a row")
                groups.setdefault(has_prev, []).append(b)
        return [(mx.array(rows), mx.array([self.count[b] * self.ratio for b in rows]), prev)
                for prev, rows in groups.items()]

    def raw(self, rows: mx.array, at: mx.array, has_prev: bool) -> tuple[mx.array, mx.array]:
        """Raw rows (E, W*r, C) of the windows from position at - has_prev * r (W = 1 + has_prev)."""
        n = (1 + has_prev) * self.ratio
        slots = (at[:, None] - has_prev * self.ratio + mx.arange(n)[None]) % self.cap  # (E, n)
        return self.kv[rows[:, None], slots], self.gate[rows[:, None], slots]

    def add(self, rows: mx.array, new: mx.array) -> None:
        """Each row's new entry (E, 1, d) after its others."""
        idx = rows.tolist()
        self._grow(max(self.count[b] for b in idx) + 1)
        self.buf[rows, mx.array([self.count[b] for b in idx])] = new[:, 0].astype(self.buf.dtype)
        for b in idx:
            self.count[b] += 1

    def settle(self) -> mx.array:
        """Forget raw rows as `CompressorState.add_entries` does; returns the entries (B, T, d)."""
        r = self.ratio
        self.start = [max(s, max(0, ((o - self.slack) // r - self.overlap) * r))
                      for s, o in zip(self.start, self.offset)]
        return self.buf[:, : max(self.count)]

    def insert(self, solo: CompressorState) -> None:
        n = solo.offset - solo.start
        if solo.kv is None or n >= self.cap:
            raise CacheStateError(f"cache state v4.kv: {n} raw rows cannot join a batch that keeps {self.cap - 1}")
        C = solo.kv.shape[-1]
        d = C // (1 + self.overlap)
        kv, gate = (mx.zeros((1, self.cap, C), a.dtype) for a in (solo.kv, solo.gate))
        slots = _slots(solo.start, n, self.cap)
        kv[0, slots], gate[0, slots] = solo.kv[0], solo.gate[0]
        entries = solo.entries
        dtype = entries.dtype if entries is not None else solo.kv.dtype
        if self.buf is None:
            self.buf = mx.zeros((0, ENTRY_STEP, d), dtype)
        self._grow(solo.count)
        row = mx.zeros((1, self.buf.shape[1], d), self.buf.dtype)
        if solo.count:
            row[:, : solo.count] = entries
        self.kv, self.gate, self.buf = _stack(self.kv, kv), _stack(self.gate, gate), _stack(self.buf, row)
        self.start.append(solo.start)
        self.offset.append(solo.offset)
        self.count.append(solo.count)

    def keep_rows(self, keep: list[int]) -> None:
        idx = mx.array(keep)
        self.kv, self.gate, self.buf = ((a[idx] if keep else None) for a in (self.kv, self.gate, self.buf))
        self.start, self.offset, self.count = ([v[i] for i in keep] for v in (self.start, self.offset, self.count))

    def extract(self, row: int) -> CompressorState:
        solo = CompressorState(self.ratio, self.overlap, self.slack)
        solo.start, solo.offset, solo.count = self.start[row], self.offset[row], self.count[row]
        slots = _slots(solo.start, solo.offset - solo.start, self.cap)
        solo.kv, solo.gate = self.kv[row: row + 1, slots], self.gate[row: row + 1, slots]
        solo._buf = self.buf[row: row + 1, : solo.count]
        return solo

    def trim_row(self, row: int, n: int) -> None:
        self.offset[row] -= n
        self.count[row] = min(self.count[row], self.offset[row] // self.ratio)

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.kv, self.gate, self.buf) if a is not None]

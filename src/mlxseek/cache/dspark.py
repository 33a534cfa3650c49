"""The DSpark drafter's cache: per stage, a sliding ring of key/value rows built from the target model's
hidden states (`layers.v4.dspark`), one row per committed position, the last `ring_size` kept (plus
`trim_slack` rows so a prefix cut can roll it back). Rows are written only for committed positions
(prefill, and the accepted prefix of each verify), so a rejected draft never needs undoing here.
In step with a main cache at offset P when it holds rows for positions 0..P-1.

Shapes: B batch, S rows, d head_dim.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from .draft import DraftCache
from .protocol import Capabilities, CacheState, check_kind, cut, owned
from .v4 import DEFAULT_TRIM_SLACK


class DSparkCache(DraftCache):
    # The ring is settled at one main position (main_offset), so a state is only valid where it was taken.
    capabilities = Capabilities(cut=False, batch=False, quantize=False)

    def __init__(self, stages: int, ring_size: int, trim_slack: int = DEFAULT_TRIM_SLACK):
        super().__init__()
        self.stages, self.ring_size, self.trim_slack = stages, ring_size, trim_slack
        self.rows: list[Optional[mx.array]] = [None] * stages  # (B, S, d) per stage, positions start..offset-1
        self.start = self.offset = 0
        self.main_offset = -1  # the main offset this ring was settled at; -1: not in step

    def write(self, rows: list[mx.array]) -> None:
        """Append one (B, L, d) block per stage for the next L positions."""
        keep = self.ring_size + self.trim_slack
        L = rows[0].shape[1]
        full = [r if old is None else mx.concatenate([old, r], axis=1) for old, r in zip(self.rows, rows)]
        drop = max(0, full[0].shape[1] - keep)
        self.rows, self.start, self.offset = [f[:, drop:] for f in full], self.start + drop, self.offset + L

    def ring(self) -> list[mx.array]:
        """Per stage, the last `ring_size` rows (B, min(S, ring_size), d): what a draft block attends."""
        return [r[:, -self.ring_size:] for r in self.rows]

    def in_step_with(self, main_offset: int) -> bool:
        return self.offset == main_offset and self.offset > 0 and self.main_offset == main_offset

    def reset(self) -> None:
        self.rows, self.start, self.offset, self.main_offset = [None] * self.stages, 0, 0, -1

    @property
    def state(self) -> list[mx.array]:
        return [r for r in self.rows if r is not None]

    @property
    def kind(self) -> str:
        return f"dspark:{self.stages}"

    def snapshot(self) -> CacheState:
        arrays = {f"s{i}": owned(r) for i, r in enumerate(self.rows) if r is not None}
        meta = {"start": self.start, "main_offset": self.main_offset, "ring_size": self.ring_size}
        return CacheState(self.kind, self.offset, arrays, meta)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        self.rows = [owned(state.arrays[f"s{i}"]) if f"s{i}" in state.arrays else None for i in range(self.stages)]
        self.offset, self.start, self.main_offset = state.offset, state.meta["start"], state.meta["main_offset"]

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(n, self.offset - self.start)
        if n > 0:
            self.offset -= n
            self.rows = [r[:, : self.offset - self.start] for r in self.rows]
        self.main_offset = -1
        return n

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.state)

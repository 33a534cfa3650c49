"""A batched DeepSeek-V4 layer cache: B rows at their own positions, so a decode step runs one attention
pass for every row (`layers/v4/attention.py` reads `offset` as per-row positions (B,)).

Each part keeps every row in one buffer (`cache/v4_rings.py`): the window as a ring per row, the
compressor and indexer as raw rings per row plus their emitted entries padded to the longest row. What
differs between rows (ragged entry counts, open groups at different fill, windows shorter than the
ring) is per-row bookkeeping, and the masks turn it into "row b sees only its own entries": the window
mask from each slot's position, the compressed mask from each row's own complete count, and the
indexer's top-k taken per row under that mask. So a row's attention reads the values its solo run reads.
`cache.batch.RowBatchCache` (rows of solo caches, attended one by one) is the slow reference.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import _BaseCache

from ..errors import BatchingError
from .protocol import Capabilities, CacheState, CacheStateError, cut, pack_rows, trim_rows, unpack_rows
from .v4 import V4LayerCache
from .v4_rings import BatchCompressor, BatchWindow


class BatchV4Cache(_BaseCache):
    """One V4 layer's caches for B rows (window, and compressor / indexer where the layer has them)."""

    shared_forward = True  # every row goes through one forward per step
    kind = "batch_v4"
    row_kind = "v4"  # the solo cache kind whose rows this batch holds
    capabilities = Capabilities(cut=False, batch=True, quantize=False)

    def __init__(self, window: int, ratio: int, overlap: bool, indexer: bool, trim_slack: int):
        self.shape = (window, ratio, overlap, indexer, trim_slack)  # what a row's solo cache is built with
        self.window = BatchWindow(window, trim_slack)
        self.compressor = BatchCompressor(ratio, overlap, trim_slack) if ratio else None
        self.indexer = BatchCompressor(ratio, overlap, trim_slack) if indexer else None

    @staticmethod
    def shape_of(solo: V4LayerCache) -> tuple:
        """(window, ratio, overlap, indexer, trim slack) of a solo layer cache: what its rows' buffers need."""
        comp = solo.compressor
        return (solo.window.window, comp.ratio if comp else 0, comp.overlap if comp else False,
                solo.indexer is not None, solo.trim_slack)

    @classmethod
    def like(cls, solo: V4LayerCache) -> "BatchV4Cache":
        """An empty batch for rows of `solo`'s layer."""
        return cls(*cls.shape_of(solo))

    def _parts(self) -> list:
        return [p for p in (self.window, self.compressor, self.indexer) if p is not None]

    @property
    def batch_size(self) -> int:
        return len(self.window.offset)

    @property
    def offset(self) -> mx.array:
        """Per-row positions (B,) of the next token: what the layer's RoPE and masks take."""
        return mx.array(self.window.offset, dtype=mx.int32)

    def accepts(self, solo) -> bool:
        return getattr(solo, "kind", None) == self.row_kind and self.shape_of(solo) == self.shape

    def insert(self, solo: V4LayerCache) -> int:
        """Copy a solo V4 layer cache in as a new last row; returns its row index."""
        if not self.accepts(solo):
            raise BatchingError(f"cache kind: a {getattr(solo, 'kind', type(solo).__name__)!r} row of another "
                                f"layer shape cannot join a batch of {self.row_kind!r} rows shaped {self.shape}")
        self.window.insert(solo.window)
        for mine, theirs in ((self.compressor, solo.compressor), (self.indexer, solo.indexer)):
            if mine is not None:
                mine.insert(theirs)
        return self.batch_size - 1

    def remove(self, rows: list[int]) -> None:
        """Drop rows; the others keep their order."""
        gone = set(rows)
        keep = [i for i in range(self.batch_size) if i not in gone]
        for p in self._parts():
            p.keep_rows(keep)

    def extract(self, row: int) -> V4LayerCache:
        """A solo V4LayerCache holding a copy of `row`'s state: the one its own run would hold."""
        solo = V4LayerCache(*self.shape)
        solo.window = self.window.extract(row)
        if self.compressor is not None:
            solo.compressor = self.compressor.extract(row)
        if self.indexer is not None:
            solo.indexer = self.indexer.extract(row)
        return solo

    def trim_row(self, row: int, n: int) -> int:
        """Roll one row back by up to its trim slack; returns how many tokens."""
        n = min(n, self.window.offset[row], self.shape[-1])
        for p in self._parts():
            p.trim_row(row, n)
        return n

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        return trim_rows(self, n)

    def size(self) -> int:
        return max(self.window.offset, default=0)

    def empty(self) -> bool:
        return self.batch_size == 0

    @property
    def state(self) -> list[mx.array]:
        return [a for p in self._parts() for a in p.arrays()]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)

    def snapshot(self) -> CacheState:
        """Every row's solo snapshot (valid only where taken, as a solo V4 state)."""
        return pack_rows(self.kind, [self.extract(i).snapshot() for i in range(self.batch_size)])

    def restore(self, state: CacheState) -> None:
        if state.kind != self.kind:
            raise CacheStateError(f"cache state kind: {state.kind!r} cannot be restored into a {self.kind!r} cache")
        self.remove(list(range(self.batch_size)))
        for st in unpack_rows(state, self.row_kind):
            row = V4LayerCache(*self.shape)
            row.restore(st)
            self.insert(row)

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

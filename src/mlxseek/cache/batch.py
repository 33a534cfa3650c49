"""Batched caches: how rows of one model's solo caches decode together.

Kinds whose rows share one buffer (plain MLA latents, DSA's latent + indexer keys) batch as ragged rows in
`cache.ragged`, V4's window rings and compressor states in `cache.v4_batch`, each with one forward and
one attention pass per step; the others (a quantized latent, V4.1) as `RowBatchCache`, a list of solo
caches: one forward per step where the family's attention reads the rows' caches itself (V4's reference
path: `attends_row_caches`), else one forward per row.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import _BaseCache

from .protocol import Capabilities, CacheState, CacheStateError, capabilities_of, cut, pack_rows, unpack_rows
from .ragged import BatchDSACache, BatchLatentCache
from .v4_batch import BatchV4Cache

__all__ = ["BatchDSACache", "BatchLatentCache", "BatchV4Cache", "RowBatchCache", "make_batch_cache"]

# The shared-buffer batch cache for each solo kind whose rows can merge (`capabilities.batch`).
FUSED = {c.row_kind: c for c in (BatchLatentCache, BatchDSACache, BatchV4Cache)}


class RowBatchCache(_BaseCache):
    """One layer's caches for B sequences kept as B solo caches, for kinds whose rows cannot share one
    buffer (the protocol's `capabilities.batch` is False: V4's window rings and compressor groups, a
    quantized latent). Each row's attention runs over its own cache, inside one shared forward (V4) or in a
    forward of its own (`shared_forward` False), so each row's state and numerics are exactly its solo
    run's; rows join and leave as with `BatchLatentCache`, without a copy (a row's cache object moves)."""

    shared_forward = False
    kind = "rows"
    capabilities = Capabilities(cut=False, batch=True, quantize=False)
    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def __init__(self, make_row=None, *, shared_forward: bool = False):
        self.rows: list = []
        self.make_row = make_row  # an empty solo cache of this layer's kind (for `restore`)
        # True where the model's attention loops over `row_caches` itself (V4): then the rest of the
        # forward (projections, MoE, mHC, head) runs once for every row, and each row's attention over its
        # own window, compressor and indexer state is its solo computation.
        self.shared_forward = shared_forward

    @property
    def row_caches(self) -> list:
        """The rows' solo caches, in row order (what a row-by-row attention layer reads)."""
        return self.rows

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def offset(self) -> mx.array:
        return mx.array([c.offset for c in self.rows], dtype=mx.int32)

    def accepts(self, solo) -> bool:
        return True  # each row keeps its own cache, of any kind the model's forward reads

    def insert(self, solo) -> int:
        self.rows.append(solo)
        return self.batch_size - 1

    def remove(self, rows: list[int]) -> None:
        gone = set(rows)
        self.rows = [c for i, c in enumerate(self.rows) if i not in gone]

    def extract(self, row: int):
        """The row's own solo cache (not a copy: the caller removes the row next or keeps it read-only)."""
        return self.rows[row]

    def trim_row(self, row: int, n: int) -> int:
        return self.rows[row].trim(n)

    def is_trimmable(self) -> bool:
        return all(c.is_trimmable() for c in self.rows)

    def trim(self, n: int) -> int:
        return min((c.trim(n) for c in self.rows), default=0)

    def size(self) -> int:
        return max((c.offset for c in self.rows), default=0)

    def empty(self) -> bool:
        return not self.rows

    @property
    def state(self):
        return [c.state for c in self.rows]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.rows)

    def snapshot(self) -> CacheState:
        return pack_rows(self.kind, [c.snapshot() for c in self.rows])

    def restore(self, state: CacheState) -> None:
        if state.kind != self.kind or self.make_row is None:
            raise CacheStateError(f"cache state kind: {state.kind!r} cannot be restored into this {self.kind!r} "
                                  "cache (it needs make_row and a 'rows' state)")
        self.rows = []
        for st in unpack_rows(state, self.make_row().kind):
            row = self.make_row()
            row.restore(st)
            self.rows.append(row)


def make_batch_cache(model, probe: list | None = None) -> list:
    """One batched cache per layer for rows with caches like `probe` (default: the model's own): the
    shared-buffer cache of their kind where the protocol says the kind batches (MLA latents, DSA, V4),
    else a `RowBatchCache` of solo caches (a quantized latent, V4.1). A model whose `fuse_batch_rows` is
    False gets rows of solo caches for every kind: the slow reference the fused caches are tested against."""
    probe = model.make_cache() if probe is None else probe
    kinds = {getattr(c, "kind", None) for c in probe}
    fuse = getattr(model, "fuse_batch_rows", True)
    if fuse and capabilities_of(probe).batch and len(kinds) == 1 and next(iter(kinds)) in FUSED:
        return [FUSED[next(iter(kinds))].like(c) for c in probe]
    # A quantized latent is read by MLA, which takes one cache per forward: one forward per row there.
    shared = bool(getattr(model, "attends_row_caches", False))
    return [RowBatchCache(make_row=lambda i=i: model.make_cache()[i], shared_forward=shared)
            for i in range(len(probe))]

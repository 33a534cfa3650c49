"""Batched latent cache: several sequences' MLA latents in one buffer, one row per sequence.

Shapes: B rows, L new tokens per row, C capacity (columns), R kv_lora_rank, Dr qk_rope_head_dim.
  latent (B, 1, C, R), rope key (B, 1, C, Dr), lengths: tokens held per row.

Ragged rows (right padding), not left padding (mlx-lm's BatchKVCache pads on the left):
- row b holds its tokens at columns 0..lengths[b]-1, exactly where its own single-row cache holds them,
  so a joining sequence is its own solo prefill (prefix cache, chunking, numerics unchanged) copied in,
  and no other row moves when it joins (left padding re-pads every row when a longer one arrives);
- the RoPE position of a row's next token is its length; there is no padding to subtract;
- rolling one row back (speculative rejection, a stop) lowers its length only; columns past a row's
  length are stale and the mask (`layers.masks.batch_causal_mask`) never lets a query see them.
The price: a step writes each row at its own column (a scatter instead of a slice update), B*(R+Dr)
values per layer, and attention reads max(lengths) columns for every row (as left padding does).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import _BaseCache

from ..errors import BatchingError
from .mla import LatentCache
from .protocol import Capabilities, CacheState, CacheStateError, cut, capabilities_of, owned

STEP = 256  # capacity grows in whole steps, as mlx-lm's KVCache does


class BatchLatentCache(_BaseCache):
    """One layer's latent cache for B sequences of different lengths (ragged rows, see the module doc)."""

    shared_forward = True  # every row goes through one forward per step
    kind = "batch_latent"
    # Already a batch: rows join with `insert` and leave with `extract`/`remove`; a state holds every row.
    capabilities = Capabilities(cut=False, batch=True, quantize=False)

    def __init__(self):
        self.latent: Optional[mx.array] = None  # (B, 1, C, R)
        self.rope: Optional[mx.array] = None  # (B, 1, C, Dr)
        self.lengths: list[int] = []

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def offset(self) -> mx.array:
        """Per-row positions (B,) of the next token: what RoPE takes as its offset."""
        return mx.array(self.lengths, dtype=mx.int32)

    @property
    def width(self) -> int:
        """Columns a query attends over before this step's tokens: the longest row."""
        return max(self.lengths, default=0)

    def _capacity(self) -> int:
        return 0 if self.latent is None else self.latent.shape[2]

    def _grow(self, need: int) -> None:
        cap = self._capacity()
        if need <= cap:
            return
        new = (need + STEP - 1) // STEP * STEP
        B = self.batch_size
        pad = [mx.zeros((B, 1, new - cap, a.shape[-1]), a.dtype) for a in (self.latent, self.rope)]
        self.latent = mx.concatenate([self.latent, pad[0]], axis=2)
        self.rope = mx.concatenate([self.rope, pad[1]], axis=2)

    def update_and_fetch(self, latent: mx.array, k_pe: mx.array) -> tuple[mx.array, mx.array]:
        """Append L tokens to every row: latent (B, 1, L, R), k_pe (B, 1, L, Dr) -> all columns any row
        uses, (B, 1, S, R) and (B, 1, S, Dr) with S = longest row after the append."""
        B, _, L, _ = latent.shape
        if B != self.batch_size:
            raise BatchingError(f"batched step has {B} rows but the batch cache holds {self.batch_size}")
        self._grow(self.width + L)
        rows = mx.arange(B)[:, None]
        cols = self.offset[:, None] + mx.arange(L)[None]  # (B, L): each row writes at its own length
        self.latent[rows, 0, cols] = latent[:, 0]
        self.rope[rows, 0, cols] = k_pe[:, 0]
        self.lengths = [n + L for n in self.lengths]
        S = self.width
        return self.latent[..., :S, :], self.rope[..., :S, :]

    def insert(self, solo: LatentCache) -> int:
        """Copy a single-row latent cache in as a new last row; returns its row index."""
        n = solo.offset
        latent, rope = solo.keys[..., :n, :], solo.values[..., :n, :]  # (1, 1, n, R), (1, 1, n, Dr)
        if self.latent is None:
            cap = (n + STEP - 1) // STEP * STEP or STEP
            self.latent = mx.zeros((0, 1, cap, latent.shape[-1]), latent.dtype)
            self.rope = mx.zeros((0, 1, cap, rope.shape[-1]), rope.dtype)
        self._grow(n)
        cap = self._capacity()
        fill = [mx.pad(a, [(0, 0), (0, 0), (0, cap - n), (0, 0)]) for a in (latent, rope)]
        self.latent = mx.concatenate([self.latent, fill[0].astype(self.latent.dtype)], axis=0)
        self.rope = mx.concatenate([self.rope, fill[1].astype(self.rope.dtype)], axis=0)
        self.lengths.append(n)
        return self.batch_size - 1

    def remove(self, rows: list[int]) -> None:
        """Drop rows; the others keep their order (row indices above a removed one shift down)."""
        gone = set(rows)
        keep = [i for i in range(self.batch_size) if i not in gone]
        if not keep:
            self.latent = self.rope = None
        else:
            idx = mx.array(keep)
            self.latent, self.rope = self.latent[idx], self.rope[idx]
        self.lengths = [self.lengths[i] for i in keep]

    def extract(self, row: int) -> LatentCache:
        """A single-row LatentCache holding a copy of `row`'s tokens (to decode it alone again)."""
        n = self.lengths[row]
        solo = LatentCache()
        solo.state = (self.latent[row : row + 1, :, :n, :], self.rope[row : row + 1, :, :n, :], n)
        return solo

    def trim_row(self, row: int, n: int) -> int:
        """Roll one row back by n tokens (its columns stay and are masked); returns how many."""
        n = min(self.lengths[row], n)
        self.lengths[row] -= n
        return n

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Roll every row back by n tokens (mlx-lm's protocol); returns the least any row gave back."""
        return min((self.trim_row(r, n) for r in range(self.batch_size)), default=0)

    def size(self) -> int:
        return self.width

    def empty(self) -> bool:
        return self.latent is None

    @property
    def state(self):
        return [] if self.latent is None else [self.latent, self.rope]

    def snapshot(self) -> CacheState:
        if self.latent is None:
            return CacheState(self.kind, 0, {})
        S = self.width
        arrays = {"latent": owned(self.latent[..., :S, :]), "rope": owned(self.rope[..., :S, :]),
                  "lengths": mx.array(self.lengths, dtype=mx.int32)}
        return CacheState(self.kind, S, arrays)

    def restore(self, state: CacheState) -> None:
        if state.kind != self.kind:
            raise CacheStateError(f"cache state kind: {state.kind!r} cannot be restored into a {self.kind!r} cache")
        if not state.arrays:
            self.latent, self.rope, self.lengths = None, None, []
            return
        self.latent, self.rope = owned(state.arrays["latent"]), owned(state.arrays["rope"])
        self.lengths = state.arrays["lengths"].tolist()

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    @property
    def nbytes(self) -> int:
        return 0 if self.latent is None else self.latent.nbytes + self.rope.nbytes


class RowBatchCache(_BaseCache):
    """One layer's caches for B sequences kept as B solo caches, for kinds whose rows cannot share one
    buffer (the protocol's `capabilities.batch` is False: DSA's per-row indexer keys and top-k, V4's
    window rings and compressor groups, a quantized latent). A step runs each row's forward over its own
    cache (`shared_forward` False), so each row's state and numerics are exactly its solo run's; rows join
    and leave as with `BatchLatentCache`, without a copy (a row's cache object moves in and out)."""

    shared_forward = False
    kind = "rows"
    capabilities = Capabilities(cut=False, batch=True, quantize=False)
    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def __init__(self, make_row=None):
        self.rows: list = []
        self.make_row = make_row  # an empty solo cache of this layer's kind (for `restore`)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def offset(self) -> mx.array:
        return mx.array([c.offset for c in self.rows], dtype=mx.int32)

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
        arrays, meta = {}, {"rows": self.batch_size}
        for i, c in enumerate(self.rows):
            st = c.snapshot()
            arrays.update({f"r{i}.{k}": a for k, a in st.arrays.items()})
            axis = -1 if st.token_axis is None else st.token_axis
            meta.update({f"r{i}.{k}": v for k, v in st.meta.items()} | {f"r{i}.offset": st.offset, f"r{i}.axis": axis})
        return CacheState(self.kind, self.size(), arrays, meta)

    def restore(self, state: CacheState) -> None:
        if state.kind != self.kind or self.make_row is None:
            raise CacheStateError(f"cache state kind: {state.kind!r} cannot be restored into this {self.kind!r} "
                                  "cache (it needs make_row and a 'rows' state)")
        self.rows = []
        for i in range(state.meta["rows"]):
            row, p = self.make_row(), f"r{i}."
            own = {p + "offset", p + "axis"}
            axis = state.meta[p + "axis"]
            row.restore(CacheState(row.kind, state.meta[p + "offset"],
                                   {k[len(p):]: a for k, a in state.arrays.items() if k.startswith(p)},
                                   {k[len(p):]: v for k, v in state.meta.items() if k.startswith(p) and k not in own},
                                   None if axis < 0 else axis))
            self.rows.append(row)


def make_batch_cache(model, probe: list | None = None) -> list:
    """One batched cache per layer for rows with caches like `probe` (default: the model's own): a
    shared-buffer `BatchLatentCache` where the protocol says the kind batches (plain MLA latents), else a
    `RowBatchCache` of solo caches (DSA, V4, a quantized latent)."""
    probe = model.make_cache() if probe is None else probe
    if capabilities_of(probe).batch:
        return [BatchLatentCache() for _ in probe]
    return [RowBatchCache(make_row=lambda i=i: model.make_cache()[i]) for i in range(len(probe))]

"""Batched latent caches: several sequences' MLA latents (and, for V3.2's DSA, indexer keys) in one
buffer, one row per sequence, so every row goes through one forward per step.

Shapes: B rows, L new tokens per row, C capacity (columns), R kv_lora_rank, Dr qk_rope_head_dim.
  latent (B, 1, C, R), rope key (B, 1, C, Dr), indexer keys (B, 1, C, Di) for DSA, lengths: tokens held per row.

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
from .mla import DSACache, LatentCache
from .protocol import Capabilities, CacheState, CacheStateError, cut, owned, trim_rows

STEP = 256  # capacity grows in whole steps, as mlx-lm's KVCache does


class BatchLatentCache(_BaseCache):
    """One layer's latent cache for B sequences of different lengths (ragged rows, see the module doc)."""

    shared_forward = True  # every row goes through one forward per step
    kind = "batch_latent"
    row_kind = "latent"  # the solo cache kind whose rows this batch holds
    # Already a batch: rows join with `insert` and leave with `extract`/`remove`; a state holds every row.
    capabilities = Capabilities(cut=False, batch=True, quantize=False)

    def __init__(self):
        self.latent: Optional[mx.array] = None  # (B, 1, C, R)
        self.rope: Optional[mx.array] = None  # (B, 1, C, Dr)
        self.lengths: list[int] = []

    @classmethod
    def like(cls, solo) -> "BatchLatentCache":
        """An empty batch for rows like `solo` (every latent layer's rows batch alike)."""
        return cls()

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

    def accepts(self, solo) -> bool:
        """Whether a solo cache of `solo`'s kind can join this batch."""
        return getattr(solo, "kind", None) == self.row_kind

    def insert(self, solo: LatentCache) -> int:
        """Copy a single-row latent cache in as a new last row; returns its row index."""
        if not self.accepts(solo):
            raise BatchingError(f"cache kind: a {getattr(solo, 'kind', type(solo).__name__)!r} row cannot join "
                                f"a batch of {self.row_kind!r} rows")
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
        return trim_rows(self, n)

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


class BatchDSACache(BatchLatentCache):
    """One V3.2 (DSA) layer's cache for B ragged rows: the batched latent plus each row's indexer keys at
    the same columns. Every row's top-k is taken over its own keys only: the batch mask (-inf scores
    past a row's length) keeps other rows' columns and stale ones out of the selection and the attention."""

    kind = "batch_dsa"
    row_kind = "dsa"

    def __init__(self):
        super().__init__()
        self.index: Optional[mx.array] = None  # (B, 1, C, Di)

    def _grow(self, need: int) -> None:
        cap = self._capacity()
        super()._grow(need)
        new = self._capacity()
        if self.index is not None and new > cap:
            pad = mx.zeros((self.batch_size, 1, new - cap, self.index.shape[-1]), self.index.dtype)
            self.index = mx.concatenate([self.index, pad], axis=2)

    def update_index_keys(self, keys: mx.array) -> mx.array:
        """Write the L new tokens' indexer keys (B, 1, L, Di) of every row (after `update_and_fetch` moved
        the lengths past them); returns (B, 1, S, Di), S the longest row."""
        L = keys.shape[2]
        rows = mx.arange(self.batch_size)[:, None]
        cols = self.offset[:, None] - L + mx.arange(L)[None]  # (B, L): the columns the latent just took
        self.index[rows, 0, cols] = keys[:, 0]
        return self.index[..., : self.width, :]

    def insert(self, solo: DSACache) -> int:
        row = super().insert(solo)  # checks the kind, grows the latent (and any existing index rows)
        n, cap = solo.offset, self._capacity()
        keys = solo.index.keys[..., :n, :]  # (1, 1, n, Di)
        if self.index is None:
            self.index = mx.zeros((0, 1, cap, keys.shape[-1]), keys.dtype)
        fill = mx.pad(keys, [(0, 0), (0, 0), (0, cap - n), (0, 0)]).astype(self.index.dtype)
        self.index = mx.concatenate([self.index, fill], axis=0)
        return row

    def remove(self, rows: list[int]) -> None:
        gone = set(rows)
        keep = [i for i in range(self.batch_size) if i not in gone]
        super().remove(rows)
        self.index = self.index[mx.array(keep)] if keep else None

    def extract(self, row: int) -> DSACache:
        """A single-row DSACache holding a copy of `row`'s tokens and indexer keys."""
        n, r = self.lengths[row], slice(row, row + 1)
        solo = DSACache()
        solo.state = (self.latent[r, :, :n, :], self.rope[r, :, :n, :], n, self.index[r, :, :n, :])
        return solo

    @property
    def state(self):
        return [] if self.latent is None else [self.latent, self.rope, self.index]

    def snapshot(self) -> CacheState:
        st = super().snapshot()
        if self.latent is not None:
            st.arrays["index"] = owned(self.index[..., : self.width, :])
        return st

    def restore(self, state: CacheState) -> None:
        super().restore(state)
        self.index = owned(state.arrays["index"]) if state.arrays else None

    @property
    def nbytes(self) -> int:
        return super().nbytes + (0 if self.index is None else self.index.nbytes)

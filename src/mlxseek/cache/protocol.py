"""The cache protocol every cache class in `cache/` implements, so the server and batching never ask
which class a cache is.

  capabilities       what the kind can do (a class attribute: `Capabilities`)
  snapshot()         a `CacheState` owning copies of everything the cache holds now
  restore(state)     load a state into a fresh cache (fresh copies: the state is never written later)
  cut_state(state,n) the state of the first n tokens, or CacheStateError where the kind cannot cut there
                     (every class's is `cut`: a state says itself whether it can be cut, by its token axis)

Append-only kinds (MLA latent, quantized latent, DSA indexer keys) cut anywhere: every array keeps its
tokens on one axis. V4's sliding window and compressor partial group are not append-only, so a V4 state
is only valid at the position it was taken (`cut_state` accepts only that position); the server takes
such snapshots at snapshot points while prefill passes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from ..errors import GenerationError


class CacheStateError(GenerationError):
    """A cache state cannot be cut or restored as asked (names the kind and the field at fault)."""


@dataclass(frozen=True)
class Capabilities:
    """What one cache kind can do; the server reports these instead of testing classes."""

    cut: bool  # a snapshot can be cut to any shorter prefix (else: only restored where it was taken)
    batch: bool  # rows can be merged into a batched cache (`cache.batch.make_batch_cache`)
    quantize: bool  # `to_quantized` exists for this kind

    def as_dict(self) -> dict:
        return {"cut": self.cut, "batch": self.batch, "quantize": self.quantize}


@dataclass
class CacheState:
    """One cache's content: kind, tokens held, arrays by name, integer settings (positions, bits), and
    the axis every array keeps its tokens on (None: the state is valid only at `offset`)."""

    kind: str
    offset: int
    arrays: dict[str, mx.array]
    meta: dict[str, int] = field(default_factory=dict)
    token_axis: int | None = None
    append_axis: dict[str, int] = field(default_factory=dict)  # arrays that only grow, and along which axis

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def owned(a: mx.array) -> mx.array:
    """A copy in a new buffer: it owns its values and frees the donor's unused capacity."""
    return mx.array(a)


def check_kind(state: CacheState, kind: str) -> None:
    if state.kind != kind:
        raise CacheStateError(f"cache state kind: {state.kind!r} cannot be restored into a {kind!r} cache")


def cut(state: CacheState, n: int) -> CacheState:
    """The first n tokens of a state (slices; the state is never written). Only an append-only state
    (one with a token axis) cuts below its offset."""
    if n == state.offset:
        return state
    if state.token_axis is None:
        raise CacheStateError(f"cache state {state.kind}: taken at {state.offset} tokens, cannot be cut to {n} "
                              "(its state is not append-only: restore it only where it was taken)")
    if not 0 <= n <= state.offset:
        raise CacheStateError(f"cache state offset: cannot cut {state.offset} tokens to {n}")
    ax = (slice(None),) * state.token_axis
    arrays = {k: a[ax + (slice(0, n),)] for k, a in state.arrays.items()} if n else {}
    return CacheState(state.kind, n, arrays, dict(state.meta), state.token_axis)


def pack_rows(kind: str, rows: list[CacheState]) -> CacheState:
    """One state holding a batch's rows' solo states (arrays and settings prefixed by row)."""
    arrays, meta = {}, {"rows": len(rows)}
    for i, st in enumerate(rows):
        arrays.update({f"r{i}.{k}": a for k, a in st.arrays.items()})
        axis = -1 if st.token_axis is None else st.token_axis
        meta.update({f"r{i}.{k}": v for k, v in st.meta.items()} | {f"r{i}.offset": st.offset, f"r{i}.axis": axis})
    return CacheState(kind, max((st.offset for st in rows), default=0), arrays, meta)


def unpack_rows(state: CacheState, row_kind: str) -> list[CacheState]:
    """The rows' solo states out of a `pack_rows` state."""
    rows = []
    for i in range(state.meta["rows"]):
        p = f"r{i}."
        own = {p + "offset", p + "axis"}
        axis = state.meta[p + "axis"]
        rows.append(CacheState(row_kind, state.meta[p + "offset"],
                               {k[len(p):]: a for k, a in state.arrays.items() if k.startswith(p)},
                               {k[len(p):]: v for k, v in state.meta.items() if k.startswith(p) and k not in own},
                               None if axis < 0 else axis))
    return rows


PROTOCOL = ("kind", "capabilities", "snapshot", "restore", "cut_state", "trim", "is_trimmable", "nbytes")  # and `offset`


def implements(cls: type) -> list[str]:
    """The protocol members `cls` lacks (empty when it implements the protocol)."""
    missing = [m for m in PROTOCOL if not hasattr(cls, m)]
    if not missing and not isinstance(getattr(cls, "capabilities"), Capabilities):
        missing.append("capabilities (a Capabilities)")
    return missing


def trim_rows(cache, n: int) -> int:
    """mlx-lm's `trim` for a batch of independent rows (`cache.batch_size`, `cache.trim_row(row, n)`): every
    row rolls back by up to n; the answer is the least any row gave back."""
    return min((cache.trim_row(r, n) for r in range(cache.batch_size)), default=0)


NOTHING = Capabilities(cut=False, batch=False, quantize=False)  # a cache outside this protocol


def capabilities_of(cache: list) -> Capabilities:
    """What a whole prompt cache can do: each capability only where every entry has it."""
    caps = [getattr(type(c), "capabilities", NOTHING) for c in cache]
    return Capabilities(cut=all(c.cut for c in caps), batch=all(c.batch for c in caps),
                        quantize=all(c.quantize for c in caps))

"""Snapshots of a prompt cache: the one module of the server that reads cache internals.

A prompt cache is the list `mlxseek.make_prompt_cache(model)` returns: one entry per decoder layer, then
(for a model with MTP) the MTP module's `MTPCache`. The per-layer entries are snapshotted; the MTP entry
is not: a restored cache is cut to a block boundary, where the MTP state is out of step anyway, and
speculative decoding then restarts the MTP cache (drafting stays exact; it only lacks older context). mlx-lm style
caches write new tokens into preallocated buffers in place (`keys[..., a:b, :] = new`), so a snapshot
owns copies of exactly its tokens and a restore hands the new cache fresh copies: neither the donor nor
a stored snapshot is ever written by a later request.

Every cached array of the supported classes keeps the token axis at 2 ((B, 1, S, X): latent, rotary
key, quantized latent with its scales and biases, DSA indexer keys), so cutting a snapshot to a shorter
prefix is one slice per array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from ..cache.mla import DSACache, LatentCache, QuantizedLatentCache
from ..cache.draft import DraftCache

TOKEN_AXIS = 2


@dataclass
class EntryState:
    """One cache entry's tokens: its kind, token count and arrays (token axis 2), plus scalar settings."""

    kind: str
    offset: int
    arrays: dict[str, mx.array]
    settings: dict[str, int] = field(default_factory=dict)


@dataclass
class CacheSnapshot:
    """Every entry of a prompt cache; `tokens` is the first entry's token count (the main model's)."""

    entries: list[EntryState]

    @property
    def tokens(self) -> int:
        return self.entries[0].offset if self.entries else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for e in self.entries for a in e.arrays.values())

    def arrays(self) -> list[mx.array]:
        return [a for e in self.entries for a in e.arrays.values()]


def _copy(a: mx.array, n: int) -> mx.array:
    # mx.array(...) allocates a new buffer: the copy owns its tokens and frees the donor's capacity.
    return mx.array(a[:, :, :n])


def _kinds() -> dict[type, str]:
    return {KVCache: "kv", LatentCache: "latent", DSACache: "dsa", QuantizedLatentCache: "qlatent"}


def unsupported_reason(model) -> str | None:
    """Why this model's prompt cache cannot be snapshotted (None when it can)."""
    kinds = _kinds()
    for i, c in enumerate(model.make_cache()):
        if type(c) not in kinds:
            name = type(c).__name__
            if name == "V4LayerCache":
                return (f"cache entry {i} is a V4LayerCache: its sliding window and compressor states cannot be "
                        "restored from a saved state, and `trim` undoes at most trim_slack tokens, so they cannot "
                        "be cut to a block boundary; prefix caching is off for this model (every request prefills)")
            return f"cache entry {i} is a {name}, which the prefix cache cannot snapshot; prefix caching is off"
    return None


def _entry_arrays(c, kind: str, n: int) -> dict[str, mx.array]:
    if kind == "qlatent":
        if c.latent is None or n == 0:
            return {}
        out = {f"latent{j}": _copy(a, n) for j, a in enumerate(c.latent)}
        out["rope"] = _copy(c.rope.keys, n)
        return out
    if c.keys is None or n == 0:
        return {}
    out = {"keys": _copy(c.keys, n), "values": _copy(c.values, n)}
    if kind == "dsa":
        out["index"] = _copy(c.index.keys, n)
    return out


def snapshot(cache: list, tokens: int) -> CacheSnapshot:
    """Copies of the first `tokens` tokens of `cache` (the main entries' count). Entries that hold a
    different count (the MTP cache trails the main one) drop as many tokens as the main entries do."""
    kinds = _kinds()
    drop = cache[0].offset - tokens
    entries = []
    for c in cache:
        if isinstance(c, DraftCache):
            continue
        kind = kinds[type(c)]
        n = max(0, c.offset - drop)
        settings = {"group_size": c.group_size, "bits": c.bits} if kind == "qlatent" else {}
        entries.append(EntryState(kind, n, _entry_arrays(c, kind, n), settings))
    snap = CacheSnapshot(entries)
    mx.eval(snap.arrays())
    return snap


def cut(snap: CacheSnapshot, tokens: int) -> CacheSnapshot:
    """The first `tokens` main tokens of a stored snapshot (slices: the stored arrays are never written)."""
    drop = snap.tokens - tokens
    entries = []
    for e in snap.entries:
        n = max(0, e.offset - drop)
        arrays = {k: a[:, :, :n] for k, a in e.arrays.items()} if n else {}
        entries.append(EntryState(e.kind, n, arrays, dict(e.settings)))
    return CacheSnapshot(entries)


def restore(model, snap: CacheSnapshot) -> list | None:
    """A new prompt cache holding the snapshot's tokens (fresh copies), or None when the snapshot does not
    fit this model's cache layout (entry count or classes differ)."""
    cache = model.make_cache()
    kinds = _kinds()
    if len(cache) != len(snap.entries):
        return None
    for c, e in zip(cache, snap.entries):
        if kinds.get(type(c)) != e.kind:
            return None
        if not e.arrays:
            continue
        a = {k: _copy(v, e.offset) for k, v in e.arrays.items()}
        if e.kind == "qlatent":
            c.state = ([a["latent0"], a["latent1"], a["latent2"]], a["rope"], e.offset,
                       e.settings["group_size"], e.settings["bits"])
        elif e.kind == "dsa":
            c.state = (a["keys"], a["values"], e.offset, a["index"])
        else:
            c.state = (a["keys"], a["values"], e.offset)
    mx.eval([x for c in cache for x in _live_arrays(c)])
    return cache


def _live_arrays(c) -> list[mx.array]:
    if isinstance(c, QuantizedLatentCache):
        return [] if c.latent is None else [*c.latent, c.rope.keys]
    out = [] if c.keys is None else [c.keys, c.values]
    if isinstance(c, DSACache) and c.index.keys is not None:
        out.append(c.index.keys)
    return out


def layout(snap: CacheSnapshot) -> list[dict]:
    """JSON-able description of the entries (kind, offset, settings, array names) for the disk tier."""
    return [{"kind": e.kind, "offset": e.offset, "settings": e.settings, "arrays": sorted(e.arrays)}
            for e in snap.entries]


def flatten(snap: CacheSnapshot) -> dict[str, mx.array]:
    return {f"{i}.{k}": a for i, e in enumerate(snap.entries) for k, a in e.arrays.items()}


def unflatten(arrays: dict[str, mx.array], entries: list[dict]) -> CacheSnapshot | None:
    """Rebuild a snapshot from `flatten`'s arrays and `layout`'s description; None when they disagree."""
    out = []
    for i, d in enumerate(entries):
        names = list(d["arrays"])
        if any(f"{i}.{k}" not in arrays for k in names):
            return None
        got = {k: arrays[f"{i}.{k}"] for k in names}
        if any(a.ndim != 4 or a.shape[TOKEN_AXIS] != d["offset"] for a in got.values()):
            return None
        out.append(EntryState(d["kind"], int(d["offset"]), got, {k: int(v) for k, v in d["settings"].items()}))
    if sum(len(d["arrays"]) for d in entries) != len(arrays):
        return None
    return CacheSnapshot(out)


def tokens_held(cache: list) -> int:
    """Tokens in the main entries of a live prompt cache."""
    return cache[0].offset if cache else 0

"""Snapshots of a prompt cache, through the cache protocol only (`mlxseek.cache.protocol`).

A prompt cache is the list `make_prompt_cache(model)` returns: one entry per decoder layer, then (for a
model with MTP) the MTP module's cache. A snapshot holds one `CacheState` per entry it could take: the
entries are a leading run of the prompt cache, and an entry that cannot be cut to its share of the
requested tokens ends the run (the MTP cache, one token behind the main cache and valid only where it was
taken, is left out of a snapshot cut to a block boundary: speculative decoding then restarts it, exactly).

Two kinds of snapshot follow from the entries' capabilities:
- cuttable (every state has a token axis: MLA latent, quantized latent, DSA): one snapshot serves any
  shorter prefix, cut with slices;
- exact (V4's window and compressor states): valid only at the position it was taken, so the server takes
  them at snapshot points while prefill passes them.
Each state owns copies of its arrays, packed per dtype into one buffer (a V4 snapshot of many small
arrays would otherwise cost a buffer each; Metal limits how many buffers a process holds), and a restore
hands the new cache fresh copies: neither the donor nor a stored snapshot is ever written later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from ..cache.protocol import CacheState, CacheStateError, capabilities_of, cut as cut_state
from ..generation.steps import make_prompt_cache


@dataclass
class CacheSnapshot:
    """Entry states of a prompt cache; `tokens` is the first entry's token count (the main model's).

    `heads[i][name]`: leading pieces of entry i's append-only array `name` that live in older snapshots of
    the same conversation (see `snapshot(like=...)`); the entry's own array then holds only the rows after
    them. `materialize` joins them."""

    entries: list[CacheState]
    heads: list[dict[str, list[mx.array]]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.entries[0].offset if self.entries else 0

    @property
    def exact(self) -> bool:
        """True when the snapshot serves only its own length (some state cannot be cut)."""
        return any(e.token_axis is None for e in self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes of every array it reads, shared pieces included (a tier counts shared pieces once)."""
        return sum(a.nbytes for a in self.arrays())

    def arrays(self) -> list[mx.array]:
        """Its own arrays and the shared pieces it reads."""
        return [a for e in self.entries for a in e.arrays.values()] + [
            p for h in self.heads for ps in h.values() for p in ps]

    def own_arrays(self) -> list[mx.array]:
        return [a for e in self.entries for a in e.arrays.values()]


def unsupported_reason(model) -> str | None:
    """Why this model's prompt cache cannot be snapshotted (None when it can: every kind restores)."""
    for i, c in enumerate(model.make_cache()):
        if not all(hasattr(c, m) for m in ("snapshot", "restore", "kind")):
            return f"cache entry {i} does not implement the cache protocol; prefix caching is off"
    return None


def capabilities(model) -> dict:
    """What the model's caches can do (the protocol's answers), for /health and engine.stats()."""
    cache = model.make_cache()
    return dict(capabilities_of(cache).as_dict(), kinds=sorted({getattr(c, "kind", "unknown") for c in cache}))


def _pack(entries: list[CacheState]) -> None:
    """Re-home every array as a view of one buffer per dtype and role (a few large arrays, not hundreds):
    append-only arrays get buffers of their own, so a later snapshot that shares them pins no other bytes."""
    groups: dict = {}
    for e in entries:
        for name, a in e.arrays.items():
            groups.setdefault((a.dtype, name in e.append_axis), []).append((e, name, a))
    for items in groups.values():
        buf = mx.concatenate([a.reshape(-1) for _, _, a in items])
        mx.eval(buf)
        at = 0
        for e, name, a in items:
            e.arrays[name] = buf[at: at + a.size].reshape(a.shape)
            at += a.size


def _share(entries: list[CacheState], like: CacheSnapshot) -> list[dict]:
    """Point the append-only arrays' leading rows at `like`'s (an older snapshot of the same token prefix):
    each entry keeps only its rows past them. Returns the heads (see CacheSnapshot). Entries pair up by
    position (both are leading runs of the same prompt cache layout); one snapshot may hold a drafter
    entry the other lacks (a request that decoded in a batch leaves none), and that entry shares nothing."""
    heads = [{} for _ in entries]
    for i, (new, old) in enumerate(zip(entries, like.entries)):
        for name, axis in new.append_axis.items():
            if name not in old.arrays or name not in new.arrays or old.kind != new.kind:
                continue
            pieces = (like.heads[i].get(name, []) if like.heads else []) + [old.arrays[name]]
            rows = sum(p.shape[axis] for p in pieces)
            if 0 < rows <= new.arrays[name].shape[axis]:
                index = (slice(None),) * axis + (slice(rows, None),)
                new.arrays[name] = mx.array(new.arrays[name][index])
                heads[i][name] = pieces
    return heads


def snapshot(cache: list, tokens: int, *, like: CacheSnapshot | None = None) -> CacheSnapshot:
    """States of the first `tokens` tokens of `cache` (the main entries' count); `like`: an older exact
    snapshot whose tokens are a prefix of these, whose append-only rows this one shares. Entries that hold a
    different count (the MTP cache trails the main one) drop as many tokens as the main entries do. The
    run of entries ends at the first that cannot be cut there, and, in a cuttable snapshot (the first
    entry's state can be cut), at the first whose state could not be cut later."""
    drop = cache[0].offset - tokens
    entries = []
    for c in cache:
        try:
            state = cut_state(c.snapshot(), max(0, c.offset - drop))
        except CacheStateError:
            if not entries:
                raise
            break
        if entries and entries[0].token_axis is not None and state.token_axis is None:
            break
        entries.append(state)
    heads = _share(entries, like) if like is not None else []
    _pack(entries)
    return CacheSnapshot(entries, heads)


def materialize(snap: CacheSnapshot) -> CacheSnapshot:
    """The same snapshot with every array whole (shared pieces joined in front of its own rows)."""
    if not any(snap.heads):
        return snap
    entries = []
    for e, head in zip(snap.entries, snap.heads):
        arrays = {k: mx.concatenate([*head[k], a], axis=e.append_axis[k]) if k in head else a
                  for k, a in e.arrays.items()}
        entries.append(CacheState(e.kind, e.offset, arrays, dict(e.meta), e.token_axis, dict(e.append_axis)))
    return CacheSnapshot(entries)


def cut(snap: CacheSnapshot, tokens: int) -> CacheSnapshot:
    """The first `tokens` main tokens of a stored snapshot (slices: the stored arrays are never written);
    raises CacheStateError for an exact snapshot asked for another length."""
    if tokens == snap.tokens:
        return snap
    drop = snap.tokens - tokens
    return CacheSnapshot([cut_state(e, max(0, e.offset - drop)) for e in materialize(snap).entries])


def restore(model, snap: CacheSnapshot) -> list | None:
    """A new prompt cache holding the snapshot's tokens (fresh copies; entries past the snapshot's start
    empty), or None when the snapshot does not fit this model's cache layout."""
    cache = make_prompt_cache(model)
    snap = materialize(snap)
    if len(snap.entries) > len(cache):
        return None
    try:
        for c, e in zip(cache, snap.entries):
            c.restore(e)
    except (CacheStateError, KeyError):
        return None
    mx.eval([c.state for c in cache[: len(snap.entries)]])
    return cache


def layout(snap: CacheSnapshot) -> list[dict]:
    """JSON-able description of the entries (kind, offset, meta, token axis, array names) for the disk tier."""
    return [{"kind": e.kind, "offset": e.offset, "settings": e.meta, "token_axis": e.token_axis,
             "append_axis": e.append_axis, "arrays": sorted(e.arrays)} for e in snap.entries]


def flatten(snap: CacheSnapshot) -> dict[str, mx.array]:
    """Every array whole, named `<entry>.<array>` (a file on disk shares nothing with other files)."""
    return {f"{i}.{k}": a for i, e in enumerate(materialize(snap).entries) for k, a in e.arrays.items()}


def unflatten(arrays: dict[str, mx.array], entries: list[dict]) -> CacheSnapshot | None:
    """Rebuild a snapshot from `flatten`'s arrays and `layout`'s description; None when they disagree
    (a state whose arrays do not fit its cache is refused by that cache's `restore`)."""
    out = []
    for i, d in enumerate(entries):
        names = list(d["arrays"])
        if any(f"{i}.{k}" not in arrays for k in names):
            return None
        got = {k: arrays[f"{i}.{k}"] for k in names}
        axis = d.get("token_axis")
        if axis is not None and any(a.ndim <= axis or a.shape[axis] != d["offset"] for a in got.values()):
            return None
        out.append(CacheState(d["kind"], int(d["offset"]), got, {k: int(v) for k, v in d["settings"].items()},
                              None if axis is None else int(axis),
                              {k: int(v) for k, v in d.get("append_axis", {}).items()}))
    if sum(len(d["arrays"]) for d in entries) != len(arrays):
        return None
    return CacheSnapshot(out)


def tokens_held(cache: list) -> int:
    """Tokens in the main entries of a live prompt cache."""
    return cache[0].offset if cache else 0

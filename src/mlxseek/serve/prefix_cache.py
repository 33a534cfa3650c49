"""The prefix cache's RAM tier: snapshots of prompt caches keyed by chained block hashes, LRU by bytes.

A token sequence is cut into blocks of BLOCK_TOKENS; block j's key hashes the key of block j-1 with the
block's token ids, and block 0 starts from the model identity, so equal keys mean an equal token prefix on
the same weights. An entry stores one snapshot covering its k blocks and serves any request that shares
its first j <= k blocks (the snapshot is cut to j blocks), so a conversation that grows keeps one entry
and its earlier, shorter entries are dropped as subsumed.

BLOCK_TOKENS = 32: a request reuses its shared prefix rounded down to a block, so it loses at most 31
tokens (a 1,000-token shared prefix gives 992 cached tokens); smaller blocks only add hashes (one blake2b
per 32 tokens is negligible next to a forward pass), and entries are whole snapshots, so the block size
does not fragment storage.

Exact snapshots (a cache kind that cannot be cut, such as V4's window and compressor states) are
keyed by their whole blocks' keys plus one tail key hashing the remaining tokens, `<digest>-<tokens>`,
and serve only a request whose first `tokens` tokens are theirs. The engine takes them at snapshot
points (see `snapshot_points`) while prefill passes them, and at the end of each finished turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..formats.tokens import ASSISTANT, USER
from . import cache_state
from .cache_state import CacheSnapshot
from .prefix_disk import DiskTier, exact_tokens, shared_blocks, usable

log = logging.getLogger("mlxseek.serve")

BLOCK_TOKENS = 32


def model_identity(model, model_id: str) -> str:
    """Hash of the model's name or path, its config and a fingerprint of its weights (the first values of
    a few tensors): a cache written for other weights never matches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model_id.encode())
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg), sort_keys=True, default=str).encode())
    params = sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])
    for name, a in params[:4] + params[-4:]:
        h.update(name.encode())
        h.update(np.asarray(a.reshape(-1)[:64].view(mx.uint8)).tobytes())
    return h.hexdigest()


def block_hashes(identity: str, tokens: list[int], block: int = BLOCK_TOKENS) -> list[str]:
    """Chained keys of the whole blocks of `tokens`."""
    out, prev = [], identity.encode()
    for j in range(len(tokens) // block):
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(np.asarray(tokens[j * block:(j + 1) * block], dtype=np.int64).tobytes())
        prev = h.hexdigest().encode()
        out.append(prev.decode())
    return out


def tail_key(identity: str, tokens: list[int], n: int, block: int = BLOCK_TOKENS, hashes=None) -> str | None:
    """The exact key of the first n tokens (None when `tokens` is shorter); `hashes`: block keys of
    `tokens` already computed (at least n // block of them)."""
    if n > len(tokens):
        return None
    k = n // block
    hashes = hashes if hashes is not None and len(hashes) >= k else block_hashes(identity, tokens[: k * block], block)
    h = hashlib.blake2b((hashes[k - 1] if k else identity).encode() + b"|exact", digest_size=16)
    h.update(np.asarray(tokens[k * block: n], dtype=np.int64).tobytes())
    return f"{h.hexdigest()}-{n}"


def chat_marks(tokenizer) -> dict[str, int]:
    """Token ids of `<｜User｜>` and `<｜Assistant｜>` (where the tokenizer has them): snapshot points."""
    out = {}
    for name, text in (("user", USER), ("assistant", ASSISTANT)):
        try:
            i = tokenizer.convert_tokens_to_ids(text)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
        if isinstance(i, int) and i != getattr(tokenizer, "unk_token_id", None):
            out[name] = i
    return out


SNAPSHOT_EVERY = 4096  # tokens between periodic snapshot points in a long prompt


def snapshot_points(tokens: list[int], start: int, marks: dict[str, int]) -> list[int]:
    """Positions in (start, len(tokens) - 1] where an exact snapshot is worth taking: just before the
    first `<｜User｜>` (the end of the system/tools block, shared by every conversation with the same
    tools), just after the last `<｜Assistant｜>` (the next turn re-renders the reply without its
    reasoning, so it diverges there), and every SNAPSHOT_EVERY tokens. `marks`: name -> token id."""
    end = len(tokens) - 1  # the last token is fed by the decode loop
    # Periodic points leave the prompt's last 4 tokens to the decode loop, which reads them to tell whether
    # the prompt opens reasoning (`<think>` and a newline or two after `<｜Assistant｜>`).
    points = set(range(SNAPSHOT_EVERY, len(tokens) - 4, SNAPSHOT_EVERY))
    user, assistant = marks.get("user"), marks.get("assistant")
    if user is not None and user in tokens:
        points.add(tokens.index(user))
    if assistant is not None and assistant in tokens:
        points.add(len(tokens) - tokens[::-1].index(assistant))
    return sorted(p for p in points if start < p <= end)


def keep_point(tokens: list[int], old: int, new: int, marks: dict[str, int]) -> bool:
    """Whether an exact snapshot at `old` tokens stays once one at `new` of the same conversation
    (`tokens`) is kept: the end of the system block and the latest point after `<｜Assistant｜>` stay (other
    conversations and the next turn start there), periodic points stay for 4 periods back and then one
    in four (thinned further back); earlier turns' points are served by the newer snapshot."""
    head = tokens[:new]
    user, assistant = marks.get("user"), marks.get("assistant")
    if user is not None and user in head and head.index(user) == old:
        return True
    if assistant is not None and assistant in head and len(head) - head[::-1].index(assistant) == old:
        return True
    if old % SNAPSHOT_EVERY == 0:
        return new - old <= 4 * SNAPSHOT_EVERY or old % (4 * SNAPSHOT_EVERY) == 0
    return False


@dataclass
class _Entry:
    hashes: tuple[str, ...]
    snap: CacheSnapshot
    nbytes: int


class PrefixCache:
    """RAM tier (LRU by the snapshots' bytes) in front of an optional disk tier. Used by the worker only."""

    def __init__(self, model, *, identity: str, max_bytes: int, disk: DiskTier | None = None,
                 block: int = BLOCK_TOKENS, marks: dict[str, int] | None = None):
        self.model, self.identity, self.max_bytes, self.disk, self.block = model, identity, max_bytes, disk, block
        # A kind that cannot be cut (the protocol says so) is kept as exact snapshots at snapshot points.
        self.exact = not cache_state.capabilities(model)["cut"]
        self.marks = dict(marks or {})  # token ids of <｜User｜> / <｜Assistant｜>: which points to keep
        self._ram: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self.counts = {"hits": 0, "misses": 0, "hit_tokens": 0, "evictions": 0, "inserts": 0, "disk_hits": 0,
                       "hit_tokens_block": 0, "hit_tokens_exact": 0}

    @classmethod
    def for_model(cls, model, *, identity: str, max_bytes: int, folder: str | None,
                  marks: dict[str, int] | None = None):
        """(PrefixCache, None), or (None, reason) when this model's cache cannot be snapshotted."""
        reason = cache_state.unsupported_reason(model)
        if reason:
            return None, reason
        disk = DiskTier(folder, identity=identity) if folder else None
        return cls(model, identity=identity, max_bytes=max_bytes, disk=disk, marks=marks), None

    @staticmethod
    def empty_stats() -> dict:
        return {"hits": 0, "misses": 0, "hit_tokens": 0, "evictions": 0, "inserts": 0, "disk_hits": 0, "bytes": 0, "entries": 0,
                "disk_entries": 0, "disk_rejected": 0, "hit_tokens_block": 0, "hit_tokens_exact": 0,
                "bytes_unshared": 0}

    def stats(self) -> dict:
        disk = self.disk.stats() if self.disk is not None else {"disk_entries": 0, "disk_rejected": 0}
        unshared = sum(e.snap.nbytes for e in self._ram.values())  # what the entries hold without sharing
        return dict(self.counts, bytes=self.bytes, bytes_unshared=unshared, entries=len(self._ram), **disk)

    def lookup(self, tokens: list[int]) -> tuple[int, list | None]:
        """(cached tokens, a new prompt cache holding them) for the longest cached prefix of `tokens`,
        leaving at least one token to prefill; (0, None) on a miss."""
        hashes = block_hashes(self.identity, tokens[: (len(tokens) - 1) // self.block * self.block], self.block)

        def score(entry_hashes) -> int:
            return usable(entry_hashes, hashes, lambda n: self._tail(tokens[:-1], n, hashes), self.block)

        best, src = 0, None
        for e in self._ram.values():
            j = score(e.hashes)
            if j > best:
                best, src = j, e
        if self.disk is not None:
            j, dkey = self.disk.best(score)
            loaded = self.disk.load(dkey) if j > best else None
            if loaded is not None:
                src = _Entry(tuple(loaded[0]), loaded[1], loaded[1].nbytes)
                best = j
                self._keep(dkey, src)
                self.counts["disk_hits"] += 1
        if src is None:
            self.counts["misses"] += 1
            return 0, None
        key = src.hashes[-1]
        if key in self._ram:
            self._ram.move_to_end(key)
        cache = cache_state.restore(self.model, cache_state.cut(src.snap, best))
        if cache is None:
            log.warning("prefix cache entry does not fit this model's cache layout; dropping it")
            self._drop(key)
            self.counts["misses"] += 1
            return 0, None
        self.counts["hits"] += 1
        self.counts["hit_tokens"] += best
        kind = "exact" if src.snap.exact else "block"
        self.counts[f"hit_tokens_{kind}"] += best
        return best, cache

    def _tail(self, tokens: list[int], n: int, hashes: list[str]) -> str | None:
        return tail_key(self.identity, tokens, n, self.block, hashes)

    def insert(self, tokens: list[int], cache: list) -> None:
        """Keep the whole blocks of `cache` (which holds the first tokens of `tokens`)."""
        n = cache_state.tokens_held(cache)
        if n > len(tokens):
            log.warning("prompt cache holds %d tokens but only %d are known; not caching it", n, len(tokens))
            return
        if self.exact:
            self._insert_exact(tokens, cache, n)
            return
        k = n // self.block
        if k == 0:
            return
        hashes = block_hashes(self.identity, tokens[: k * self.block], self.block)
        for key, e in self._ram.items():
            if shared_blocks(e.hashes, hashes) == k:  # already covered by a longer or equal entry
                self._ram.move_to_end(key)
                return
        snap = cache_state.snapshot(cache, k * self.block)
        subsumed = [key for key, e in self._ram.items()
                    if exact_tokens(e.hashes[-1]) is None and shared_blocks(e.hashes, hashes) == len(e.hashes)]
        for key in subsumed:
            self._drop(key)
        if self.disk is not None:
            self.disk.save(hashes, snap)
            self.disk.drop_subsumed(hashes)
        self.counts["inserts"] += 1
        self._keep(hashes[-1], _Entry(tuple(hashes), snap, snap.nbytes))

    def _insert_exact(self, tokens: list[int], cache: list, n: int) -> None:
        """Keep the whole cache as an exact snapshot of its n tokens (its state cannot be cut)."""
        if n == 0:
            return
        hashes = block_hashes(self.identity, tokens[: n // self.block * self.block], self.block)
        hashes.append(tail_key(self.identity, tokens, n, self.block, hashes))
        if hashes[-1] in self._ram:
            self._ram.move_to_end(hashes[-1])
            return
        def earlier(key: str) -> bool:  # an exact snapshot of a shorter prefix of this conversation
            m = exact_tokens(key)
            return m is not None and m < n and self._tail(tokens, m, hashes) == key

        def served_by_this(key: str) -> bool:  # an earlier point not worth keeping
            return earlier(key) and not keep_point(tokens, exact_tokens(key), n, self.marks)

        # Share the compressed rows with the longest earlier snapshot of this conversation.
        like = max((e for k, e in self._ram.items() if earlier(k)), key=lambda e: e.snap.tokens, default=None)
        snap = cache_state.snapshot(cache, n, like=like.snap if like is not None else None)

        for key in [k for k in self._ram if served_by_this(k)]:
            self._drop(key)
        if self.disk is not None:
            self.disk.save(hashes, snap)
            self.disk.drop_where(served_by_this)
        self.counts["inserts"] += 1
        self._keep(hashes[-1], _Entry(tuple(hashes), snap, snap.nbytes))

    def _keep(self, key: str, entry: _Entry) -> None:
        if entry.nbytes > self.max_bytes:
            return  # larger than the whole RAM budget: disk only
        self._drop(key)
        self._ram[key] = entry
        self._count_bytes()
        while self.bytes > self.max_bytes:
            old = next(iter(self._ram))
            self._drop(old)
            self.counts["evictions"] += 1

    def _drop(self, key: str) -> None:
        if self._ram.pop(key, None) is not None:
            self._count_bytes()

    def _count_bytes(self) -> None:
        """The budget counts every array once, however many snapshots share it (exact snapshots of one
        conversation share their compressed rows; a shared piece lives while any snapshot reads it)."""
        seen = {id(a): a.nbytes for e in self._ram.values() for a in e.snap.arrays()}
        self.bytes = sum(seen.values())

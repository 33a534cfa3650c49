"""The prefix cache's disk tier: one safetensors file per entry, verified before it is loaded.

Each file holds one snapshot (`cache_state.flatten`) and, in the safetensors metadata, the format name
and version, the model identity, the entry's chained block keys, the entry layout a blake2b digest of
every array's bytes and a digest of that metadata. On startup the folder's headers are read (not the data) to index the entries; a
file is loaded only after its header, its size and its digest check out. Anything else (truncated,
flipped bytes, another model's or another version's file) is logged, removed and never loaded.
Files are written to a temporary name and renamed, so a crash mid-write leaves no half file under a
real name. Headers are read, and files laid out and written, through `checkpoint.safetensors` (the one
safetensors seam: its overlap, gap, truncation and duplicate-key checks apply here too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..checkpoint import safetensors
from ..errors import CheckpointError, ServeError
from . import cache_state
from .cache_state import CacheSnapshot

log = logging.getLogger("mlxseek.serve")

FORMAT = "mlxseek-prefix-cache"
VERSION = "2"  # 2: exact (snapshot-point) entries and states with a token axis


def shared_blocks(a, b) -> int:
    """Leading blocks two key chains share (chained keys: equal at j means equal before j, so bisect)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def exact_tokens(key: str) -> int | None:
    """Tokens an exact snapshot's key covers (None for a block key): exact keys end in `-<tokens>`."""
    head, _, n = key.rpartition("-")
    return int(n) if head and n.isdigit() else None


def usable(entry: tuple[str, ...], hashes: list[str], tail_key, block: int) -> int:
    """Tokens of a request an entry serves: a cuttable entry its shared whole blocks, an exact one all
    its tokens or none. `tail_key(n)` is the request's exact key at n tokens (None when too short)."""
    n = exact_tokens(entry[-1])
    if n is None:
        return shared_blocks(entry, hashes) * block
    return n if tail_key(n) == entry[-1] else 0


class _Rejected(Exception):
    """A cache file failed a check; the message says which."""


def digest(arrays: dict[str, mx.array]) -> str:
    """blake2b over every array's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.blake2b(digest_size=32)
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update(np.asarray(mx.contiguous(a).reshape(-1).view(mx.uint8)).tobytes())
    return h.hexdigest()


def _meta_check(meta: dict) -> str:
    """Digest of every other metadata field: a flipped byte in the header is caught without reading the data."""
    body = json.dumps({k: v for k, v in sorted(meta.items()) if k != "check"}, sort_keys=True)
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


def _read_header(path: Path) -> tuple[safetensors.Header, dict]:
    """(header, metadata) through the one safetensors reader: sizes, ranges (no overlap, no gap, no
    truncation) and duplicate keys checked there."""
    try:
        header = safetensors.read_header(path)
    except CheckpointError as e:
        raise _Rejected(str(e)) from None
    if not isinstance(header.metadata, dict):
        raise _Rejected("header has no metadata")
    return header, header.metadata


def _write(path: Path, arrays: dict[str, mx.array], meta: dict) -> None:
    """One safetensors file, laid out and encoded by the shared seam (arrays in name order)."""
    names = sorted(arrays)
    bits = [safetensors.host_bits(arrays[k]) for k in names]
    entries = [(k, safetensors.name_of(arrays[k].dtype), arrays[k].shape, b.nbytes) for k, b in zip(names, bits)]
    header, _ = safetensors.layout_header(entries, meta)
    with open(path, "wb") as f:
        f.write(safetensors.encode_header(header))
        for b in bits:
            f.write(b.tobytes())


def _read(path: Path, header: safetensors.Header) -> dict[str, mx.array]:
    return {k: safetensors.to_mlx(safetensors.read_rows(path, header, k), info["dtype"])
            for k, info in header.tensors.items()}


class DiskTier:
    """Entries under `folder`, indexed by their last block key. Used by the engine's worker only."""

    def __init__(self, folder: str | os.PathLike, *, identity: str):
        self.folder, self.identity = Path(folder), identity
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ServeError(f"--prompt-cache-dir {self.folder}: cannot create it ({e}); pass a writable folder") from None
        self.rejected = 0
        self._index: dict[str, tuple[str, ...]] = {}
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                self._index[path.stem] = self._check_meta(path, _read_header(path)[1])
            except (_Rejected, OSError) as e:
                self._reject(path, e)

    def stats(self) -> dict:
        return {"disk_entries": len(self._index), "disk_rejected": self.rejected}

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _check_meta(self, path: Path, meta: dict) -> tuple[str, ...]:
        if meta.get("check") != _meta_check(meta):
            raise _Rejected("header metadata does not match its check digest (corrupted)")
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise _Rejected(f"format {meta.get('format')!r} version {meta.get('version')!r}, "
                            f"expected {FORMAT!r} version {VERSION!r}")
        if meta.get("identity") != self.identity:
            raise _Rejected("written for another model (identity differs)")
        try:
            hashes = tuple(json.loads(meta["hashes"]))
            json.loads(meta["layout"])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise _Rejected("metadata lacks the block keys or the layout") from None
        if not hashes or hashes[-1] != path.stem:
            raise _Rejected("file name does not match its last block key")
        return hashes

    def _reject(self, path: Path, why: Exception) -> None:
        log.warning("prefix cache file %s ignored and removed: %s", path.name, why)
        self.rejected += 1
        self._index.pop(path.stem, None)
        try:
            path.unlink()
        except OSError:
            pass

    def best(self, score) -> tuple[int, str | None]:
        """(tokens, key) of the indexed entry serving the most tokens by `score(block keys)`."""
        best, key = 0, None
        for k, h in self._index.items():
            j = score(h)
            if j > best:
                best, key = j, k
        return best, key

    def save(self, hashes: list[str], snap: CacheSnapshot) -> None:
        arrays = cache_state.flatten(snap)
        meta = {"format": FORMAT, "version": VERSION, "identity": self.identity, "hashes": json.dumps(hashes),
                "layout": json.dumps(cache_state.layout(snap)), "digest": digest(arrays)}
        meta["check"] = _meta_check(meta)
        path = self._path(hashes[-1])
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
        try:
            _write(tmp, arrays, meta)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write prefix cache file %s: %s", path, e)
            tmp.unlink(missing_ok=True)
            return
        self._index[hashes[-1]] = tuple(hashes)

    def load(self, key: str) -> tuple[tuple[str, ...], CacheSnapshot] | None:
        """(block keys, snapshot) of a verified entry; None (and the file removed) when it fails a check."""
        path = self._path(key)
        try:
            header, meta = _read_header(path)
            hashes = self._check_meta(path, meta)
            arrays = _read(path, header)
            if digest(arrays) != meta.get("digest"):
                raise _Rejected("array bytes do not match the stored digest (corrupted)")
            snap = cache_state.unflatten(arrays, json.loads(meta["layout"]))
            if snap is None:
                raise _Rejected("arrays do not match the stored layout")
        except (_Rejected, CheckpointError, OSError, ValueError, RuntimeError) as e:
            self._reject(path, e)
            return None
        return hashes, snap

    def drop_where(self, drop) -> None:
        """Remove the entries whose last key `drop(key)` picks."""
        for k in [k for k in self._index if drop(k)]:
            self._index.pop(k)
            self._path(k).unlink(missing_ok=True)

    def drop_subsumed(self, hashes: list[str]) -> None:
        """Remove entries whose every block is a prefix of `hashes` (the new entry serves them)."""
        if exact_tokens(hashes[-1]) is not None:
            return  # an exact snapshot serves only its own length: it subsumes nothing
        for k, h in list(self._index.items()):
            if exact_tokens(h[-1]) is None and len(h) < len(hashes) and shared_blocks(h, hashes) == len(h):
                self._index.pop(k)
                self._path(k).unlink(missing_ok=True)

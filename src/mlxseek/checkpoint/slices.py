"""Read part of a stored tensor straight from its safetensors shard: rows [start, stop) of the leading
axis (one expert of an (E, out, in) stack, or one rank's experts), and nothing else.

Why not slice the lazy `mx.load` array: MLX evaluates the whole tensor before slicing, and the slice
is a view that keeps the whole buffer alive (measured: an 8-of-64 slice of a 400 MB stack held 400 MB
and peaked at 450 MB; read here, it holds and peaks at 50 MB). Reads go through the OS (pread), so the
page cache is shared and nothing file-backed counts towards a process's resident memory.

`SlicedStore` wraps a `WeightStore` so the key map's `Materializer` (FP8 dequantization, dtype casts)
runs unchanged on the sliced arrays: a sliced tensor converts exactly as the whole one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError
from . import safetensors
from .store import WeightStore


def row_nbytes(store: WeightStore, key: str) -> int:
    """Bytes of one leading-axis row of `key` as stored."""
    return safetensors.nbytes(store.dtype(key), store.shape(key)[1:])


def tensor_nbytes(store: WeightStore, key: str) -> int:
    """Bytes of `key` as stored."""
    return safetensors.nbytes(store.dtype(key), store.shape(key))


def read_rows_raw(store: WeightStore, key: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `key`'s leading axis as a NumPy array of the stored bits (thread-safe)."""
    shape = store.shape(key)
    if not shape or not 0 <= start < stop <= shape[0]:
        raise CheckpointError(f"{store.file_of(key)}: rows {start}:{stop} of {key!r} are outside its shape {shape}")
    return safetensors.read_rows(store.file_of(key), store.header_of(key), key, start, stop)


def to_mlx(store: WeightStore, key: str, raw: np.ndarray) -> mx.array:
    """Raw stored bits of `key` (from `read_rows_raw`) -> an MLX array of the dtype `mx.load` gives."""
    return safetensors.to_mlx(raw, store.dtype(key))


def read_rows(store: WeightStore, key: str, start: int, stop: int) -> mx.array:
    """Rows [start, stop) of `key` as an MLX array, reading only those bytes."""
    return to_mlx(store, key, read_rows_raw(store, key, start, stop))


class SlicedStore:
    """A WeightStore whose listed keys read only rows [start, stop) of their leading axis.

    `raw` optionally supplies already-read bits ({key: ndarray}, e.g. from a prefetch thread).
    Everything else (shapes of other keys, dtypes, files) is the wrapped store's."""

    def __init__(self, store: WeightStore, rows: dict[str, tuple[int, int]], raw: Optional[dict] = None):
        self.store, self.rows, self.raw = store, rows, raw or {}
        self.folder = store.folder
        self.bytes_read = 0

    def get(self, key: str) -> mx.array:
        if key not in self.rows:
            return self.store.get(key)
        raw = self.raw.get(key)
        if raw is None:
            raw = read_rows_raw(self.store, key, *self.rows[key])
        self.bytes_read += raw.nbytes
        return to_mlx(self.store, key, raw)

    def dtype(self, key: str) -> str:
        return self.store.dtype(key)

    def shape(self, key: str) -> tuple[int, ...]:
        shape = self.store.shape(key)
        if key in self.rows:
            start, stop = self.rows[key]
            return (stop - start, *shape[1:])
        return shape

    def file_of(self, key: str) -> Path:
        return self.store.file_of(key)

    def __contains__(self, key: str) -> bool:
        return key in self.store

    def keys(self) -> list[str]:
        return self.store.keys()

    def release(self) -> None:
        self.store.release()

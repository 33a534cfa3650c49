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

import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError
from .store import WeightStore, read_header

# safetensors dtype -> (numpy dtype of the raw bytes, MLX dtype to view them as; None = same as numpy).
# Float8 arrives as uint8 bits, as `mx.load` gives it; the key map dequantizes it.
_RAW = {
    "F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, mx.bfloat16),
    "F8_E4M3": (np.uint8, None), "F8_E8M0": (np.uint8, None), "U8": (np.uint8, None), "I8": (np.int8, None),
    "U16": (np.uint16, None), "I16": (np.int16, None), "U32": (np.uint32, None), "I32": (np.int32, None),
    "I64": (np.int64, None), "BOOL": (np.bool_, None),
}


@lru_cache(maxsize=256)
def _layout(path: Path) -> tuple[int, dict]:
    """(absolute offset of the data section, header) of one shard."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n, read_header(path)


def row_nbytes(store: WeightStore, key: str) -> int:
    """Bytes of one leading-axis row of `key` as stored."""
    shape = store.shape(key)
    return int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(_RAW[store.dtype(key)][0]).itemsize


def tensor_nbytes(store: WeightStore, key: str) -> int:
    """Bytes of `key` as stored."""
    shape = store.shape(key)
    return shape[0] * row_nbytes(store, key) if shape else np.dtype(_RAW[store.dtype(key)][0]).itemsize


def read_rows_raw(store: WeightStore, key: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `key`'s leading axis as a NumPy array of the stored bits (thread-safe)."""
    shape = store.shape(key)
    if not 0 <= start < stop <= shape[0]:
        raise CheckpointError(f"{store.file_of(key)}: rows {start}:{stop} of {key!r} are outside its shape {shape}")
    path = store.file_of(key)
    base, header = _layout(path)
    np_dtype = _RAW[store.dtype(key)][0]
    row = row_nbytes(store, key)
    out = np.empty((stop - start, *shape[1:]), dtype=np_dtype)
    offset = base + header[key]["data_offsets"][0] + start * row
    fd = os.open(path, os.O_RDONLY)
    try:
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # reads may return short counts
            n = _pread_into(fd, view[done:], offset + done)
            if n == 0:
                raise CheckpointError(f"{path}: unexpected end of file reading {key!r} rows {start}:{stop}")
            done += n
    finally:
        os.close(fd)
    return out


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Positional read into `view` (no shared file position, so threads may read concurrently)."""
    if hasattr(os, "preadv"):  # straight into the buffer; the GIL is released while reading
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def to_mlx(store: WeightStore, key: str, raw: np.ndarray) -> mx.array:
    """Raw stored bits of `key` (from `read_rows_raw`) -> an MLX array of the dtype `mx.load` gives."""
    a = mx.array(raw)
    view = _RAW[store.dtype(key)][1]
    return a.view(view) if view is not None else a


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

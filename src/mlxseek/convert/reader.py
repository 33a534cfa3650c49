"""Reading a source checkpoint for conversion: one tensor, or one block of its rows, at a time.

`WeightStore.get` hands out arrays from a cached `mx.load` dict, so every tensor it ever evaluated
stays resident until the store dies: fine for loading, fatal for converting a model larger than RAM.
`SourceReader` keeps WeightStore's up-front validation (missing/truncated shards, bad headers,
unsupported dtypes) but reads each request fresh from disk (read-only) and keeps no reference.

Two views feed the one key map (`Materializer`) without touching its code:
  ShapeOnly  every tensor is a lazy, never-evaluated `mx.zeros` of the right shape and dtype, so the
             key map itself tells the converter every output's shape before any weight is read;
  RowWindow  rows [start, stop) of one tensor, and the matching block rows of its FP8
             `weight_scale_inv`, so a large matrix is dequantized, cast and quantized in pieces.
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..checkpoint.keymap import SCALE_SUFFIX
from ..checkpoint.store import INDEX_NAME, WeightStore
from ..errors import CheckpointError

# safetensors dtype -> (NumPy dtype holding the raw bits, MLX dtype of the array handed out).
# F8_E4M3 arrives as uint8 bits, as mx.load gives it; the key map dequantizes it.
DTYPES = {
    "F32": (np.float32, mx.float32), "F16": (np.float16, mx.float16), "BF16": (np.uint16, mx.bfloat16),
    "F8_E4M3": (np.uint8, mx.uint8), "F8_E8M0": (np.uint8, mx.uint8), "U8": (np.uint8, mx.uint8), "I8": (np.int8, mx.int8),
    "U16": (np.uint16, mx.uint16), "I16": (np.int16, mx.int16), "U32": (np.uint32, mx.uint32),
    "I32": (np.int32, mx.int32), "I64": (np.int64, mx.int64), "BOOL": (np.bool_, mx.bool_),
}


class SourceReader(WeightStore):
    """A WeightStore whose `get` reads fresh from disk every time and caches nothing."""

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        self._data_start = {}
        for shard in self._headers:
            with open(self.folder / shard, "rb") as f:
                self._data_start[shard] = 8 + struct.unpack("<Q", f.read(8))[0]

    def get(self, key: str) -> mx.array:
        return self.read_rows(key, 0, None)

    def nbytes_of(self, key: str) -> int:
        a, b = self._headers[self.weight_map[key]][key]["data_offsets"]
        return b - a

    def read_rows(self, key: str, start: int, stop: int | None) -> mx.array:
        """Rows [start, stop) along axis 0 of `key` (the whole tensor for 0, None)."""
        shard = self.weight_map[key]
        info = self._headers[shard][key]
        shape = list(info["shape"])
        np_dtype, mx_dtype = DTYPES[info["dtype"]]
        row_elems = math.prod(shape[1:])
        if shape:
            stop = shape[0] if stop is None else min(stop, shape[0])
            shape[0] = stop - start
        count = math.prod(shape)
        offset = self._data_start[shard] + info["data_offsets"][0] + start * row_elems * np.dtype(np_dtype).itemsize
        path = self.folder / shard
        try:
            with open(path, "rb") as f:
                raw = np.fromfile(f, dtype=np_dtype, count=count, offset=offset)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read {key!r} ({e.strerror})") from None
        if raw.size != count:
            raise CheckpointError(f"{path}: truncated while reading {key!r}; re-download this shard")
        arr = mx.array(raw.reshape(shape))
        return arr.view(mx_dtype) if mx_dtype == mx.bfloat16 else arr

    def fingerprint(self) -> str:
        """sha256 over the index file (if any) and every shard's raw header: changes when the source does."""
        h = hashlib.sha256()
        index = self.folder / INDEX_NAME
        if index.exists():
            h.update(index.read_bytes())
        for shard, start in sorted(self._data_start.items()):
            with open(self.folder / shard, "rb") as f:
                h.update(shard.encode() + f.read(start))
        return h.hexdigest()


class _View:
    """The slice of the WeightStore interface that Materializer uses, over a SourceReader."""

    def __init__(self, reader: SourceReader):
        self.reader, self.folder = reader, reader.folder

    def __contains__(self, key: str) -> bool:
        return key in self.reader

    def dtype(self, key: str) -> str:
        return self.reader.dtype(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.reader.shape(key)

    def file_of(self, key: str) -> Path:
        return self.reader.file_of(key)


class ShapeOnly(_View):
    """Every tensor as a lazy zeros array: shapes and dtypes propagate, nothing is read or computed."""

    def get(self, key: str) -> mx.array:
        return mx.zeros(self.reader.shape(key), dtype=DTYPES[self.reader.dtype(key)][1])


class RowWindow(_View):
    """Rows [start, stop) of source tensor `key`, with the matching rows of its FP8 block scales.

    `start` must be a multiple of the FP8 block height, so block b of the window is block
    start // block_rows + b of the full tensor and the dequantized values are unchanged."""

    def __init__(self, reader: SourceReader, key: str, start: int, stop: int, block_rows: int = 1,
                 scale_key: str | None = None):
        super().__init__(reader)
        self.key, self.start, self.stop, self.block_rows = key, start, stop, block_rows
        self.scale_key = scale_key or key + SCALE_SUFFIX  # V4 spells it `X.scale`

    def get(self, key: str) -> mx.array:
        if key == self.key:
            return self.reader.read_rows(key, self.start, self.stop)
        if key == self.scale_key:
            bm = self.block_rows
            return self.reader.read_rows(key, self.start // bm, -(-self.stop // bm))
        return self.reader.get(key)

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
from pathlib import Path

import mlx.core as mx

from ..checkpoint.keymap import SCALE_SUFFIX
from ..checkpoint.safetensors import DTYPES
from ..checkpoint.store import INDEX_NAME, WeightStore


class SourceReader(WeightStore):
    """A WeightStore whose `get` reads fresh from disk every time and caches nothing."""

    def get(self, key: str) -> mx.array:
        return self.read_rows(key, 0, None)

    def fingerprint(self) -> str:
        """sha256 over the index file (if any) and every shard's raw header: changes when the source does."""
        h = hashlib.sha256()
        index = self.folder / INDEX_NAME
        if index.exists():
            h.update(index.read_bytes())
        for shard, header in sorted(self._parsed.items()):
            with open(self.folder / shard, "rb") as f:
                h.update(shard.encode() + f.read(header.data_start))
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
        return mx.zeros(self.reader.shape(key), dtype=DTYPES[self.reader.dtype(key)].mlx)


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

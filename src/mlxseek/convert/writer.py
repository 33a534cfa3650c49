"""Output shards in the safetensors format, written piece by piece into preallocated byte ranges.

A shard's header (every tensor's dtype, shape and byte range) is known before its data, so the header
is written first, the file is preallocated to its final size, and each tensor's range is filled with
positional writes as its pieces arrive: one expert of a stacked `switch_mlp` tensor, or one block of
rows of a large matrix. Nothing but the current piece is ever in memory. The format is plain
safetensors (8-byte little-endian header length, JSON header padded with spaces to 8 bytes, then the
data), readable by `mx.load`, `safetensors` and mlx-lm.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..checkpoint import safetensors
from ..checkpoint.store import INDEX_NAME
from ..errors import ConversionError
from .layout import TensorSpec

_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call; stay well below


class ShardWriter:
    """Writes one shard at `path`. Use as a context manager; `write` pieces, every byte exactly once."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict | None = None):
        self.path = Path(path)
        header, offset = safetensors.layout_header(
            ((s.name, safetensors.name_of(s.dtype), s.shape, s.nbytes) for s in specs), metadata or {"format": "mlx"})
        self._ranges = {s.name: (header[s.name]["data_offsets"][0], s) for s in specs}
        raw = safetensors.encode_header(header)
        self._data_start = len(raw)
        self.size = self._data_start + offset
        self._written = dict.fromkeys(self._ranges, 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _preallocate(self._fd, self.size, self.path)
            self._pwrite(raw, 0)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, name: str, array: mx.array, row: int = 0) -> None:
        """Write evaluated `array` into tensor `name`, starting at flat row `row`.

        Rows are those of the tensor viewed as 2-D (prod(shape[:-1]), shape[-1]): for a stacked
        (E, out, in) tensor, expert e's row r is e * out + r."""
        begin, spec = self._ranges[name]
        cols = spec.shape[-1] if spec.shape else 1
        if array.dtype != spec.dtype or (array.shape[-1] if array.ndim else 1) != cols:
            raise ConversionError(f"{self.path}: piece {array.dtype}{tuple(array.shape)} does not fit "
                                  f"tensor {name} {spec.dtype}{spec.shape}")
        start = begin + row * cols * spec.dtype.size
        if start + array.nbytes > begin + spec.nbytes:
            raise ConversionError(f"{self.path}: piece at row {row} overruns tensor {name} {spec.shape}")
        self._pwrite(memoryview(safetensors.host_bits(array)).cast("B"), self._data_start + start)
        self._written[name] += array.nbytes

    def write_cols(self, name: str, array: mx.array, slab: int, col: int) -> None:
        """Write evaluated 2-D `array` (rows, c) into columns [col, col + c) of matrix `slab` of tensor
        `name` (..., rows, cols): a kmajor weight's piece. Goes through a short-lived memory map, so the
        strided rows cost page-cache writes, not one system call each."""
        begin, spec = self._ranges[name]
        rows, cols = spec.shape[-2], spec.shape[-1]
        n_slabs = spec.nbytes // (rows * cols * spec.dtype.size)
        if (array.dtype != spec.dtype or array.ndim != 2 or array.shape[0] != rows
                or col + array.shape[1] > cols or slab >= n_slabs):
            raise ConversionError(f"{self.path}: piece {array.dtype}{tuple(array.shape)} at matrix {slab}, "
                                  f"column {col} does not fit tensor {name} {spec.dtype}{spec.shape}")
        host = safetensors.host_bits(array)
        offset = self._data_start + begin + slab * rows * cols * spec.dtype.size
        mm = np.memmap(self.path, dtype=host.dtype, mode="r+", offset=offset, shape=(rows, cols))
        mm[:, col : col + host.shape[1]] = host
        mm.flush()
        del mm
        self._written[name] += array.nbytes

    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                n = os.pwrite(self._fd, view[:_MAX_WRITE], offset)
            except OSError as e:
                raise ConversionError(f"{self.path}: write failed ({e.strerror}); check free disk space") from None
            view, offset = view[n:], offset + n

    def close(self) -> None:
        """Flush to disk. Raises if any tensor was not completely written."""
        try:
            short = [n for n, (_, s) in self._ranges.items() if self._written[n] != s.nbytes]
            if short:
                raise ConversionError(f"{self.path}: tensors not completely written: {', '.join(short[:5])}")
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            os.close(self._fd)


def _preallocate(fd: int, size: int, path: Path) -> None:
    # Reserve the blocks now, so a full disk fails at the start of a shard rather than in the middle.
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ConversionError(f"{path}: cannot reserve {size} bytes: no space left on device") from None
            # Filesystems without fallocate support get a sparse file instead.
    os.ftruncate(fd, size)


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj, **kw) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, **kw)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_index(folder: Path, weight_map: dict[str, str], total_size: int, total_parameters: int) -> None:
    index = {"metadata": {"total_size": total_size, "total_parameters": total_parameters},
             "weight_map": dict(sorted(weight_map.items()))}
    write_json(folder / INDEX_NAME, index, indent=4)

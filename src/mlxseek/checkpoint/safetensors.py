"""The one safetensors seam: the dtype table, header parsing and validation, positional row reads, and
header encoding for writers. Every reader and writer of `.safetensors` files in mlxseek goes through here.

Layout (huggingface/safetensors): 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object
of `name -> {dtype, shape, data_offsets: [begin, end]}` plus an optional `__metadata__` object), then the
data section. Offsets are relative to the data section's start.

A header is validated in full before any weight is read: a header whose ranges overlap would otherwise
load one tensor's bytes as another's (issue 13: `gate_proj` silently became a copy of `up_proj`). The
rules are the safetensors library's own: ranges are disjoint, contiguous, cover the data section exactly,
and each holds prod(shape) x itemsize bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..errors import CheckpointError


@dataclass(frozen=True)
class Dtype:
    """One safetensors dtype: the NumPy dtype holding its raw bits, and the MLX dtype `mx.load` gives."""

    name: str
    raw: type
    mlx: mx.Dtype

    @property
    def itemsize(self) -> int:
        return np.dtype(self.raw).itemsize


# Float8 (e4m3 weights, e8m0 scales) arrives as uint8 bits, as `mx.load` gives it; the key map decodes it.
# BF16 has no NumPy dtype: its bits travel as uint16 and are viewed as bfloat16 in MLX.
DTYPES: dict[str, Dtype] = {d.name: d for d in (
    Dtype("F32", np.float32, mx.float32), Dtype("F16", np.float16, mx.float16), Dtype("BF16", np.uint16, mx.bfloat16),
    Dtype("F8_E4M3", np.uint8, mx.uint8), Dtype("F8_E8M0", np.uint8, mx.uint8),
    Dtype("U8", np.uint8, mx.uint8), Dtype("I8", np.int8, mx.int8), Dtype("U16", np.uint16, mx.uint16),
    Dtype("I16", np.int16, mx.int16), Dtype("U32", np.uint32, mx.uint32), Dtype("I32", np.int32, mx.int32),
    Dtype("U64", np.uint64, mx.uint64), Dtype("I64", np.int64, mx.int64), Dtype("BOOL", np.bool_, mx.bool_),
)}
# MLX dtype -> the name a writer records (uint8 as plain U8; a writer of float8 bits names them itself).
_NAME_OF = {d.mlx: d.name for d in DTYPES.values() if not d.name.startswith("F8_")}
_MAX_HEADER = 100 << 20  # the safetensors library's own bound on the JSON header


def name_of(dtype: mx.Dtype) -> str:
    """The safetensors name of an MLX dtype (raises KeyError for one safetensors cannot hold)."""
    return _NAME_OF[dtype]


def nbytes(name: str, shape) -> int:
    """Bytes of a tensor of safetensors dtype `name` and `shape`."""
    return math.prod(shape) * DTYPES[name].itemsize


@dataclass(frozen=True)
class Header:
    """A validated header: tensors (name -> {dtype, shape, data_offsets}) and where the data starts."""

    tensors: dict
    data_start: int
    metadata: dict | None = None


def read_header(path: Path) -> Header:
    """Read and fully validate the header of the shard at `path` (CheckpointError names file and tensor)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated safetensors file (header claims {n} bytes, file has {size})")
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: safetensors header claims {n} bytes (at most {_MAX_HEADER}); "
                                      "not a safetensors file, or a corrupt one: re-download or re-convert it")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    tensors, metadata = parse_header(text, path=path, data_len=size - 8 - n)
    return Header(tensors, 8 + n, metadata)


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {dup!r} appears twice")
    return dict(pairs)


def parse_header(text: bytes, *, path: Path, data_len: int) -> tuple[dict, dict | None]:
    """Header bytes -> (tensors, metadata), checked against a data section of `data_len` bytes."""
    try:
        obj = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: safetensors header is not UTF-8 text (byte {e.start} of the header); "
                              "the file is corrupt: re-download or re-convert this shard") from None
    except ValueError as e:  # json.JSONDecodeError, or a duplicate key
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: safetensors header is a JSON {type(obj).__name__}, not an object "
                              "of tensors; re-download or re-convert this shard")
    metadata = obj.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: safetensors __metadata__ is a {type(metadata).__name__}, not an object")
    for key, info in obj.items():
        _check_entry(path, key, info)
    _check_ranges(path, obj, data_len)
    return obj, metadata


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entry(path: Path, key: str, info) -> None:
    def bad(why: str):
        raise CheckpointError(f"{path}: tensor {key!r} {why}; re-download or re-convert this shard")

    if not isinstance(info, dict):
        bad(f"is described by a JSON {type(info).__name__}, not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            bad(f"has no {field!r} in the header")
    d, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(d, str) or d not in DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {d}; mlxseek reads "
                              f"{', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        bad(f"has shape {shape!r}: it must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        bad(f"has data_offsets {offsets!r}: they must be two integers [begin, end] with 0 <= begin <= end")
    want = nbytes(d, shape)
    if offsets[1] - offsets[0] != want:
        bad(f"has data_offsets {offsets} ({offsets[1] - offsets[0]} bytes) but {d}{shape} needs {want} bytes")


def _check_ranges(path: Path, tensors: dict, data_len: int) -> None:
    """Ranges sorted by start must tile [0, data_len) exactly: nothing past the end, no overlap (checked
    first: it is the lie that would load one tensor's bytes as another's), no gap."""
    spans = sorted((tuple(info["data_offsets"]), key) for key, info in tensors.items())
    for (begin, end), key in spans:
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {key!r} ends at byte {end} of the data "
                f"section but the file holds only {data_len}; re-download or re-convert this shard")
    for ((_, prev_end), prev), ((begin, end), key) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"{path}: tensor {key!r} bytes [{begin}, {end}) overlap those of {prev!r} "
                                  f"(which end at {prev_end}); the header is corrupt: re-download or re-convert this shard")
    pos, prev = 0, None
    for (begin, end), key in spans:
        if begin > pos:
            raise CheckpointError(f"{path}: tensor {key!r} starts at byte {begin} but the previous tensor"
                                  f"{f' {prev!r}' if prev else ''} ends at {pos}: {begin - pos} bytes belong to "
                                  "no tensor; the header is corrupt: re-download or re-convert this shard")
        pos, prev = end, key
    if pos != data_len:
        raise CheckpointError(f"{path}: the tensors' bytes end at {pos} but the data section holds {data_len} "
                              "bytes; the file is corrupt or was appended to: re-download or re-convert this shard")


def read_rows(path: Path, header: Header, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of `key`'s leading axis (the whole tensor for 0, None) as a NumPy array of its
    stored bits, read with positional reads: no shared file position, so threads may read concurrently."""
    info = header.tensors[key]
    shape = list(info["shape"])
    d = DTYPES[info["dtype"]]
    row = math.prod(shape[1:]) * d.itemsize
    if shape:
        stop = shape[0] if stop is None else min(stop, shape[0])
        if not 0 <= start <= stop:
            raise CheckpointError(f"{path}: rows {start}:{stop} of {key!r} are outside its shape {tuple(shape)}")
        shape[0] = stop - start
    out = np.empty(shape, dtype=d.raw)
    offset = header.data_start + info["data_offsets"][0] + start * row
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {key!r} ({e.strerror})") from None
    try:
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # reads may return short counts
            n = _pread_into(fd, view[done:], offset + done)
            if n == 0:
                raise CheckpointError(f"{path}: truncated while reading {key!r} rows {start}:{stop}; "
                                      "re-download this shard")
            done += n
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {key!r} ({e.strerror})") from None
    finally:
        os.close(fd)
    return out


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):  # straight into the buffer; the GIL is released while reading
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def to_mlx(raw: np.ndarray, name: str) -> mx.array:
    """Raw stored bits (from `read_rows`) of safetensors dtype `name` -> the MLX array `mx.load` gives."""
    a = mx.array(raw)
    return a.view(mx.bfloat16) if name == "BF16" else a


def host_bits(a: mx.array) -> np.ndarray:
    """Row-major host copy of an evaluated array's bits (bf16 as its uint16 bits: NumPy has no bf16)."""
    return np.ascontiguousarray(np.asarray(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a))


def layout_header(entries, metadata: dict | None) -> tuple[dict, int]:
    """entries: (name, dtype name, shape, nbytes) in file order -> (header object, data section size)."""
    header, offset = {}, 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, offset


def encode_header(header: dict, *, compact: bool = True) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 (the data then
    starts aligned). `compact` drops the spaces after separators."""
    raw = json.dumps(header, separators=(",", ":") if compact else None).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw

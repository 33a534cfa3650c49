"""The weight store: safetensors shards of a checkpoint folder, read lazily, validated up front.

A folder holds either `model.safetensors.index.json` (key -> shard) or plain `*.safetensors` files.
Every shard header is parsed before any weight is read, so a missing or truncated shard, a header that
is not JSON, or an index naming a key its shard lacks fails early with the file and key named.
Tensors are returned as lazy MLX arrays (`mx.load`): nothing is read until it is evaluated.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx

from ..errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
# safetensors dtypes MLX can load (F8_E4M3 arrives as uint8 bits and is dequantized by the key map).
SUPPORTED_DTYPES = {"F32", "F16", "BF16", "F8_E4M3", "F8_E8M0", "U8", "I8", "U32", "I32", "I64", "U16", "I16", "BOOL"}


def read_header(path: Path) -> dict:
    """Parse and check a safetensors header; returns {key: {dtype, shape, data_offsets}}."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated safetensors file (header claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for key, info in header.items():
        end = info["data_offsets"][1]
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {key!r} ends at byte {end} of the data "
                f"section but the file holds only {data_len}; re-download or re-convert this shard"
            )
    return header


class WeightStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.folder}: no *.safetensors files and no {INDEX_NAME}")
            weight_map = {k: f.name for f in files for k in read_header(f)}
        self._headers: dict[str, dict] = {}
        for shard in sorted(set(weight_map.values())):
            p = self.folder / shard
            if not p.exists():
                key = next(k for k, s in weight_map.items() if s == shard)
                raise CheckpointError(f"{p}: missing shard (the index maps {key!r} and others to it)")
            self._headers[shard] = read_header(p)
        for key, shard in weight_map.items():
            info = self._headers[shard].get(key)
            if info is None:
                raise CheckpointError(f"{self.folder / shard}: the index lists {key!r} but the shard lacks it")
            if info["dtype"] not in SUPPORTED_DTYPES:
                raise CheckpointError(f"{self.folder / shard}: tensor {key!r} has unsupported dtype {info['dtype']}")
        self.weight_map = weight_map
        self._loaded: dict[str, dict] = {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._headers[self.weight_map[key]][key]["shape"])

    def dtype(self, key: str) -> str:
        return self._headers[self.weight_map[key]][key]["dtype"]

    def file_of(self, key: str) -> Path:
        return self.folder / self.weight_map[key]

    def nbytes(self) -> int:
        return sum(i["data_offsets"][1] - i["data_offsets"][0] for h in self._headers.values() for i in h.values())

    def get(self, key: str) -> mx.array:
        """Lazy array for `key`; the shard is opened on first use and its data read on evaluation."""
        shard = self.weight_map[key]
        if shard not in self._loaded:
            try:
                self._loaded[shard] = mx.load(str(self.folder / shard))
            except Exception as e:  # mlx raises RuntimeError/ValueError with its own wording
                raise CheckpointError(f"{self.folder / shard}: cannot load ({e})") from None
        return self._loaded[shard][key]

    def release(self) -> None:
        """Drop this store's handles on the arrays it has handed out. Evaluated ones it alone still holds
        (e.g. bf16 sources of a float32 cast) are freed; lazy arrays handed out stay valid."""
        self._loaded.clear()

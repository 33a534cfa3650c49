"""The weight store: safetensors shards of a checkpoint folder, read lazily, validated up front.

A folder holds either `model.safetensors.index.json` (key -> shard) or plain `*.safetensors` files.
Every shard header is parsed before any weight is read, so a missing or truncated shard, a header that
is not JSON, or an index naming a key its shard lacks fails early with the file and key named.
Tensors are returned as lazy MLX arrays (`mx.load`): nothing is read until it is evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from ..errors import CheckpointError
from . import safetensors
from .safetensors import Header, read_header

INDEX_NAME = "model.safetensors.index.json"


def read_weight_map(folder: Path) -> dict[str, str]:
    """key -> shard file name, from the index, or from the headers of the folder's `*.safetensors`."""
    index = folder / INDEX_NAME
    if not index.exists():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder}: no *.safetensors files and no {INDEX_NAME}")
        weight_map: dict[str, str] = {}
        for f in files:
            for k in read_header(f).tensors:
                if k in weight_map:
                    raise CheckpointError(f"{f}: tensor {k!r} is also stored in {weight_map[k]}; keep one copy "
                                          f"(or write a {INDEX_NAME} naming the shard to read)")
                weight_map[k] = f.name
        return weight_map
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:  # JSON, UTF-8, or a top level that is not an object
        raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise CheckpointError(f"{index}: cannot read ({e.strerror})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is a {type(weight_map).__name__}, not an object of key -> shard")
    for key, shard in weight_map.items():
        # A shard is a file of this folder: a name, not a path that could point elsewhere.
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index}: weight_map maps {key!r} to {shard!r}, not a shard file name in {folder}")
    return weight_map


class WeightStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        weight_map = read_weight_map(self.folder)
        self._headers: dict[str, dict] = {}
        self._parsed: dict[str, Header] = {}
        for shard in sorted(set(weight_map.values())):
            p = self.folder / shard
            if not p.is_file():
                key = next(k for k, s in weight_map.items() if s == shard)
                raise CheckpointError(f"{p}: missing shard (the index maps {key!r} and others to it)")
            self._parsed[shard] = read_header(p)
            self._headers[shard] = self._parsed[shard].tensors
        for key, shard in weight_map.items():
            if key not in self._headers[shard]:
                raise CheckpointError(f"{self.folder / shard}: the index lists {key!r} but the shard lacks it")
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

    def header_of(self, key: str) -> Header:
        """The validated header of the shard holding `key`."""
        return self._parsed[self.weight_map[key]]

    def nbytes_of(self, key: str) -> int:
        """Bytes of `key` as stored."""
        return safetensors.nbytes(self.dtype(key), self.shape(key))

    def nbytes(self) -> int:
        return sum(i["data_offsets"][1] - i["data_offsets"][0] for h in self._headers.values() for i in h.values())

    def read_rows(self, key: str, start: int = 0, stop: int | None = None) -> mx.array:
        """Rows [start, stop) of `key`'s leading axis (the whole tensor for 0, None), read fresh from disk."""
        raw = safetensors.read_rows(self.file_of(key), self.header_of(key), key, start, stop)
        return safetensors.to_mlx(raw, self.dtype(key))

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

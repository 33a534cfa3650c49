"""DeepSeek-V4.1's Engram tables in a converted folder: copied byte for byte (FP8 rows + E8M0 scales, never
re-quantized: the model reads them by position) into one shard per table, so the loader's positional reads
touch only table bytes. The copy streams in 64 MiB pieces: a table is ~100 GB."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint.engram_rows import table_sources
from ..checkpoint.safetensors import encode_header, layout_header, read_header
from ..config import ModelConfig
from ..errors import ConversionError

PIECE = 64 << 20


def engram_shard_name(j: int, n: int) -> str:
    return f"engram-{j + 1:05d}-of-{n:05d}.safetensors"


def copy_engram_tables(cfg: ModelConfig, reader, dst: Path) -> dict[str, str]:
    """Write each table's weight and scale into `dst`/engram-*.safetensors; -> their weight-map entries."""
    sources = table_sources(cfg, reader)
    weight_map = {}
    for j, s in enumerate(sources):
        parts = []
        for path, key in ((s.path, s.weight_key), (s.scales_in, s.scale_key)):
            h = read_header(path)
            info = h.tensors[key]
            a, b = info["data_offsets"]
            parts.append((path, key, info, h.data_start + a, b - a))
        header, _ = layout_header([(key, info["dtype"], info["shape"], n) for _, key, info, _, n in parts],
                                  {"format": "pt"})
        name = engram_shard_name(j, len(sources))
        with open(dst / name, "wb") as out:
            out.write(encode_header(header))
            for path, key, _, offset, n in parts:
                _copy_range(path, offset, n, out, key)
            out.flush()
            os.fsync(out.fileno())
        weight_map.update({s.weight_key: name, s.scale_key: name})
    return weight_map


def _copy_range(path: Path, offset: int, n: int, out, key: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < n:
            data = os.pread(fd, min(PIECE, n - done), offset + done)
            if not data:
                raise ConversionError(f"{path}: truncated while copying {key}; re-download this shard")
            out.write(data)
            done += len(data)
    finally:
        os.close(fd)

"""Tiny Engram tables for tests: random FP8 e4m3 rows with E8M0 scales per 32, written as one safetensors
shard per table (the converted layout: tables stay 8-bit, in shards of their own)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from mlxseek.checkpoint.engram_rows import TableSource
from mlxseek.config import ModelConfig
from mlxseek.layers.v41.engram_hash import EngramHasher, EngramLayout

ENGRAM = {"engram_layer_ids": [1, 6], "engram_max_ngram_size": 4, "engram_n_heads": 2, "engram_head_dim": 32,
          "engram_vocab_size": 40, "engram_compressed_vocab_size": 200, "engram_pad_id": 2}


def engram_config(base: dict) -> dict:
    layout = EngramLayout.from_config(ModelConfig.from_dict({**base, **ENGRAM}))
    return {**base, **ENGRAM, "engram_num_embeddings": [int(p.sum()) for p in layout.primes]}


def token_map(vocab: int) -> np.ndarray:
    """A stand-in compressed vocabulary for a 256-id model: pairs of ids collapse (ids 2k and 2k+1)."""
    return np.arange(vocab, dtype=np.int64) // 2 % 200


def hasher(cfg: ModelConfig) -> EngramHasher:
    return EngramHasher(EngramLayout.from_config(cfg), token_map(cfg.vocab_size), cfg.engram_pad_id)


def write_st(path: Path, tensors: dict) -> None:
    """tensors: name -> (safetensors dtype, uint8 array of the stored bytes, shape)."""
    header, blobs, pos = {}, [], 0
    for name, (dtype, data, shape) in tensors.items():
        b = np.ascontiguousarray(data).tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_tables(folder: Path, cfg: ModelConfig, seed: int = 0) -> list[TableSource]:
    rng = np.random.default_rng(seed)
    valid = np.array([b for b in range(256) if b & 0x7F != 0x7F], np.uint8)  # no NaN codes
    out = []
    for j, rows in enumerate(cfg.engram_num_embeddings):
        d = cfg.engram_head_dim
        w = rng.choice(valid, size=(rows, d))
        s = rng.integers(120, 128, size=(rows, d // 32), dtype=np.uint8)  # 2**-7 .. 2**0
        path = Path(folder) / f"engram-{j}.safetensors"
        name = f"layers.{cfg.engram_layer_ids[j]}.engram.embed"
        write_st(path, {f"{name}.weight": ("F8_E4M3", w, w.shape), f"{name}.scale": ("F8_E8M0", s, s.shape)})
        out.append(TableSource(path, f"{name}.weight", f"{name}.scale"))
    return out

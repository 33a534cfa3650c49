"""Engram at load time (DeepSeek-V4.1): find each table's shard, open it for positional row reads into a
hot-row LRU of `engram_memory_gb`, and build the hasher from the folder's own tokenizer (its compressed
vocabulary must have exactly `engram_compressed_vocab_size` ids, or every hash would be wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..checkpoint.engram_rows import DiskRows, table_sources
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..layers.v41.compressed_vocab import compressed_token_map
from ..layers.v41.engram_hash import EngramHasher, EngramLayout

DEFAULT_ENGRAM_MEMORY_GB = 1.0  # hot rows kept in RAM; V4.1-Flash's tables are ~203 GB on disk


def token_map_for(cfg: ModelConfig, folder: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise CheckpointError(f"{path}: not found; Engram hashes token ids through the model's own tokenizer")
    tok = Tokenizer.from_file(str(path))
    cmap, n = compressed_token_map(tok, max(cfg.vocab_size, tok.get_vocab_size(with_added_tokens=True)))
    if n != cfg.engram_compressed_vocab_size:
        raise ConfigError(f"{Path(folder) / 'config.json'}: engram_compressed_vocab_size is "
                          f"{cfg.engram_compressed_vocab_size}, but {path} normalises to {n} ids; the tokenizer "
                          "is not this model's")
    return cmap[: cfg.vocab_size]


def attach_engram(model, cfg: ModelConfig, store, *, engram_memory_gb: Optional[float] = None) -> None:
    """Give `model` its hasher and a DiskRows reader over the table shards (nothing is read yet)."""
    gb = DEFAULT_ENGRAM_MEMORY_GB if engram_memory_gb is None else engram_memory_gb
    if gb < 0:
        raise ConfigError(f"engram_memory_gb must be >= 0 (GB of hot Engram rows kept in RAM), got {gb}")
    hasher = EngramHasher(EngramLayout.from_config(cfg), token_map_for(cfg, store.folder), cfg.engram_pad_id)
    model.attach_engram(hasher, DiskRows(table_sources(cfg, store), budget_bytes=int(gb * 1e9)))

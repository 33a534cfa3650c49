"""Engram's n-gram hashing (DeepSeek-V4.1): which table rows a token reads. Host-side NumPy, int64.

1. Each token id maps to a compressed vocabulary (`compressed_token_map`): tokens that normalise alike
   (" The", "the", "THE") share an id; partial-UTF-8 byte tokens keep their raw form; dead tokens (image
   spans, pads) are -1 and stop the look-back.
2. The token at position p and up to `max_ngram - 1` tokens before it (stopping at the sequence start or a
   dead token, whose slots take the pad id) are multiplied by per-layer odd multipliers and XOR-ed one
   look-back at a time: after step i the running value hashes the (i+1)-gram.
3. Each n-gram hash is taken modulo `heads` primes, and offset into its own disjoint bucket range.

So a position reads (max_ngram - 1) * heads rows per Engram layer (V4.1-Flash: 3 * 8 = 24).
Provenance: transformers' V4.1 port (`EngramLayout`, `compute_hash_multipliers`, `DeepseekV41NgramHashState`)
and DeepSeek's `engram.py` as the port cites it: the multipliers come from `default_rng(10007 * layer_id)`,
the primes are drawn in order above `engram_vocab_size` and never reused, across all layers.
Shapes: B rows, L positions, N = max_ngram, H heads, C = (N - 1) * H columns, J Engram layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config import ModelConfig
from ...errors import ConfigError

DEAD = -1


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:  # the bucket primes sit near engram_vocab_size (16M): ~2000 trial divisions at most
        if n % f == 0:
            return False
        f += 2
    return True


@dataclass(frozen=True)
class EngramLayout:
    """The bucket layout: primes (J, N-1, H), offsets (J, C) into each layer's table, multipliers (J, N)."""

    layer_ids: tuple
    max_ngram: int
    heads: int
    primes: np.ndarray
    offsets: np.ndarray
    multipliers: np.ndarray

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "EngramLayout":
        ids, n, h = tuple(cfg.engram_layer_ids or ()), cfg.engram_max_ngram_size, cfg.engram_n_heads
        primes, current, seen = [], None, set()
        for _ in ids:
            layer = []
            for _ in range(n - 1):
                current, row = cfg.engram_vocab_size - 1, []
                for _ in range(h):
                    current += 1
                    while not _is_prime(current) or current in seen:
                        current += 1
                    seen.add(current)
                    row.append(current)
                layer.append(row)
            primes.append(layer)
        primes = np.array(primes, dtype=np.int64).reshape(len(ids), n - 1, h)
        flat = primes.reshape(len(ids), -1)
        offsets = np.concatenate([np.zeros((len(ids), 1), np.int64), np.cumsum(flat, axis=1)[:, :-1]], axis=1)
        for j, rows in enumerate(cfg.engram_num_embeddings or []):
            if j < len(ids) and int(flat[j].sum()) > rows:
                raise ConfigError(f"config.json: engram_num_embeddings[{j}] = {rows} rows, but the bucket primes "
                                  f"above engram_vocab_size need {int(flat[j].sum())}; the two keys disagree")
        bound = max(1, (np.iinfo(np.int64).max // cfg.engram_compressed_vocab_size) // 2)
        mult = np.stack([np.random.default_rng(10007 * i).integers(0, bound, size=(n,), dtype=np.int64) * 2 + 1
                         for i in ids]) if ids else np.zeros((0, n), np.int64)
        return cls(ids, n, h, primes, offsets, mult)

    @property
    def columns(self) -> int:
        return (self.max_ngram - 1) * self.heads


def look_back(history: np.ndarray, ids: np.ndarray, pad: int, max_ngram: int) -> np.ndarray:
    """history (B, N-1) compressed ids before the chunk (DEAD where none), ids (B, L) -> (B, L, N) the
    token at each position and the N-1 before it, pad from the first dead slot on."""
    seq = np.concatenate([history, ids], axis=1)  # (B, N-1+L)
    past = max_ngram - 1
    out = np.stack([seq[:, past - s: seq.shape[1] - s] for s in range(max_ngram)], axis=-1)
    blocked = np.logical_or.accumulate(out == DEAD, axis=-1)
    return np.where(blocked, pad, out)


def hash_rows(layout: EngramLayout, tokens: np.ndarray) -> np.ndarray:
    """tokens (B, L, N) from `look_back` -> (B, L, J, C) table rows, each layer's from its own table start."""
    prod = tokens[:, :, None, :] * layout.multipliers[None, None]  # (B, L, J, N); no overflow: see bound
    rolling, cols = prod[..., 0], []
    for i in range(1, layout.max_ngram):
        rolling = rolling ^ prod[..., i]
        cols.append(rolling[..., None] % layout.primes[None, None, :, i - 1])  # (B, L, J, H)
    return np.concatenate(cols, axis=-1) + layout.offsets[None, None]


class EngramHasher:
    """Compressed-id map + layout; `rows(ids, history)` hashes a chunk and returns the new history."""

    def __init__(self, layout: EngramLayout, token_map: np.ndarray, pad_id: int):
        self.layout, self.token_map = layout, np.asarray(token_map, dtype=np.int64)
        self.pad = int(self.token_map[pad_id])

    def start(self, batch: int) -> np.ndarray:
        return np.full((batch, self.layout.max_ngram - 1), DEAD, dtype=np.int64)

    def rows(self, ids: np.ndarray, history: np.ndarray, live=None) -> tuple[np.ndarray, np.ndarray]:
        """ids (B, L) token ids, history (B, N-1), live (B, L) bool or None -> (rows (B, L, J, C), history)."""
        c = self.token_map[np.asarray(ids, dtype=np.int64)]
        if live is not None:
            c = np.where(live, c, DEAD)
        rows = hash_rows(self.layout, look_back(history, c, self.pad, self.layout.max_ngram))
        return rows, np.concatenate([history, c], axis=1)[:, -(self.layout.max_ngram - 1):]

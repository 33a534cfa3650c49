"""Per-layer caches. MLA caches only the compressed latent (R) and the rotary key (Dr) per token.

The latent cache reuses mlx-lm's KVCache storage (keys = latent (B, 1, S, R), values = rotary key
(B, 1, S, Dr)), so it is trimmable and works with mlx-lm's prompt-cache utilities and generate loop.
"""

from __future__ import annotations

from mlx_lm.models.cache import KVCache

from .config import ModelConfig


class LatentCache(KVCache):
    """MLA latent cache: (kv_lora_rank + qk_rope_head_dim) values per token per layer."""


class DSACache(LatentCache):
    """V3.2 (DSA) cache: the MLA latent cache plus the lightning indexer's keys (index_head_dim per token).

    Both grow by the same tokens and `trim` rolls both back, so speculative rollback keeps them in step.
    The indexer keys reuse a KVCache (keys (B, 1, S, Di); zero-width values, so no memory)."""

    def __init__(self):
        super().__init__()
        self.index = KVCache()

    def update_index_keys(self, keys):
        """Append the new tokens' indexer keys (B, 1, L, Di); returns all of them, (B, 1, S, Di)."""
        return self.index.update_and_fetch(keys, keys[..., :0])[0]

    def trim(self, n: int) -> int:
        n = super().trim(n)
        self.index.trim(n)
        return n

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.index.keys

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, index_keys = v
        self.index = KVCache()
        if index_keys is not None:
            self.index.state = (index_keys, index_keys[..., :0], self.offset)

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.index.nbytes


def make_cache(cfg: ModelConfig, num_layers: int | None = None) -> list[LatentCache]:
    cls = DSACache if cfg.uses_dsa else LatentCache
    return [cls() for _ in range(cfg.num_hidden_layers if num_layers is None else num_layers)]


def latent_values_per_token(cfg: ModelConfig) -> int:
    """Cached values per token per layer for absorbed MLA."""
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim


def mha_values_per_token(cfg: ModelConfig) -> int:
    """What a per-head K/V cache (mlx-lm's deepseek_v2) stores per token per layer."""
    return cfg.num_attention_heads * (cfg.q_head_dim + cfg.v_head_dim)

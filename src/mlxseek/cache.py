"""Per-layer caches. MLA caches only the compressed latent (R) and the rotary key (Dr) per token.

The latent cache reuses mlx-lm's KVCache storage (keys = latent (B, 1, S, R), values = rotary key
(B, 1, S, Dr)), so it is trimmable and works with mlx-lm's prompt-cache utilities and generate loop.
"""

from __future__ import annotations

from mlx_lm.models.cache import KVCache

from .config import ModelConfig


class LatentCache(KVCache):
    """MLA latent cache: (kv_lora_rank + qk_rope_head_dim) values per token per layer."""


def make_cache(cfg: ModelConfig, num_layers: int | None = None) -> list[LatentCache]:
    return [LatentCache() for _ in range(cfg.num_hidden_layers if num_layers is None else num_layers)]


def latent_values_per_token(cfg: ModelConfig) -> int:
    """Cached values per token per layer for absorbed MLA."""
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim


def mha_values_per_token(cfg: ModelConfig) -> int:
    """What a per-head K/V cache (mlx-lm's deepseek_v2) stores per token per layer."""
    return cfg.num_attention_heads * (cfg.q_head_dim + cfg.v_head_dim)

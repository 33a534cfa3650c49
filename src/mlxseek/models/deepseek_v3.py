"""DeepSeek V2 / V2-Lite / V3 / R1 / V3.1 / V3.2: embed -> decoder layers (MLA or, for V3.2, DSA
attention; a dense MLP in the first `first_k_dense_replace` layers, DeepSeekMoE after) -> RMSNorm ->
lm_head, plus the MTP module (`model.layers.{num_hidden_layers}` in the checkpoint). V2 differs by its
routing (softmax, greedy or group-limited), V3.2 by the DSA indexer; both are config switches.
Follows the protocol in `models.base`, so mlx-lm's generate can drive it."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..cache.batch import BatchLatentCache
from ..cache.mla import make_cache
from ..cache.mtp import MTPCache
from ..config import ModelConfig
from ..layers.block import DecoderLayer
from ..layers.masks import batch_causal_mask, causal_mask
from ..layers.mla import MultiHeadLatentAttention
from ..layers.mtp import MultiTokenPrediction
from ..layers.norms import RMSNorm
from .base import ATTENTION_IMPLS, CausalLM


def attention_mask(L: int, cache) -> Optional[mx.array]:
    """The causal mask for L new tokens after what `cache` (one layer's, or None) holds: per row, (B, 1, L, S),
    for a batched cache (its rows differ in length), else the single-row (L, S) mask (None at L == 1)."""
    if isinstance(cache, BatchLatentCache):
        return batch_causal_mask(L, cache.offset, cache.width + L)
    return causal_mask(L, cache.offset if cache is not None else 0)


class DeepseekModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg, i, dsa=cfg.uses_dsa) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        cache = cache if cache is not None else [None] * len(self.layers)
        mask = attention_mask(h.shape[1], cache[0])
        for layer, c in zip(self.layers, cache):
            h = layer(h, mask, c)
        return self.norm(h)


class Model(CausalLM):
    supports_mtp_drafting = True

    def __init__(self, cfg: ModelConfig, *, with_mtp: bool = True):
        super().__init__(cfg)
        self.model = DeepseekModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if with_mtp and cfg.num_nextn_predict_layers > 0:
            self.mtp = MultiTokenPrediction(cfg, dsa=cfg.uses_dsa)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        return self.lm_head(self.model(inputs, cache, input_embeddings))

    def trunk(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        return self.model(inputs, cache)

    def head(self, features: mx.array) -> mx.array:
        return self.lm_head(features)

    def mtp_forward(self, features: mx.array, next_ids: mx.array, cache=None) -> tuple[mx.array, mx.array]:
        """features (B, L, D) at t, next_ids (B, L) at t+1 -> (logits for t+2, MTP hidden (B, L, D))."""
        mask = causal_mask(next_ids.shape[1], cache.offset if cache is not None else 0)
        return self.mtp(features, self.model.embed_tokens(next_ids), mask, cache)

    def make_cache(self, *, kv_bits: int | None = None, kv_group_size: int = 64) -> list:
        """Per-layer latent caches; kv_bits=8 or 4 quantizes the latent along its width."""
        return self.layer_caches(self.config.num_hidden_layers, kv_bits=kv_bits, kv_group_size=kv_group_size)

    def layer_caches(self, n: int, **kwargs) -> list:
        """n per-layer caches of this model's kind (V3.2's DSA layers keep indexer keys too)."""
        return make_cache(self.config, n, dsa=self.config.uses_dsa, **kwargs)

    def make_mtp_cache(self) -> MTPCache:
        # The MTP block is a decoder layer like the others (DSA on V3.2): its cache is of their kind.
        return MTPCache(self.layer_caches(1)[0])

    def set_attention_impl(self, impl: str) -> None:
        """'auto' (default), 'naive' or 'absorbed' for every MLA layer (the MTP block included)."""
        self.check_attention_impl(impl, ATTENTION_IMPLS, self.model_type)
        for _, m in self.named_modules():
            if isinstance(m, MultiHeadLatentAttention):
                m.impl = impl

"""DeepSeek-V4 (Flash and Pro): embed -> hc_mult copies of the residual stream (mHC) -> V4 blocks
(sliding-window attention with sinks, plus CSA/HCA compressed KV and, on ratio-4 layers, the V4 indexer;
hash-routed MoE in the first `num_hash_layers` layers, sqrtsoftplus routing after) -> hc_head collapse
-> RMSNorm -> lm_head, plus the MTP module. Follows the protocol in `models.base`."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..cache.dspark import DSparkCache
from ..cache.mtp import MTPCache
from ..cache.v4 import make_v4_cache, v4_layer_cache
from ..config import ModelConfig
from ..errors import GenerationError
from ..layers.norms import RMSNorm
from ..layers.v4.attention import V4Attention
from ..layers.v4.block import V4DecoderLayer
from ..layers.v4.dspark import DSpark
from ..layers.v4.mhc import HyperHead, expand_streams
from ..layers.v4.mtp import V4MultiTokenPrediction
from .base import CausalLM


class V4Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hc_mult = cfg.hc_mult
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [V4DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.hc_head = HyperHead(cfg.hidden_size, cfg.hc_mult, cfg.hc_eps, cfg.rms_norm_eps)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def streams(self, inputs: mx.array, cache: Optional[list] = None, taps: tuple[int, ...] = ()):
        """(B, L) token ids -> the last layer's (B, L, n, D) streams; with `taps` (layer indices), also those
        layers' outputs averaged over the n streams and concatenated, (B, L, len(taps) * D)."""
        h = expand_streams(self.embed_tokens(inputs), self.hc_mult)
        cache = cache if cache is not None else [None] * len(self.layers)
        tapped = []
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            h = layer(h, inputs, c)
            if i in taps:
                tapped.append(h.mean(axis=-2))
        return (h, mx.concatenate(tapped, axis=-1)) if taps else h

    def __call__(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        return self.norm(self.hc_head(self.streams(inputs, cache)))


class V4Model(CausalLM):
    # Speculative decoding rolls the verify step's rejected tokens back with `trim`, which V4's window and
    # compressor caches support up to their trim slack (cache/v4.py, 16 tokens: num_draft <= 15).
    supports_mtp_drafting = True
    attends_row_caches = True  # layers/v4/attention.py: rows of solo caches (the reference) in one forward

    def __init__(self, cfg: ModelConfig, *, with_mtp: bool = True):
        super().__init__(cfg)
        self.model = V4Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.has_dspark:  # 0731 / 0813 / -DSpark: the DSpark drafter replaces the MTP head
            if with_mtp and cfg.dspark_stages:
                self.dspark = DSpark(cfg, cfg.dspark_stages)
        elif with_mtp and cfg.num_nextn_predict_layers > 0:
            self.mtp = V4MultiTokenPrediction(cfg)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        if input_embeddings is not None:
            raise ValueError("DeepSeek-V4 routes its hash layers by token id: pass `inputs`, not embeddings")
        return self.lm_head(self.model(inputs, cache))

    def trunk(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        """The last layer's hc streams (B, L, n, D): what `hc_head` collapses and the MTP module reads."""
        return self.model.streams(inputs, cache)

    def trunk_taps(self, inputs: mx.array, cache: Optional[list] = None) -> tuple[mx.array, mx.array]:
        """(the last layer's streams (B, L, n, D), the DSpark target layers' hiddens (B, L, T*D))."""
        return self.model.streams(inputs, cache, tuple(self.dspark.target_layer_ids))

    def head(self, streams: mx.array) -> mx.array:
        return self.lm_head(self.model.norm(self.model.hc_head(streams)))

    def mtp_forward(self, streams: mx.array, next_ids: mx.array, cache=None) -> tuple[mx.array, mx.array]:
        """streams (B, L, n, D) at t, next_ids (B, L) at t+1 -> (logits for t+2, MTP streams (B, L, n, D))."""
        return self.mtp(streams, self.model.embed_tokens(next_ids), next_ids, self.lm_head, cache)

    def make_cache(self, *, kv_bits: int | None = None, kv_group_size: int = 64) -> list:
        if kv_bits is not None:
            raise GenerationError("kv_bits: DeepSeek-V4's sliding-window and compressed caches cannot be "
                                  "quantized yet; drop kv_bits (--kv-bits) for this model")
        return make_v4_cache(self)

    def make_mtp_cache(self) -> MTPCache:
        return MTPCache(v4_layer_cache(self.mtp.block.self_attn))

    def make_dspark_cache(self) -> DSparkCache:
        return DSparkCache(len(self.dspark.stages), self.dspark.ring_size)

    def set_attention_impl(self, impl: str) -> None:
        """'naive' (softmax with sinks, the reference) or 'auto' (mx.fast sdpa) for every V4 attention."""
        self.check_attention_impl(impl, ("auto", "naive"), self.model_type)
        for _, m in self.named_modules():
            if isinstance(m, V4Attention):
                m.use_reference = impl == "naive"

"""DeepSeek-V4 (Flash and Pro) causal LM: composes the V4 layers; follows mlx-lm's model protocol
(`__call__(inputs, cache=None)`, `make_cache()`, `layers`), like the V2/V3 `Model`.

embed -> hc_mult copies of the stream -> V4 blocks -> hc_head collapse -> RMSNorm -> lm_head.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .cache_v4 import make_v4_cache
from .config import ModelConfig
from .layers.hyper import HyperHead, expand_streams
from .layers.norms import RMSNorm
from .layers.v4_attention import V4Attention
from .layers.v4_block import V4DecoderLayer
from .layers.v4_mtp import V4MultiTokenPrediction


class V4Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hc_mult = cfg.hc_mult
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [V4DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.hc_head = HyperHead(cfg.hidden_size, cfg.hc_mult, cfg.hc_eps, cfg.rms_norm_eps)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def streams(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        """(B, L) token ids -> the last layer's (B, L, n, D) streams."""
        h = expand_streams(self.embed_tokens(inputs), self.hc_mult)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, c in zip(self.layers, cache):
            h = layer(h, inputs, c)
        return h

    def __call__(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        return self.norm(self.hc_head(self.streams(inputs, cache)))


class V4Model(nn.Module):
    def __init__(self, cfg: ModelConfig, *, with_mtp: bool = True):
        super().__init__()
        self.args = self.config = cfg  # mlx-lm reads `model.args`
        self.model_type = cfg.model_type
        self.model = V4Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if with_mtp and cfg.num_nextn_predict_layers > 0:
            self.mtp = V4MultiTokenPrediction(cfg)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        if input_embeddings is not None:
            raise ValueError("DeepSeek-V4 routes its hash layers by token id: pass `inputs`, not embeddings")
        return self.lm_head(self.model(inputs, cache))

    def hidden_states(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        """Final normed hidden states (B, L, D): what the LM head reads."""
        return self.model(inputs, cache)

    def stream_states(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        """The last layer's hc streams (B, L, n, D): what `hc_head` collapses and the MTP module reads."""
        return self.model.streams(inputs, cache)

    def mtp_logits(self, streams: mx.array, next_ids: mx.array, cache=None) -> tuple[mx.array, mx.array]:
        """MTP logits for t+2 (B, L, V) from `stream_states` at t and the token ids at t+1."""
        return self.mtp(streams, self.model.embed_tokens(next_ids), next_ids, self.lm_head, cache)

    @property
    def layers(self) -> list:
        return self.model.layers

    def make_cache(self) -> list:
        return make_v4_cache(self)

    def set_attention_impl(self, impl: str) -> None:
        """'reference' (naive softmax with sinks) or 'auto' (mx.fast sdpa) for every V4 attention."""
        if impl not in ("auto", "reference"):
            raise ValueError(f"V4 attention impl must be 'auto' or 'reference', got {impl!r}")
        for _, m in self.named_modules():
            if isinstance(m, V4Attention):
                m.use_reference = impl == "reference"

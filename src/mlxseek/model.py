"""DeepSeek V2/V3-family causal LM: composes the layers; follows mlx-lm's model protocol
(`__call__(inputs, cache=None)`, `make_cache()`, `layers`), so mlx-lm's generate can drive it."""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from .cache import make_cache
from .config import ModelConfig
from .layers.block import DecoderLayer
from .layers.mla import ATTENTION_IMPLS, MultiHeadLatentAttention
from .layers.mtp import MultiTokenPrediction
from .layers.norms import RMSNorm
from .model_v4 import V4Model


def causal_mask(L: int, offset: int) -> Optional[mx.array]:
    """(L, offset+L) boolean mask, True where query i (at position offset+i) may attend key j."""
    if L == 1:
        return None
    q = mx.arange(offset, offset + L)[:, None]
    return q >= mx.arange(offset + L)[None]


class DeepseekModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        cache = cache if cache is not None else [None] * len(self.layers)
        mask = causal_mask(h.shape[1], cache[0].offset if cache[0] is not None else 0)
        for layer, c in zip(self.layers, cache):
            h = layer(h, mask, c)
        return self.norm(h)


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig, *, with_mtp: bool = True):
        super().__init__()
        self.args = cfg  # mlx-lm reads `model.args`
        self.config = cfg
        self.model_type = cfg.model_type
        self.model = DeepseekModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if with_mtp and cfg.num_nextn_predict_layers > 0:
            self.mtp = MultiTokenPrediction(cfg)

    def __call__(self, inputs: mx.array, cache: Optional[list] = None, input_embeddings=None) -> mx.array:
        return self.lm_head(self.model(inputs, cache, input_embeddings))

    def hidden_states(self, inputs: mx.array, cache: Optional[list] = None) -> mx.array:
        """Final normed hidden states (B, L, D): what the LM head and the MTP module read."""
        return self.model(inputs, cache)

    @property
    def layers(self) -> list:
        return self.model.layers

    def make_cache(self, *, kv_bits: int | None = None, kv_group_size: int = 64) -> list:
        """Per-layer latent caches; kv_bits=8 or 4 quantizes the latent along its width."""
        return make_cache(self.config, kv_bits=kv_bits, kv_group_size=kv_group_size)

    def set_attention_impl(self, impl: str) -> None:
        """'auto' (default), 'naive' or 'absorbed' for every MLA layer (the MTP block included)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for _, m in self.named_modules():
            if isinstance(m, MultiHeadLatentAttention):
                m.impl = impl


# model_type -> model class; later families (deepseek_v32, deepseek_v4) register here.
MODEL_CLASSES: dict[str, type] = {"deepseek_v2": Model, "deepseek_v3": Model, "deepseek_v4": V4Model, "deepseek_v32": Model}


def build_model(cfg: ModelConfig, *, with_mtp: bool = True) -> nn.Module:
    return MODEL_CLASSES[cfg.model_type](cfg, with_mtp=with_mtp)

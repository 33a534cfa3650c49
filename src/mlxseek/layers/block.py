"""One pre-norm transformer block: h = x + MLA(norm(x)); out = h + FFN(norm(h)).
The FFN is a dense SwiGLU MLP for the first `first_k_dense_replace` layers, DeepSeekMoE after."""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig
from .dsa import SparseLatentAttention
from .mla import MultiHeadLatentAttention
from .mlp import MLP
from .moe import DeepSeekMoE
from .norms import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, *, dsa: bool = False):
        super().__init__()
        # dsa: the family's choice (V3.2's sparse attention with its indexer, else MLA)
        self.self_attn = SparseLatentAttention(cfg) if dsa else MultiHeadLatentAttention(cfg)
        self.mlp = DeepSeekMoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))

"""One DeepSeek-V4 decoder block: attention and MoE, each wrapped in an mHC site instead of a residual add.
    x, post, comb = attn_hc(streams);  streams = merge(streams, attn(norm(x)), post, comb)
    x, post, comb = ffn_hc(streams);   streams = merge(streams, moe(norm(x)), post, comb)
Shapes: B batch, L tokens, n = hc_mult streams, D hidden.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..moe import DeepSeekMoE
from ..norms import RMSNorm
from .attention import V4Attention
from .mhc import HyperConnection


class V4DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = V4Attention(cfg, layer_idx)
        self.mlp = DeepSeekMoE(cfg, layer_idx, v4=True)
        self.input_layernorm = RMSNorm(D, eps=eps)
        self.post_attention_layernorm = RMSNorm(D, eps=eps)
        self.attn_hc = HyperConnection(D, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, eps)
        self.ffn_hc = HyperConnection(D, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, eps)

    def __call__(self, streams: mx.array, token_ids: mx.array, cache: Optional[object] = None) -> mx.array:
        """streams (B, L, n, D), token_ids (B, L) (hash routing reads them) -> (B, L, n, D)."""
        x, post, comb = self.attn_hc(streams)
        streams = HyperConnection.merge(streams, self.self_attn(self.input_layernorm(x), cache), post, comb)
        x, post, comb = self.ffn_hc(streams)
        return HyperConnection.merge(streams, self.mlp(self.post_attention_layernorm(x), token_ids), post, comb)

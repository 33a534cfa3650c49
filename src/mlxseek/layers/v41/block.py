"""One DeepSeek-V4.1 block with lagged mHC: each mHC site computes (pre, post, comb) from the streams it
reads, but its `pre` collapses the streams for the *next* site; the attention collapses with the previous
block's FFN `pre` (the first block with a one-hot on stream 0), the FFN with this block's attention `pre`.
    streams = engram(streams, rows)                   (Engram layers only)
    pre_a, post, comb = attn_hc(streams);  streams = merge(streams, attn(norm(collapse(streams, pre_in))))
    pre_f, post, comb = ffn_hc(streams);   streams = merge(streams, moe(norm(collapse(streams, pre_a))))
    return streams, pre_f
Provenance: transformers' V4.1 port (`DeepseekV41DecoderLayer`); no hc_head at the end (the model collapses
with the last `pre`). Shapes: B, L, n = hc_mult, D hidden.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..moe import DeepSeekMoE
from ..norms import RMSNorm
from ..v4.mhc import HyperConnection
from .attention import CSA2Attention
from .engram import Engram


def expand(h: mx.array, hc_mult: int) -> tuple[mx.array, mx.array]:
    """h (B, L, D) -> (streams (B, L, n, D): h copied to every stream, pre (B, L, n) float32): lagged mHC starts
    with a `pre` that collapses stream 0, as the first site has no earlier site to compute it."""
    B, L, D = h.shape
    pre = mx.zeros((B, L, hc_mult), mx.float32)
    pre[..., 0] = 1.0
    return mx.broadcast_to(h[:, :, None, :], (B, L, hc_mult, D)), pre


def collapse(streams: mx.array, pre: mx.array) -> mx.array:
    """sum_k pre_k * streams_k in float32: (B, L, n, D), (B, L, n) -> (B, L, D) in the streams' dtype."""
    return (pre[..., None] * streams.astype(mx.float32)).sum(axis=-2).astype(streams.dtype)


class V41DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = CSA2Attention(cfg, layer_idx)
        self.mlp = DeepSeekMoE(cfg, layer_idx, v4=True)
        self.input_layernorm = RMSNorm(D, eps=eps)
        self.post_attention_layernorm = RMSNorm(D, eps=eps)
        self.attn_hc = HyperConnection(D, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, eps)
        self.ffn_hc = HyperConnection(D, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, eps)
        if layer_idx in (cfg.engram_layer_ids or ()):
            columns = (cfg.engram_max_ngram_size - 1) * cfg.engram_n_heads
            self.engram = Engram(D, cfg.hc_mult, columns, cfg.engram_head_dim, eps)

    def __call__(self, streams: mx.array, pre: mx.array, cache, shared: dict,
                 engram_rows: Optional[mx.array] = None) -> tuple[mx.array, mx.array]:
        if "engram" in self and engram_rows is not None:
            streams = self.engram(streams, engram_rows)
        attn_pre, post, comb = self.attn_hc.mappings(streams)
        h = self.self_attn(self.input_layernorm(collapse(streams, pre)), cache, shared)
        streams = HyperConnection.merge(streams, h, post, comb)
        ffn_pre, post, comb = self.ffn_hc.mappings(streams)
        h = self.mlp(self.post_attention_layernorm(collapse(streams, attn_pre)))
        return HyperConnection.merge(streams, h, post, comb), ffn_pre

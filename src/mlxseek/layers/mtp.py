"""Multi-Token Prediction module (DeepSeek-V3 report, section 2.2).

Checkpoint: `model.layers.{num_hidden_layers}.{enorm,hnorm,eh_proj,shared_head.*}` plus a full decoder
block; the key map moves the block under `mtp.block`. The module predicts token t+2 from the main
model's final (normed) hidden state at t and the embedding of token t+1:
    h' = Block(eh_proj([enorm(emb(tok_{t+1})); hnorm(h_t)]));  logits = head(norm(h'))
Embedding is shared with the main model (the checkpoint's copy at `.embed_tokens` is the same tensor).
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig
from .block import DecoderLayer
from .norms import RMSNorm


class SharedHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def __call__(self, h: mx.array) -> mx.array:
        return self.head(self.norm(h))


class MultiTokenPrediction(nn.Module):
    def __init__(self, cfg: ModelConfig, *, dsa: bool = False):
        super().__init__()
        D = cfg.hidden_size
        self.enorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(D, eps=cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        # The MTP block is always MoE-shaped in DeepSeek-V3 (its index is past first_k_dense_replace).
        self.block = DecoderLayer(cfg, cfg.mtp_layer_index, dsa=dsa)
        self.shared_head = SharedHead(cfg)

    def __call__(
        self, hidden: mx.array, next_embeds: mx.array, mask: Optional[mx.array] = None, cache: Optional[Any] = None
    ) -> tuple[mx.array, mx.array]:
        """hidden (B, L, D) main-model states at t; next_embeds (B, L, D) embeddings of t+1.
        Returns (logits for t+2 (B, L, V), the MTP hidden state (B, L, D) for chaining)."""
        x = self.eh_proj(mx.concatenate([self.enorm(next_embeds), self.hnorm(hidden)], axis=-1))
        h = self.block(x, mask, cache)
        return self.shared_head(h), h

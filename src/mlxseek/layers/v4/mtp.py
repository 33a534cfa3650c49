"""DeepSeek-V4 multi-token prediction module (checkpoint `mtp.0.*`; DeepSeek-V4 `inference/model.py`
`MTPBlock`). Unlike V3's concatenating `eh_proj`, V4 keeps the hc_mult streams:
    x = e_proj(enorm(embed(tok_{t+1})))[stream axis] + h_proj(hnorm(streams_t))   (B, L, n, D)
    streams' = Block(x);  logits = head(norm(hc_head(streams')))
`streams_t` are the main model's last-layer streams (before its own hc_head). The block is a V4 block
whose compression ratio is the config's entry after the main stack (0, sliding-only, in the releases);
embedding and LM head are shared with the main model.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..norms import RMSNorm
from .block import V4DecoderLayer
from .mhc import HyperHead


class V4MultiTokenPrediction(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.e_proj = nn.Linear(D, D, bias=False)
        self.h_proj = nn.Linear(D, D, bias=False)
        self.enorm = RMSNorm(D, eps=eps)
        self.hnorm = RMSNorm(D, eps=eps)
        self.norm = RMSNorm(D, eps=eps)
        self.hc_head = HyperHead(D, cfg.hc_mult, cfg.hc_eps, eps)
        self.block = V4DecoderLayer(cfg, cfg.mtp_layer_index)

    def __call__(
        self, streams: mx.array, next_embeds: mx.array, next_ids: mx.array, lm_head: nn.Module,
        cache: Optional[object] = None,
    ) -> tuple[mx.array, mx.array]:
        """streams (B, L, n, D) main-model streams at t; next_embeds (B, L, D) / next_ids (B, L) for t+1.
        Returns (logits for t+2 (B, L, V), the MTP block's streams (B, L, n, D) for chaining)."""
        x = self.e_proj(self.enorm(next_embeds))[..., None, :] + self.h_proj(self.hnorm(streams))
        out = self.block(x, next_ids, cache)
        return lm_head(self.norm(self.hc_head(out))), out

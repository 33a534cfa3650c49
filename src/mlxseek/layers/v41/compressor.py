"""CSA2's compressor (DeepSeek-V4.1): only a KV-source layer owns one. Every `ratio` consecutive tokens pool
into one KV latent with a learned softmax gate (no overlap between groups); ratio 1 is a plain per-token
projection. The latent is returned before RoPE: the indexer derives its keys from the unrotated form.
A group's entry sits at the position of its first token (group index * ratio).
Pooling runs in float32, as in DeepSeek's reference. Shapes: B, L tokens, G complete groups, d head_dim.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..norms import RMSNorm


def append(old: Optional[mx.array], new: mx.array) -> mx.array:
    """Rows of a cache part (B, T, ...) and the new ones along axis 1."""
    return new if old is None else mx.concatenate([old, new], axis=1)


class CSA2Compressor(nn.Module):
    def __init__(self, hidden_size: int, head_dim: int, ratio: int, eps: float):
        super().__init__()
        self.ratio = ratio
        self.kv_proj = nn.Linear(hidden_size, head_dim, bias=False)
        if ratio > 1:
            self.gate_proj = nn.Linear(hidden_size, head_dim, bias=False)
        self.kv_norm = RMSNorm(head_dim, eps=eps)

    def __call__(self, x: mx.array, offset: int, cache) -> tuple[Optional[mx.array], int]:
        """x (B, L, D) at positions offset.. -> (latents (B, G, d) or None, group index of the first)."""
        if self.ratio == 1:
            return self.kv_norm(self.kv_proj(x)), offset
        h = x.astype(mx.float32)
        held = 0 if cache.pending_kv is None else cache.pending_kv.shape[1]
        new_kv, new_gate = self.kv_proj(h), self.gate_proj(h)
        cache.log_raw(new_kv, new_gate, offset)  # what a rollback rebuilds the open group from
        kv = append(cache.pending_kv, new_kv)
        gate = append(cache.pending_gate, new_gate)
        full = kv.shape[1] - kv.shape[1] % self.ratio
        cache.pending_kv, cache.pending_gate = kv[:, full:], gate[:, full:]
        first = (offset - held) // self.ratio
        if full == 0:
            return None, first
        B, _, d = kv.shape
        kv = kv[:, :full].reshape(B, -1, self.ratio, d)
        gate = gate[:, :full].reshape(B, -1, self.ratio, d)
        latent = (kv * mx.softmax(gate, axis=2)).sum(axis=2)
        return self.kv_norm(latent.astype(x.dtype)), first

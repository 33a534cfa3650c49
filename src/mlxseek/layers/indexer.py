"""The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2-Exp report, section 2.1).

Shapes: B batch, L query tokens, S cached+new tokens, Hi index_n_heads, Di index_head_dim,
Dr qk_rope_head_dim, K index_topk, D hidden, Rq q_lora_rank.

For query t and key s the index score is  I[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s]) / sqrt(Di),
with w = weights_proj(x) / sqrt(Hi); MLA then attends only to the K keys with the highest scores.
The indexer has one shared key head (cached per token, beside MLA's latent) and reads the query's
low-rank latent `qr = q_a_layernorm(q_a_proj(x))` that MLA already computes.

Semantics follow the released checkpoint, checked against two references:
- RoPE: the first Dr dims of each indexer head are rotated in the *half-split* (non-interleaved) layout,
  unlike MLA's interleaved pairs. DeepSeek's update of 2025-11-17 to the V3.2-Exp inference demo fixed
  this (its first release rotated interleaved pairs); transformers' DeepseekV32Indexer and mlx-lm
  (`indexer_rope_interleave=False`) agree. Frequencies and YaRN are MLA's.
- k_norm is a LayerNorm with bias, eps 1e-6 (DeepSeek's `LayerNorm`; mlx-lm uses MLX's default 1e-5).
- DeepSeek's kernel rotates q and k with a Hadamard transform and scores them in FP8 (e4m3, one scale
  per 128 values). The Hadamard transform is orthogonal (q.k is unchanged), and FP8 is a speed trade:
  like transformers we score exactly, in float32, so top-k choices match the float32 golden.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig
from .rope import RotaryEmbedding


class HalfSplitRotary(RotaryEmbedding):
    """MLA's YaRN rotary embedding, applied to (x[i], x[i + Dr/2]) pairs instead of interleaved pairs."""

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        if self.mscale != 1.0:
            x = x * self.mscale
        return mx.fast.rope(
            x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )


class LightningIndexer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.index_n_heads, cfg.index_head_dim
        self.rope_dim, self.topk = cfg.qk_rope_head_dim, cfg.index_topk
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)
        self.rope = HalfSplitRotary(self.rope_dim, cfg.rope_theta, cfg.rope_scaling)
        # Both of the reference's scales folded into the per-head weights (relu commutes with a
        # positive scale): 1/sqrt(Di) for the dot product, 1/sqrt(Hi) for the sum over heads.
        self.weight_scale = (self.n_heads * self.head_dim) ** -0.5
        # Per-head scores are (B, Hi, L, S) float32: a 2048-token prefill chunk over 16K cached tokens with
        # 64 heads would need 8 GiB at once, so long prefills are scored a block of queries at a time.
        self.score_budget = 1 << 26  # float32 elements per block (256 MiB)

    def _rotate(self, x: mx.array, offset: int) -> mx.array:
        # Only the leading Dr dims carry position; the rest pass through unscaled.
        return mx.concatenate([self.rope(x[..., : self.rope_dim], offset), x[..., self.rope_dim :]], axis=-1)

    def keys(self, x: mx.array, offset: int) -> mx.array:
        """Indexer keys for the new tokens: x (B, L, D) -> (B, 1, L, Di), rotated at their positions."""
        return self._rotate(self.k_norm(self.wk(x))[:, None], offset)

    def scores(self, x: mx.array, qr: mx.array, keys: mx.array, offset: int) -> mx.array:
        """Index scores (B, L, S) of the L new queries against all S keys (no causal masking)."""
        B, L, _ = x.shape
        q = self.wq_b(qr).reshape(B, L, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)  # (B, Hi, L, Di)
        q = self._rotate(q, offset)
        # Scored in float32 whatever the compute dtype: the top-k choice is a hard decision.
        logits = mx.maximum(q.astype(mx.float32) @ keys.astype(mx.float32).swapaxes(-1, -2), 0)  # (B, Hi, L, S)
        w = self.weights_proj(x).astype(mx.float32) * self.weight_scale  # (B, L, Hi)
        return (w.transpose(0, 2, 1)[..., None] * logits).sum(axis=1)  # (B, L, S)

    def top_keys(self, x: mx.array, qr: mx.array, keys: mx.array, offset: int, mask: Optional[mx.array]) -> mx.array:
        """Indices (B, L, K) of each new query's K best keys among the S in `keys` (callers ensure S > K).
        mask: None or boolean, broadcastable to (B, L, S), True where a query may attend a key."""
        L, S = x.shape[1], keys.shape[2]
        step = max(1, self.score_budget // (self.n_heads * S))
        blocks = []
        for a in range(0, L, step):
            m = None if mask is None else mask[..., a : a + step, :]
            blocks.append(self.select(self.scores(x[:, a : a + step], qr[:, a : a + step], keys, offset + a), m))
        return blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=1)

    def select(self, scores: mx.array, mask: Optional[mx.array]) -> mx.array:
        """Top-K of precomputed scores (B, L, S); masked-out keys lose to every allowed key.

        A query with fewer than K allowed keys then also gets some masked ones, which the attention mask
        still excludes (as in transformers and the reference)."""
        if mask is not None:
            scores = mx.where(mask, scores, -float("inf"))
        return mx.argpartition(-scores, kth=self.topk - 1, axis=-1)[..., : self.topk]

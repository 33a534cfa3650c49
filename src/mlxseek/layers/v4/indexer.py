"""DeepSeek-V4 lightning indexer (DeepSeek-V4 report section 2.3.1): on compressed sparse attention (CSA,
ratio-4) layers it picks, per query, the `index_topk` compressed entries the query attends to.

It differs from V3.2's indexer (`indexer.py`): its keys are not per-token but compressed entries from its
own ratio-4 compressor at `index_head_dim`; it reads the query's low-rank latent (q_residual); its
rope is the layer's compress rope; and there is no key norm or key projection besides the compressor.
  score(t, s) = sum_h w_{t,h} * ReLU(q_{t,h} . k_s) * index_head_dim^-0.5,  w = weights_proj(x) * n_heads^-0.5
Only entries whose window is complete (s < (t + 1) // ratio) can be picked.

DeepSeek's kernels also Hadamard-rotate q and k and round them to FP4 (quantisation-aware training);
the rotation leaves q . k unchanged and, like transformers' reference, we skip the rounding.

Shapes: B batch, L queries, T compressed entries, I index heads, c index_head_dim, R q_lora_rank.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from .compressor import Compressor
from .partial_rope import Offset, positions, rope_for_layer

HEAD_CHUNK = 16  # index heads scored at once


def complete_windows(offset: Offset, L: int, T: int, ratio: int) -> mx.array:
    """(1, L, T) bool, or (B, L, T) for per-row offsets (B,): entry s is complete for the query at
    position offset + i (a batched row's padded entries past its own count never are)."""
    ready = (positions(offset, L) + 1) // ratio  # (B|1, L)
    return mx.arange(T) < ready[..., None]


def top_k_mask(scores: mx.array, allowed: mx.array, k: int) -> mx.array:
    """scores (B, L, T), allowed (B|1, L, T) -> (B, L, T) bool: the k best allowed entries per query."""
    T = scores.shape[-1]
    if k >= T:
        return mx.broadcast_to(allowed, scores.shape)
    masked = mx.where(allowed, scores, -mx.inf)
    # The selection is discrete (no gradient reaches the scores through it); stopping it lets a training
    # step differentiate the rest of the layer (benchmarks/train_tiny_v4.py).
    top = mx.stop_gradient(mx.argpartition(-masked, kth=k - 1, axis=-1)[..., :k])
    picked = mx.put_along_axis(mx.zeros(scores.shape, mx.bool_), top, mx.array(True), axis=-1)
    return picked & allowed  # queries with fewer than k ready entries picked some not-ready ones


class V4Indexer(nn.Module):
    """Checkpoint `attn.indexer.{wq_b, weights_proj, compressor.*}`."""

    def __init__(self, cfg: ModelConfig, ratio: int):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.ratio = ratio
        rope = rope_for_layer(cfg, ratio)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, ratio, rope, cfg.rms_norm_eps)
        self.rope = rope  # queries and compressed keys rotate with the same (compress) rope

    def scores(self, x: mx.array, q_residual: mx.array, keys: mx.array, offset: Offset) -> mx.array:
        """Index scores (B, L, T) float32 of the L queries against the compressed keys (B, T, c)."""
        B, L, _ = x.shape
        q = self.q_b_proj(q_residual).reshape(B, L, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = self.rope(q, offset).astype(mx.float32)  # (B, I, L, c)
        kt = keys.astype(mx.float32)[:, None].swapaxes(-1, -2)  # (B, 1, c, T)
        w = (self.weights_proj(x).astype(mx.float32) * self.n_heads**-0.5).transpose(0, 2, 1)[..., None]  # (B, I, L, 1)
        out = None
        for h in range(0, self.n_heads, HEAD_CHUNK):  # bounds the (B, heads, L, T) temporary on long prompts
            part = (mx.maximum(q[:, h : h + HEAD_CHUNK] @ kt, 0) * w[:, h : h + HEAD_CHUNK]).sum(axis=1)
            out = part if out is None else out + part
        return out * self.head_dim**-0.5  # (B, L, T)

    def __call__(self, x: mx.array, q_residual: mx.array, offset: Offset,
                 state: Optional[object] = None) -> mx.array:
        """x (B, L, D), q_residual (B, L, R) -> (B, L, T) bool: which compressed entries each query reads.
        Per-row offsets (B,) with a batch state: each row's top-k among its own complete entries."""
        keys = self.compressor(x, offset, state)
        allowed = complete_windows(offset, x.shape[1], keys.shape[1], self.ratio)
        return top_k_mask(self.scores(x, q_residual, keys, offset), allowed, self.topk)

"""CSA2's indexer (DeepSeek-V4.1): on an index-source layer it scores each query against the index keys of
its KV source (one per compressed entry) and publishes the top-`index_topk` entries, reused by the layers
up to the next index source. Differences from V4's indexer: no Hadamard rotation; keys made only where the
layer is also a KV source (`k_proj`, `k_norm` over the pre-RoPE latent); FP4-rounded q and k.

Two-level top-k (the candidate source layer, V4.1-Flash: layer 20): first keep the `candidate_topk_blocks`
best blocks of `candidate_block_size` entries (block score = its best entry; the query's newest block is
pinned, being partly filled), and every later index source picks only inside them.
Provenance: transformers' V4.1 port (`DeepseekV41Indexer`, `select_candidate_blocks`), mlx-lm 0.32.2.
Shapes: B, L queries, Hi index heads, di index_head_dim, T entries, K blocks.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..norms import RMSNorm
from .fake_quant import fake_fp4


def visible_entries(offset: int, L: int, ratio: int) -> mx.array:
    """(L, 1): how many entries the query at offset + i sees (groups that end at or before it)."""
    return ((offset + 1 + mx.arange(L)) // ratio)[:, None]


def candidate_blocks(scores: mx.array, lens: mx.array, topk_blocks: int, block: int) -> mx.array:
    """scores (B, L, T) with unreachable entries at -inf -> (B, L, T) bool: entries in the chosen blocks."""
    T = scores.shape[-1]
    padded = mx.pad(scores, [(0, 0), (0, 0), (0, -T % block)], constant_values=-mx.inf)
    blocks = padded.reshape(*scores.shape[:2], -1, block).max(axis=-1)  # (B, L, K)
    K = blocks.shape[-1]
    blocks = mx.where(mx.arange(K) == (lens - 1) // block, mx.inf, blocks)  # pin the newest block
    k = min(topk_blocks, K)
    chosen = mx.argpartition(-blocks, k - 1, axis=-1)[..., :k]
    keep = mx.take_along_axis(blocks, chosen, axis=-1) > -mx.inf  # fewer reachable blocks than k: drop -inf
    mask = mx.put_along_axis(mx.zeros(blocks.shape, mx.bool_), chosen, keep, axis=-1)
    return mx.repeat(mask, block, axis=-1)[..., :T]


class CSA2Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ratio = cfg.compress_ratios[layer_idx]
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.is_candidate_source = layer_idx == cfg.candidate_source and cfg.candidate_topk_blocks > 0
        self.topk_blocks, self.block = cfg.candidate_topk_blocks, cfg.candidate_block_size
        self.fake_quant = True
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)
        if layer_idx in cfg.kv_source_layer_ids:
            self.k_proj = nn.Linear(cfg.head_dim, self.head_dim, bias=False)
            self.k_norm = RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)

    def keys(self, latent: mx.array, first: int, rope) -> mx.array:
        """Pre-RoPE latents (B, G, d) of groups first.. -> index keys (B, G, di)."""
        k = rope(self.k_norm(self.k_proj(latent)), first * self.ratio, stride=self.ratio)
        return fake_fp4(k, 32) if self.fake_quant else k

    def __call__(self, x, q_residual, index_k: mx.array, candidates: Optional[mx.array], rope, offset: int):
        """-> (picked (B, L, T) bool, candidates (B, L, T) bool or None, to hand to the next index sources)."""
        B, L, _ = x.shape
        q = self.q_b_proj(q_residual).reshape(B, L, self.n_heads, self.head_dim)
        q = rope(q.transpose(0, 2, 1, 3), offset)  # (B, Hi, L, di)
        if self.fake_quant:
            q = fake_fp4(q, 32)
        s = mx.maximum(q.astype(mx.float32) @ index_k.astype(mx.float32)[:, None].swapaxes(-1, -2), 0.0)
        w = self.weights_proj(x).astype(mx.float32) * self.n_heads**-0.5  # (B, L, Hi)
        scores = (s * self.head_dim**-0.5 * w.transpose(0, 2, 1)[..., None]).sum(axis=1)  # (B, L, T)
        T = index_k.shape[1]
        lens = visible_entries(offset, L, self.ratio)
        scores = mx.where(mx.arange(T)[None] < lens, scores, -mx.inf)
        if self.is_candidate_source:
            candidates = candidate_blocks(scores, lens, self.topk_blocks, self.block)
        elif candidates is not None:
            scores = mx.where(candidates, scores, -mx.inf)
        k = min(self.topk, T)
        chosen = mx.argpartition(-scores, k - 1, axis=-1)[..., :k]
        valid = mx.take_along_axis(scores, chosen, axis=-1) > -mx.inf  # early queries see fewer than k
        return mx.put_along_axis(mx.zeros(scores.shape, mx.bool_), chosen, valid, axis=-1), candidates

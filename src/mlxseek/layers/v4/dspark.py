"""DSpark, the block drafter of DeepSeek-V4-Flash-0731, V4-Pro-0813 and V4-Flash-DSpark (checkpoint
`mtp.{0..S-1}.*`; DeepSeek's `inference/model.py` DSpark classes, as transcribed line by line in
warpfront/hipfire docs/design/2026-06-28-dspark-deepseek4-forward-spec.md).

  context   main_x_t = main_norm(main_proj([mean_n h^(l)_t for l in dspark_target_layer_ids]))   (B, L, D)
            h^(l)_t is target layer l's *output* streams at position t (the hipfire spec: "after the
            block runs"); each stage turns main_x_t into one key/value row of its sliding ring
            (its own wkv + kv_norm + RoPE at t) and keeps the last `sliding_window` of them.
  block     [y, NOISE x (K-1)] at positions P..P+K-1 (y: the last sampled token, P: its position),
            embedded with the shared embedding, copied over the n hc streams, through S stages that are
            full V4 blocks (mHC + MoE) whose attention reads only the ring plus the K block rows, with
            no causal mask inside the block (every slot sees every slot), and sinks.
  head      x = hc_head(streams) (a sigmoid gate, no Sinkhorn); logits_i = lm_head(norm(x_i)), then left to
            right: logits_i += markov_w2 . markov_w1[out_i] (rank-r bias from the previous token, float32),
            out_{i+1} = sample(logits_i); confidence_i = sigmoid(proj([x_i, markov_w1[out_i]])).

Shapes: B batch, K block slots, S ring rows, n hc streams, D hidden, d head_dim, V vocab, r Markov rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..norms import RMSNorm
from .attention import V4Attention
from .block import V4DecoderLayer
from .mhc import HyperHead, expand_streams


@dataclass
class BlockContext:
    """What one stage's attention reads besides the block: its ring rows (B, S, d), already rotated at
    their own positions, and the block's first position."""

    ring: mx.array
    position: int


class DSparkAttention(V4Attention):
    """A stage's attention: V4's projections, sinks and output path; keys are the ring plus the block."""

    def __call__(self, x: mx.array, ctx: BlockContext) -> mx.array:
        """x (B, K, D) block slots -> (B, K, D)."""
        q, _ = self.queries(x, ctx.position)
        block = self.keys(x, ctx.position)  # (B, K, d)
        keys = mx.concatenate([ctx.ring.astype(block.dtype), block], axis=1)[:, None]  # (B, 1, S + K, d)
        return self.attend(q, keys, None, ctx.position)  # non-causal: every slot sees ring and block


class DSparkStage(V4DecoderLayer):
    """A V4 block (mHC, attention, MoE) whose attention is DSparkAttention (sliding-only: ratio 0)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.self_attn = DSparkAttention(cfg, layer_idx)


class MarkovHead(nn.Module):
    """markov_w1 (V, r) read as an embedding of the previous token, markov_w2 (V, r) as a head; float32."""

    def __init__(self, vocab: int, rank: int):
        super().__init__()
        self.markov_w1 = nn.Embedding(vocab, rank)
        self.markov_w2 = nn.Linear(rank, vocab, bias=False)

    def __call__(self, prev: mx.array) -> tuple[mx.array, mx.array]:
        """prev (B,) token ids -> (logit bias (B, V), embedding (B, r)), float32."""
        emb = self.markov_w1(prev).astype(mx.float32)
        return emb @ self.markov_w2.weight.astype(mx.float32).T, emb


class ConfidenceHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1, bias=False)

    def __call__(self, h: mx.array, emb: mx.array) -> mx.array:
        """h (B, D), emb (B, r) -> acceptance score (B,) in (0, 1), float32."""
        x = mx.concatenate([h.astype(mx.float32), emb.astype(mx.float32)], axis=-1)
        return mx.sigmoid(x @ self.proj.weight.astype(mx.float32).T)[..., 0]


class DSpark(nn.Module):
    def __init__(self, cfg: ModelConfig, stages: int):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.target_layer_ids = list(cfg.dspark_target_layer_ids)
        self.block_size, self.noise_token_id = cfg.dspark_block_size, cfg.dspark_noise_token_id
        self.ring_size = cfg.sliding_window
        self.main_proj = nn.Linear(len(self.target_layer_ids) * D, D, bias=False)
        self.main_norm = RMSNorm(D, eps=eps)
        # Stage s sits after the main stack: its compress_ratios entry is num_hidden_layers + s (0 in releases).
        self.stages = [DSparkStage(cfg, cfg.num_hidden_layers + s) for s in range(stages)]
        self.hc_head = HyperHead(D, cfg.hc_mult, cfg.hc_eps, eps)
        self.norm = RMSNorm(D, eps=eps)
        self.markov_head = MarkovHead(cfg.vocab_size, cfg.dspark_markov_rank)
        self.confidence_head = ConfidenceHead(D + cfg.dspark_markov_rank)
        self.hc_mult = cfg.hc_mult

    def context_rows(self, taps: mx.array, offset: int) -> list[mx.array]:
        """taps (B, L, T*D) target hiddens at positions offset.. -> one rotated ring row block (B, L, d) per stage."""
        main_x = self.main_norm(self.main_proj(taps))
        return [stage.self_attn.keys(main_x, offset) for stage in self.stages]

    def block(self, embeds: mx.array, ids: mx.array, rings: list[mx.array], position: int) -> mx.array:
        """embeds (B, K, D) of ids (B, K) at positions position.. -> the head hidden x (B, K, D), pre-norm."""
        h = expand_streams(embeds, self.hc_mult)
        for stage, ring in zip(self.stages, rings):
            h = stage(h, ids, BlockContext(ring, position))
        return self.hc_head(h)

"""The DSpark drafter of DeepSeek-V4.1-Flash (checkpoint `mtp.{0..S-1}.*`): V4's DSpark (`layers.v4.dspark`)
with V4.1 stages. What agrees with V4 is reused as is: the context rows (mean of the target layers' streams
-> main_proj -> main_norm -> each stage's own key projection at its position), the block
[y, NOISE x (K-1)] attending its stage's ring plus the whole block (no causal mask), and the drafter
protocol (`speculative.dspark_drafter`). What differs:
  stages      V4.1 blocks: lagged mHC (a site's `pre` collapses the streams for the next site), V4.1
              attention (q normalised only in its low-rank part, FP8-rounded KV rows), and the drafter's
              own MoE sizes (`dspark_n_routed_experts`, `dspark_num_experts_per_tok`; 128 top-3 released)
  head        no hc_head: the streams collapse with the last stage's FFN `pre`, as the V4.1 backbone does
  markov      `markov_head.embed` (V, r) and `markov_head.head` (V, r) instead of markov_w1 / markov_w2
  confidence  [1, hidden + rank], as V4's
  target      the streams *entering* each target layer (its attention input, as transformers' V4.1 config
              documents `dspark_target_layer_ids`), where V4's DSpark reads a target layer's output
Shapes: B batch, K block slots, S ring rows, n hc streams, D hidden, d head_dim, V vocab, r Markov rank.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..norms import RMSNorm
from ..v4.dspark import BlockContext, ConfidenceHead
from .attention import CSA2Attention
from .block import V41DecoderLayer, collapse, expand


def stage_config(cfg: ModelConfig, stages: int) -> ModelConfig:
    """cfg for the stages: ratio 0 (window-only) at their indices past the main stack, the drafter's MoE."""
    return cfg.replace(compress_ratios=list(cfg.compress_ratios) + [0] * stages, engram_layer_ids=[],
                       n_routed_experts=cfg.dspark_n_routed_experts or cfg.n_routed_experts,
                       num_experts_per_tok=cfg.dspark_num_experts_per_tok or cfg.num_experts_per_tok)


class DSpark41Attention(CSA2Attention):
    """A stage's attention: V4.1's projections, sinks and output path; keys are the ring plus the block."""

    def __call__(self, x: mx.array, ctx: BlockContext, shared: dict) -> mx.array:
        q, _ = self.queries(x, ctx.position)  # (B, H, K, d)
        block = self.keys(x, ctx.position)
        keys = mx.concatenate([ctx.ring.astype(block.dtype), block], axis=1)  # non-causal: every slot sees all
        return self.attend(q, keys, None, ctx.position, x.dtype)


class DSpark41Stage(V41DecoderLayer):
    """A V4.1 block (lagged mHC, attention, MoE) whose attention is DSpark41Attention; the `cache` argument
    of V41DecoderLayer carries the stage's BlockContext."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.self_attn = DSpark41Attention(cfg, layer_idx)


class MarkovHead41(nn.Module):
    """`embed` (V, r) read as an embedding of the previous token, `head` (V, r) as a head; float32."""

    def __init__(self, vocab: int, rank: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, rank)
        self.head = nn.Linear(rank, vocab, bias=False)

    def __call__(self, prev: mx.array) -> tuple[mx.array, mx.array]:
        """prev (B,) token ids -> (logit bias (B, V), embedding (B, r)), float32."""
        emb = self.embed(prev).astype(mx.float32)
        return emb @ self.head.weight.astype(mx.float32).T, emb


class DSpark41(nn.Module):
    def __init__(self, cfg: ModelConfig, stages: int):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.target_layer_ids = list(cfg.dspark_target_layer_ids)
        self.block_size, self.noise_token_id = cfg.dspark_block_size, cfg.dspark_noise_token_id
        self.ring_size, self.hc_mult = cfg.sliding_window, cfg.hc_mult
        self.main_proj = nn.Linear(len(self.target_layer_ids) * D, D, bias=False)
        self.main_norm = RMSNorm(D, eps=eps)
        scfg = stage_config(cfg, stages)
        self.stages = [DSpark41Stage(scfg, cfg.num_hidden_layers + s) for s in range(stages)]
        self.norm = RMSNorm(D, eps=eps)
        self.markov_head = MarkovHead41(cfg.vocab_size, cfg.dspark_markov_rank)
        self.confidence_head = ConfidenceHead(D + cfg.dspark_markov_rank)

    def context_rows(self, taps: mx.array, offset: int) -> list[mx.array]:
        """taps (B, L, T*D) target hiddens at positions offset.. -> one rotated ring row block (B, L, d) per stage."""
        main_x = self.main_norm(self.main_proj(taps))
        return [stage.self_attn.keys(main_x, offset) for stage in self.stages]

    def block(self, embeds: mx.array, ids: mx.array, rings: list[mx.array], position: int) -> mx.array:
        """embeds (B, K, D) at positions position.. -> the head hidden x (B, K, D), pre-norm."""
        h, pre = expand(embeds, self.hc_mult)  # as the backbone
        for stage, ring in zip(self.stages, rings):
            h, pre = stage(h, pre, BlockContext(ring, position), {})
        return collapse(h, pre)

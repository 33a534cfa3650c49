"""DeepSeekMoE (DeepSeek-V2 paper section 2.2, V3 report section 2.1.2): a router picks K of E routed
experts per token, their weighted outputs are summed, and always-on shared experts are added.

One class for every family and placement: V4 swaps in its router (hash / sqrtsoftplus) and clamped
SwiGLU experts (`layers.v4.moe`); expert parallelism holds a contiguous range of the experts and sums
the partial outputs over a `mx.distributed` group, as mlx-lm's sharded MoE does.
Shapes: T tokens (leading dims), D hidden, E experts, K experts per token.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig
from .experts import RoutedExperts
from .mlp import MLP
from .router import route
from .v4.moe import ClampedExperts, ClampedMLP, V4Gate


class MoEGate(nn.Module):
    """Router parameters: `weight` (E, D) and, for noaux_tc, `e_score_correction_bias` (E,).
    Kept out of quantization: routing decisions are sensitive to small errors."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E = cfg.n_routed_experts
        self.weight = mx.zeros((E, cfg.hidden_size))
        if cfg.topk_method == "noaux_tc":
            self.e_score_correction_bias = mx.zeros((E,))
        # A partial, not a dict attribute: nn.Module would treat a dict as a child in the parameter tree.
        self._route = partial(
            route,
            top_k=cfg.num_experts_per_tok, topk_method=cfg.topk_method, scoring_func=cfg.scoring_func,
            n_group=cfg.num_groups, topk_group=cfg.num_topk_groups, norm_topk_prob=cfg.norm_topk_prob,
            routed_scaling_factor=cfg.routed_scaling_factor,
            scale_after_norm=cfg.routed_scale_after_norm,
        )

    def __call__(self, x: mx.array, token_ids: Optional[mx.array] = None):
        logits = x.astype(mx.float32) @ self.weight.astype(mx.float32).T  # (..., E)
        return self._route(logits, self.get("e_score_correction_bias"))


class DeepSeekMoE(nn.Module):
    """experts: hold only experts [e0, e1) (expert parallelism; tokens routed elsewhere contribute zero
    here) and `all_sum` the partial outputs over `group`."""

    def __init__(self, cfg: ModelConfig, layer_idx: Optional[int] = None, *,
                 experts: Optional[tuple[int, int]] = None, group=None, v4: bool = False):
        super().__init__()
        D, inter, E = cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts
        self.first, last = experts if experts is not None else (0, E)
        self.count, self.group = last - self.first, group
        if v4:  # V4 and V4.1 blocks ask for V4's router and clamped SwiGLU experts
            limit = cfg.swiglu_limit or 0.0
            self.gate = V4Gate(cfg, layer_idx)
            self.switch_mlp = ClampedExperts(D, inter, self.count, limit)
            self.shared_experts = ClampedMLP(D, inter * (cfg.n_shared_experts or 1), limit)
        else:
            self.gate = MoEGate(cfg)
            self.switch_mlp = RoutedExperts(D, inter, self.count)
            if cfg.n_shared_experts:
                self.shared_experts = MLP(D, inter * cfg.n_shared_experts)

    def __call__(self, x: mx.array, token_ids: Optional[mx.array] = None, reference: bool = False) -> mx.array:
        """x (..., D); token_ids (...) for V4's hash-routed layers -> (..., D)."""
        inds, weights = self.gate(x, token_ids)  # (..., K); the router is replicated on every rank
        experts = self.switch_mlp.reference if reference else self.switch_mlp
        if self.group is None:
            y = self._routed(experts, x, inds, weights).sum(axis=-2)
        else:
            local = inds - self.first
            mine = (local >= 0) & (local < self.count)
            # Other ranks' experts run on local expert 0 and are zeroed: one fixed-shape gather, no sync.
            y = self._routed(experts, x, mx.where(mine, local, 0), weights)  # (..., K, D)
            y = mx.distributed.all_sum(mx.where(mine[..., None], y, 0).sum(axis=-2), group=self.group)
        if "shared_experts" in self:
            y = y + self.shared_experts(x)
        return y

    def _routed(self, experts, x: mx.array, inds: mx.array, weights: mx.array) -> mx.array:
        """The K experts' weighted outputs (..., K, D). With rounded matmul inputs the route weight goes in
        before the down projection, whose input is rounded (DeepSeek's Expert.forward); otherwise after."""
        if getattr(self.switch_mlp, "input_rounding", None) is None:  # paged experts never round
            return experts(x, inds) * weights[..., None].astype(x.dtype)
        return experts(x, inds, weights.astype(x.dtype))

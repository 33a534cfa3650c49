"""DeepSeekMoE (DeepSeek-V2 paper section 2.2, V3 report section 2.1.2): a router picks K of E routed
experts per token, their weighted outputs are summed, and always-on shared experts are added."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig
from .experts import RoutedExperts
from .mlp import MLP
from .router import route


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
            scale_after_norm=cfg.model_type != "deepseek_v2",
        )

    def __call__(self, x: mx.array):
        logits = x.astype(mx.float32) @ self.weight.astype(mx.float32).T  # (..., E)
        return self._route(logits, self.get("e_score_correction_bias"))


class DeepSeekMoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = MoEGate(cfg)
        self.switch_mlp = RoutedExperts(cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts)
        if cfg.n_shared_experts:
            self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def __call__(self, x: mx.array, reference: bool = False) -> mx.array:
        inds, weights = self.gate(x)
        experts = self.switch_mlp.reference if reference else self.switch_mlp
        y = (experts(x, inds) * weights[..., None].astype(x.dtype)).sum(axis=-2)  # (..., D)
        if "shared_experts" in self:
            y = y + self.shared_experts(x)
        return y

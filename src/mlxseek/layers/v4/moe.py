"""DeepSeek-V4's MoE parts (composed by the one `layers.moe.DeepSeekMoE`): a router hash-routed by token
id in the first `num_hash_layers` layers, otherwise sqrtsoftplus noaux_tc, and SwiGLU-clamped experts.

SwiGLU clamp (`swiglu_limit`, DeepSeek-V4 `inference/model.py` `Expert.forward`): the gate
pre-activation is clipped from above and the up projection to [-limit, limit], in routed and shared
experts alike. Shapes: T tokens (leading dims), D hidden, E experts, K experts per token.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ...config import ModelConfig
from ..experts import RoutedExperts
from ..router import hash_route, normalize_weights, route


def clamped_swiglu(g: mx.array, u: mx.array, limit: float) -> mx.array:
    if limit and limit > 0:
        g, u = mx.minimum(g, limit), mx.clip(u, -limit, limit)
    return nn.silu(g) * u


class ClampedExperts(RoutedExperts):
    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, limit: float):
        super().__init__(hidden_size, intermediate_size, num_experts)
        self.limit = limit

    def _activate(self, g: mx.array, u: mx.array) -> mx.array:
        return clamped_swiglu(g, u, self.limit)


class ClampedMLP(nn.Module):
    """The shared expert: down(clamped_swiglu(gate(x), up(x)))."""

    input_rounding = None  # as RoutedExperts': a function rounding each matmul input (V4.1's set_fake_quant)

    def __init__(self, hidden_size: int, intermediate_size: int, limit: float):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.limit = limit

    def __call__(self, x: mx.array) -> mx.array:
        r = self.input_rounding or (lambda a: a)
        x = r(x)
        return self.down_proj(r(clamped_swiglu(self.gate_proj(x), self.up_proj(x), self.limit)))


class V4Gate(nn.Module):
    """Router parameters: `weight` (E, D); `tid2eid` (V, K) int for hash layers, else
    `e_score_correction_bias` (E,). Kept in float32 by the loader (routing is precision-sensitive)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.is_hash = cfg.is_hash_layer(layer_idx)
        self.weight = mx.zeros((E, cfg.hidden_size))
        if self.is_hash:
            self.tid2eid = mx.zeros((cfg.vocab_size, K), dtype=mx.int32)
        else:
            self.e_score_correction_bias = mx.zeros((E,))
        self.scoring_func, self.scale = cfg.scoring_func, cfg.routed_scaling_factor
        # Selection only: weights are normalised and scaled below, the same way for hash layers.
        self._route = partial(route, top_k=K, topk_method=cfg.topk_method, scoring_func=cfg.scoring_func,
                              norm_topk_prob=False, routed_scaling_factor=1.0)

    def __call__(self, x: mx.array, token_ids: mx.array) -> tuple[mx.array, mx.array]:
        """x (..., D), token_ids (...) -> (inds (..., K), weights (..., K) float32)."""
        logits = x.astype(mx.float32) @ self.weight.astype(mx.float32).T  # (..., E)
        if self.is_hash:
            return hash_route(logits, token_ids, self.tid2eid, scoring_func=self.scoring_func,
                              routed_scaling_factor=self.scale)
        inds, weights = self._route(logits, self.e_score_correction_bias)
        return inds, normalize_weights(weights, self.scale)

"""DeepSeek-V4 routing as pure functions: hash routing by token id, and the shared weight rule.

Shapes: T tokens (any leading dims), E routed experts, K experts per token, V vocabulary.

V4's first `num_hash_layers` MoE layers do not choose experts by score: a frozen table
`tid2eid` (V, K) maps each token id to its K experts (DeepSeek-V4 report section 2.1). The router's
scores still weight the chosen experts. In every V4 MoE layer the K weights are normalised to sum to
one and multiplied by `routed_scaling_factor` (DeepSeek-V4 `inference/model.py`, `Gate.forward`).
"""

from __future__ import annotations

import mlx.core as mx

from .router import score


def normalize_weights(weights: mx.array, routed_scaling_factor: float) -> mx.array:
    """(..., K) -> weights / their sum * routed_scaling_factor (float32)."""
    return weights / (weights.sum(axis=-1, keepdims=True) + 1e-20) * routed_scaling_factor


def hash_route(
    logits: mx.array, token_ids: mx.array, tid2eid: mx.array, *, scoring_func: str, routed_scaling_factor: float
) -> tuple[mx.array, mx.array]:
    """logits (..., E), token_ids (...) -> (inds (..., K) uint32 = tid2eid[token_ids], weights (..., K))."""
    inds = tid2eid[token_ids].astype(mx.uint32)
    weights = mx.take_along_axis(score(logits, scoring_func), inds, axis=-1)
    return inds, normalize_weights(weights, routed_scaling_factor)

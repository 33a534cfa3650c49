"""DeepSeekMoE routing as pure functions: scores -> (expert ids, combine weights).

Shapes: T tokens (any leading dims), E routed experts, G groups, K experts per token.

- V2: softmax scores; "greedy" top-k, or "group_limited_greedy" (best topk_group groups by max score).
- V3: sigmoid scores; "noaux_tc": the bias-corrected scores pick groups (by the sum of their top-2)
  and experts, but the uncorrected scores weight them (DeepSeek-V3 report, section 2.1.2).
- V4: "sqrtsoftplus" scores sqrt(softplus(logit)) with noaux_tc and a single group. Its first
  `num_hash_layers` layers do not choose experts by score: a frozen table `tid2eid` (V, K) maps each
  token id to its K experts (`hash_route`, DeepSeek-V4 report section 2.1), weighted by the same scores.
  In every V4 MoE layer the K weights are normalised to sum to one and multiplied by
  `routed_scaling_factor` (DeepSeek-V4 `inference/model.py`, `Gate.forward`).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

SCORINGS = ("softmax", "sigmoid", "sqrtsoftplus")


def score(logits: mx.array, scoring_func: str) -> mx.array:
    logits = logits.astype(mx.float32)  # routing is always done in float32
    if scoring_func == "sqrtsoftplus":
        return mx.sqrt(nn.softplus(logits))
    return mx.softmax(logits, axis=-1) if scoring_func == "softmax" else mx.sigmoid(logits)


def limit_groups(choice: mx.array, n_group: int, topk_group: int, group_score: str) -> mx.array:
    """Mask (to -inf) every expert outside the `topk_group` best of `n_group` groups."""
    if n_group <= 1 or topk_group >= n_group:
        return choice
    grouped = mx.unflatten(choice, -1, (n_group, -1))  # (T, G, E/G)
    if group_score == "top2_sum":
        gs = mx.topk(grouped, 2, axis=-1).sum(axis=-1)  # (T, G)
    else:
        gs = grouped.max(axis=-1)
    drop = mx.argpartition(gs, kth=n_group - topk_group - 1, axis=-1)[..., : n_group - topk_group]
    grouped = mx.put_along_axis(grouped, drop[..., None], mx.array(-float("inf"), choice.dtype), axis=-2)
    return mx.flatten(grouped, -2, -1)


@partial(mx.compile, shapeless=False)
def _route(logits, bias, top_k, n_group, topk_group, method_id, scoring_id, norm, scale, scale_after_norm):
    scores = score(logits, SCORINGS[scoring_id])
    # Selection only (the weights below come from `scores`): no gradient, so the model can be trained.
    choice = mx.stop_gradient(scores + bias if method_id == 2 else scores)
    choice = limit_groups(choice, n_group, topk_group, "top2_sum" if method_id == 2 else "max")
    inds = mx.argpartition(-choice, kth=top_k - 1, axis=-1)[..., :top_k]
    weights = mx.take_along_axis(scores, inds, axis=-1)
    if norm and top_k > 1:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
        if scale_after_norm:
            weights = weights * scale
    else:
        weights = weights * scale
    return inds, weights


_METHODS = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}


def route(
    logits: mx.array,
    bias: mx.array | None,
    *,
    top_k: int,
    topk_method: str,
    scoring_func: str,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = False,
    routed_scaling_factor: float = 1.0,
    scale_after_norm: bool = True,
) -> tuple[mx.array, mx.array]:
    """Returns (inds (..., K) uint32, weights (..., K) float32).

    `scale_after_norm=False` is DeepSeek-V2's rule: normalised weights are not scaled again.
    """
    method = _METHODS[topk_method]
    if method == 1 and n_group <= 1:
        method = 0
    if bias is None:
        bias = mx.zeros((logits.shape[-1],), mx.float32)
    if method == 0:
        n_group = topk_group = 1
    return _route(
        logits, bias.astype(mx.float32), top_k, n_group, topk_group, method,
        SCORINGS.index(scoring_func), bool(norm_topk_prob), float(routed_scaling_factor),
        bool(scale_after_norm),
    )


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

"""Chunked prefill: how many prompt tokens each forward pass takes.

A long prompt is fed in chunks so activation memory stays bounded. Attention scores grow with the
context as well: a fixed 512-token chunk over an 8K cache builds 0.27 GB of float32 scores per matrix at
16 heads (2.1 GB at V3's 128). So chunks shrink as the context grows, down to MIN_PREFILL_STEP tokens.
The first chunk's size and the score budget are the backend policy's (`mlxseek.backend`: 512 tokens and
64 MiB on the CPU, 2048 and 512 MiB on a GPU).
"""

from __future__ import annotations

from typing import Optional

from ..backend import policy_of

DEFAULT_PREFILL_STEP = 512  # the CPU policy's first chunk (kept for callers that name it)
MIN_PREFILL_STEP = 32


def prefill_chunk(model, context: int, step: Optional[int] = None) -> int:
    """Prompt tokens for the next prefill forward after `context` cached tokens: at most `step` (None: the
    model's backend policy), and few enough that heads * chunk * (context + chunk) float32 scores fit in
    the policy's `prefill_scores_bytes`."""
    policy = policy_of(model)
    step = step or policy.prefill_step
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None) or 1
    fit = policy.prefill_scores_bytes // (4 * heads * (context + step))
    return max(min(step, MIN_PREFILL_STEP), min(step, fit))


def cached_tokens(cache: list) -> int:
    """Tokens already in a per-layer cache list (0 for an empty or missing one)."""
    return getattr(cache[0], "offset", 0) if cache else 0

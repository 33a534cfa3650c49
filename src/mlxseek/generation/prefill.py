"""Chunked prefill: how many prompt tokens each forward pass takes.

A long prompt is fed in chunks so activation memory stays bounded. Attention scores grow with the
context as well: a fixed 512-token chunk over an 8K cache builds 0.27 GB of float32 scores per matrix at
16 heads (2.1 GB at V3's 128). So chunks shrink as the context grows, down to MIN_PREFILL_STEP tokens.
"""

from __future__ import annotations

DEFAULT_PREFILL_STEP = 512  # prompt tokens per forward pass at the start of a prompt
PREFILL_SCORES_BYTES = 64 << 20  # largest float32 (heads x chunk x context) score matrix one chunk may build
MIN_PREFILL_STEP = 32


def prefill_chunk(model, context: int, step: int) -> int:
    """Prompt tokens for the next prefill forward after `context` cached tokens: at most `step`, and few
    enough that heads * chunk * (context + chunk) float32 scores fit in PREFILL_SCORES_BYTES."""
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None) or 1
    fit = PREFILL_SCORES_BYTES // (4 * heads * (context + step))
    return max(min(step, MIN_PREFILL_STEP), min(step, fit))


def cached_tokens(cache: list) -> int:
    """Tokens already in a per-layer cache list (0 for an empty or missing one)."""
    return getattr(cache[0], "offset", 0) if cache else 0

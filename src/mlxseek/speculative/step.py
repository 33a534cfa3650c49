"""MTP self-speculative decoding: the model's own Multi-Token-Prediction module drafts, the model verifies.

One cycle, with y the last sampled token (not yet fed to the model) and h the main model's features
(`model.trunk`) at the last fed position:
  draft   d_1 = MTP(h, y); chained for k > 1: d_{i+1} = MTP(g_i, d_i) with g_i the MTP's own output
  verify  one forward of the main model over [y, d_1..d_k] gives its next-token distributions p_0..p_k
  accept  greedy: the longest prefix with d_i == argmax p_{i-1}, then the main model's own next token;
          sampling: speculative (rejection) sampling -- accept d_i with probability min(1, p/q), on the
          first rejection draw from normalize(max(p - q, 0)), else draw the bonus token from p_k -- so the
          output distribution is exactly the sampler's (Leviathan et al. 2023, Chen et al. 2023)
  rollback trim the main caches by the k - a rejected tokens and the MTP cache by its k - 1 chained
          entries (which saw the MTP's own output, not the model's), then feed the MTP the accepted
          positions with the model's true features; that same call drafts the next cycle.
The MTP block's cache (`mlxseek.cache.mtp.MTPCache`) holds one entry per position t (pair h_t, token
t+1), kept in step with the main cache, and lives in the prompt cache after the per-layer caches.
Greedy output is token-for-token the plain decoder's.
"""

from __future__ import annotations

from typing import Generator, Optional, Sequence

import mlx.core as mx

from ..backend import policy_of
from ..cache.mtp import MTPCache
from ..errors import GenerationError
from ..generation.steps import generate_step, split_prompt_cache
from . import costs as draft_costs
from .decoder import SpeculativeDecoder
from .policy import AUTO_MIN_SPEEDUP, AUTO_WARMUP_STEPS, DraftPolicy, DraftStats
from .sampling import is_greedy

DRAFT_MODES = ("mtp", "auto")
__all__ = ["AUTO_MIN_SPEEDUP", "AUTO_WARMUP_STEPS", "DRAFT_MODES", "check_draft_args", "speculative_generate_step"]


def check_draft_args(model, draft: str, num_draft: int, sampler) -> None:
    if draft not in DRAFT_MODES:
        raise GenerationError(f"draft={draft!r}: choose one of {', '.join(DRAFT_MODES)} (or None for plain decoding)")
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
        raise GenerationError(f"num_draft must be a positive integer, got {num_draft!r}")
    if getattr(model, "mtp", None) is None:
        raise GenerationError(
            "draft='mtp' needs the model's multi-token-prediction module, and this model has none "
            "(config.json num_nextn_predict_layers is 0, the folder was converted with --drop-mtp, "
            "or it was loaded with with_mtp=False); generate without draft"
        )
    if not getattr(model, "supports_mtp_drafting", False):
        raise GenerationError(
            f"draft='mtp' is not supported for {model.config.model_type} yet; generate without draft"
        )
    if not is_greedy(sampler) and not callable(getattr(sampler, "probs", None)):
        raise GenerationError(
            "speculative sampling needs the sampler's distribution: build the sampler with "
            "mlxseek.speculative.make_sampler(temp=..., top_p=...) instead of mlx_lm's make_sampler"
        )


def mtp_cache_for(model, prompt_cache: list) -> MTPCache:
    """The prompt cache's MTP entry, appended if the cache has none (a cache from `model.make_cache()`);
    reset when the main cache moved without it (plain decoding or a trim since the last drafting call).
    RoPE is relative, so an MTP cache restarted at 0 beside a main cache at P is consistent; it only
    lacks older context."""
    layers, rest = split_prompt_cache(model, prompt_cache)
    entry = rest[0] if rest and isinstance(rest[0], MTPCache) else None
    if entry is None:
        entry = model.make_mtp_cache()
        prompt_cache.insert(len(layers), entry)
    elif not entry.in_step_with(layers[0].offset):
        entry.reset(model.make_mtp_cache().block)
    return entry


def speculative_generate_step(
    prompt: mx.array,
    model,
    *,
    max_tokens: int,
    draft: str = "mtp",
    num_draft: int = 1,
    sampler=None,
    logits_processors: Optional[Sequence] = None,
    prompt_cache: Optional[list] = None,
    prefill_step_size: Optional[int] = None,
    progress=None,
    stats: Optional[DraftStats] = None,
    policy: Optional[DraftPolicy] = None,
    constraint=None,
) -> Generator[tuple[int, mx.array], None, None]:
    """Yield (token, logprobs (V,)) like `mlxseek.generation.generate_step`, drafting with the MTP module.

    draft="mtp" always drafts `num_draft` tokens per step; "auto" follows the backend policy's draft_auto
    (or `policy.mode`): "measure" (CPU) first measures what a verify step costs on this device
    (`measure_draft_costs`, kept in the prompt cache's MTP entry) and drafts only while the expected
    speedup, from the measured acceptance, exceeds AUTO_MIN_SPEEDUP; "acceptance" (GPU) drafts at once
    and stops when tokens per step fall to AUTO_MIN_TOKENS_PER_STEP. `stats` (a DraftStats)
    counts as tokens are produced; `policy` (a DraftPolicy) holds the on/off decision and its reasons.
    `constraint` (a TokenConstraint) masks every position, drafted ones included (see its `verify`).
    """
    check_draft_args(model, draft, num_draft, sampler)
    stats = stats if stats is not None else DraftStats()
    policy = policy if policy is not None else DraftPolicy()
    policy.auto = draft == "auto"
    if policy.auto and policy.mode is None:
        policy.mode = policy_of(model).draft_auto
    cache = prompt_cache if prompt_cache is not None else model.make_cache()
    entry = mtp_cache_for(model, cache)
    if policy.auto and policy.mode == "measure":
        if num_draft not in entry.costs:
            entry.costs[num_draft] = draft_costs.measure_draft_costs(model, num_draft)
        policy.calibrate(entry.costs[num_draft], num_draft)
        if not policy.drafting:  # even perfect drafts would not pay here
            steps = generate_step(prompt, model, max_tokens=max_tokens, sampler=sampler,
                                  logits_processors=logits_processors, prompt_cache=cache,
                                  prefill_step_size=prefill_step_size, progress=progress, constraint=constraint)
            for n, out in enumerate(steps):
                stats.verify_steps += n > 0  # every token after the prefill's is one decode forward
                yield out
            return
    layers, _ = split_prompt_cache(model, cache)
    dec = SpeculativeDecoder(model, layers, entry, sampler=None if is_greedy(sampler) else sampler,
                             processors=list(logits_processors or []), num_draft=num_draft, stats=stats,
                             policy=policy, keep_state=prompt_cache is not None, constraint=constraint)
    try:
        yield from dec.run(prompt, max_tokens, prefill_step_size, progress)
    finally:
        dec.settle()

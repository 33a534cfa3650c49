"""Self-speculative decoding: the model's own drafter (MTP, or DSpark on V4-0731/0813) drafts, the model verifies.

One cycle, with y the last sampled token (not yet fed to the model) and h the main model's features
(`model.trunk`) at the last fed position:
  draft   MTP: d_1 = MTP(h, y); chained for k > 1: d_{i+1} = MTP(g_i, d_i) with g_i the MTP's own output;
          DSpark: one block forward over [y, NOISE x (k-1)] (see `dspark_drafter`)
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
from ..cache.draft import DraftCache
from ..errors import DrafterMissingError, GenerationError
from ..generation.steps import generate_step, split_prompt_cache
from . import costs as draft_costs
from .decoder import SpeculativeDecoder
from .drafter import make_draft_cache, make_drafter
from .policy import AUTO_MIN_SPEEDUP, AUTO_WARMUP_STEPS, DraftPolicy, DraftStats
from .sampling import is_greedy

DRAFT_MODES = ("mtp", "dspark", "auto", "none")
__all__ = ["AUTO_MIN_SPEEDUP", "AUTO_WARMUP_STEPS", "DRAFT_MODES", "check_draft_args", "resolve_drafter",
           "speculative_generate_step"]

_WHERE = {
    "mtp": "config.json num_nextn_predict_layers is 0, the folder was converted with --drop-mtp, or it was "
           "loaded with with_mtp=False",
    "dspark": "config.json has no dspark_target_layer_ids (DSpark ships with V4-Flash-0731, V4-Pro-0813 and "
              "V4-Flash-DSpark), the folder was converted with --drop-drafter, or it was loaded with with_mtp=False",
}


def resolve_drafter(model, draft: str) -> str:
    """The drafter `draft` names on `model` ("mtp" | "dspark"; "auto": the checkpoint's own). A model without
    it raises DrafterMissingError naming what is missing."""
    have = getattr(model, "drafters", ())
    if draft == "auto" and have:
        return have[0]
    if draft in have:
        return draft
    missing = ("mtp", "dspark") if draft == "auto" else (draft,)
    what = {"mtp": "multi-token-prediction module (mtp)", "dspark": "DSpark block drafter (dspark)"}
    other = f"; it has {' and '.join(have)}: pass draft={have[0]!r}" if have else "; generate without draft"
    raise DrafterMissingError(
        f"draft={draft!r} needs the model's {' or '.join(what[m] for m in missing)}, and this model has none "
        f"({'; '.join(_WHERE[m] for m in missing)}){other}", draft=draft, missing=missing)


def check_draft_args(model, draft: str, num_draft: int, sampler) -> None:
    if draft not in DRAFT_MODES:
        raise GenerationError(f"draft={draft!r}: choose one of {', '.join(DRAFT_MODES)} (or None for plain decoding)")
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
        raise GenerationError(f"num_draft must be a positive integer, got {num_draft!r}")
    if draft == "none":
        return
    mtp_unsupported = getattr(model, "mtp", None) is not None and not getattr(model, "supports_mtp_drafting", False)
    if draft == "mtp" and mtp_unsupported:
        raise GenerationError(
            f"draft='mtp' is not supported for {model.config.model_type} yet; generate without draft"
        )
    resolve_drafter(model, draft)
    if not is_greedy(sampler) and not callable(getattr(sampler, "probs", None)):
        raise GenerationError(
            "speculative sampling needs the sampler's distribution: build the sampler with "
            "mlxseek.speculative.make_sampler(temp=..., top_p=...) instead of mlx_lm's make_sampler"
        )


def draft_cache_for(model, prompt_cache: list, kind: str) -> DraftCache:
    """The prompt cache's drafter entry, appended if the cache has none (a cache from `model.make_cache()`)
    or holds another drafter's; reset when the main cache moved without it (plain decoding or a trim since
    the last drafting call). RoPE is relative, so a drafter cache restarted at 0 beside a main cache at P
    is consistent; it only lacks older context."""
    layers, rest = split_prompt_cache(model, prompt_cache)
    fresh = make_draft_cache(model, kind)
    entry = rest[0] if rest and type(rest[0]) is type(fresh) else None
    if entry is None:
        if rest and isinstance(rest[0], DraftCache):
            prompt_cache.pop(len(layers))
        prompt_cache.insert(len(layers), fresh)
        return fresh
    if not entry.in_step_with(layers[0].offset):
        costs = entry.costs
        prompt_cache[len(layers)] = entry = fresh
        entry.costs = costs
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
    confidence_cut: Optional[float] = None,
    constraint=None,
) -> Generator[tuple[int, mx.array], None, None]:
    """Yield (token, logprobs (V,)) like `mlxseek.generation.generate_step`, drafting with the model's drafter.

    draft="mtp" / "dspark" always drafts `num_draft` tokens per step with that drafter (DSpark: a block of
    num_draft slots, at most config.json's dspark_block_size is what it was trained for); "auto" takes the
    checkpoint's own drafter and follows the backend policy's draft_auto (or `policy.mode`): "measure"
    (CPU) first measures what a verify step costs on this device (`measure_draft_costs`, kept in the
    prompt cache's drafter entry) and drafts only while the expected speedup, from the measured
    acceptance, exceeds AUTO_MIN_SPEEDUP; "acceptance" (GPU) drafts at once and stops when tokens per
    step fall to AUTO_MIN_TOKENS_PER_STEP. "none" decodes plainly. `stats` (a DraftStats) counts as tokens
    are produced; `policy` (a DraftPolicy) holds the on/off decision and its reasons. `confidence_cut`
    (DSpark): drafts after the first slot its confidence head scores below this are not verified.
    `constraint` (a TokenConstraint) masks every position, drafted ones included (see its `verify`).
    """
    check_draft_args(model, draft, num_draft, sampler)
    stats = stats if stats is not None else DraftStats()
    policy = policy if policy is not None else DraftPolicy()
    policy.auto = draft == "auto"
    if policy.auto and policy.mode is None:
        policy.mode = policy_of(model).draft_auto
    cache = prompt_cache if prompt_cache is not None else model.make_cache()
    kind = resolve_drafter(model, draft) if draft != "none" else None
    entry = draft_cache_for(model, cache, kind) if kind else None
    if kind and policy.auto and policy.mode == "measure":
        if num_draft not in entry.costs:
            by_kind = {} if kind == "mtp" else {"kind": kind}  # MTP's call keeps its two-argument form
            entry.costs[num_draft] = draft_costs.measure_draft_costs(model, num_draft, **by_kind)
        policy.calibrate(entry.costs[num_draft], num_draft)
    if kind is None or not policy.drafting:  # draft="none", or even perfect drafts would not pay here
        steps = generate_step(prompt, model, max_tokens=max_tokens, sampler=sampler,
                              logits_processors=logits_processors, prompt_cache=cache,
                              prefill_step_size=prefill_step_size, progress=progress, constraint=constraint)
        for n, out in enumerate(steps):
            stats.verify_steps += n > 0  # every token after the prefill's is one decode forward
            yield out
        return
    layers, _ = split_prompt_cache(model, cache)
    drafter = make_drafter(model, kind, entry, confidence_cut=confidence_cut)
    dec = SpeculativeDecoder(model, layers, drafter, sampler=None if is_greedy(sampler) else sampler,
                             processors=list(logits_processors or []), num_draft=num_draft, stats=stats,
                             policy=policy, keep_state=prompt_cache is not None, constraint=constraint)
    try:
        yield from dec.run(prompt, max_tokens, prefill_step_size, progress)
    finally:
        dec.settle()

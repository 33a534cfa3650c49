"""MTP self-speculative decoding: the model's own Multi-Token-Prediction module drafts, the model verifies.

One cycle, with y the last sampled token (not yet fed to the model) and h the main model's final normed
hidden state at the last fed position:
  draft   d_1 = MTP(h, y); chained for k > 1: d_{i+1} = MTP(g_i, d_i) with g_i the MTP's own hidden state
  verify  one forward of the main model over [y, d_1..d_k] gives its next-token distributions p_0..p_k
  accept  greedy: the longest prefix with d_i == argmax p_{i-1}, then the main model's own next token;
          sampling: speculative (rejection) sampling -- accept d_i with probability min(1, p/q), on the
          first rejection draw from normalize(max(p - q, 0)), else draw the bonus token from p_k -- so the
          output distribution is exactly the sampler's (Leviathan et al. 2023, Chen et al. 2023)
  rollback trim the main latent cache by the k - a rejected tokens and the MTP cache by its k - 1 chained
          entries (which saw the MTP's hidden state, not the model's), then feed the MTP the accepted
          positions with the model's true hidden states; that same call drafts the next cycle.
The MTP block has its own LatentCache; it holds one entry per position t (pair h_t, token t+1), kept in
step with the main cache. Greedy output is token-for-token the plain decoder's.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generator, Optional, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler
from mlx_lm.sample_utils import make_sampler as mlx_lm_make_sampler

from .cache import LatentCache
from .errors import GenerationError
from .layers.mtp import MultiTokenPrediction
from .prefill import DEFAULT_PREFILL_STEP

if TYPE_CHECKING:
    from .draft_costs import DraftCosts

DRAFT_MODES = ("mtp", "auto")
AUTO_MIN_SPEEDUP = 1.05  # draft="auto" drafts only while the expected speedup exceeds this
AUTO_WARMUP_STEPS = 8  # verify steps before "auto" judges the measured acceptance

# MTP state left by a call that received a prompt cache, keyed by that cache's first layer, so the next
# call on the same cache (a chat) continues drafting with the MTP's history.
_MTP_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class DistributionSampler:
    """mlx-lm's sampler (temp, top_p, min_p, top_k) that also exposes the distribution it draws from,
    which speculative sampling needs. Called on logprobs (..., V) it samples exactly as mlx-lm's does."""

    def __init__(self, temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
                 min_tokens_to_keep: int = 1):
        self.temp, self.top_p, self.min_p, self.top_k = temp, top_p, min_p, top_k
        self.min_tokens_to_keep = min_tokens_to_keep
        self._sample = mlx_lm_make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k,
                                           min_tokens_to_keep=min_tokens_to_keep)

    @property
    def greedy(self) -> bool:
        return self.temp == 0

    def __call__(self, logprobs: mx.array) -> mx.array:
        return self._sample(logprobs)

    def probs(self, logprobs: mx.array) -> mx.array:
        """(..., V) probabilities of each token; filters in mlx-lm's order (top_p, min_p, top_k)."""
        x = logprobs
        if 0 < self.top_p < 1.0:
            x = apply_top_p(x, self.top_p)
        if self.min_p != 0.0:
            x = apply_min_p(x, self.min_p, self.min_tokens_to_keep)
        if self.top_k > 0:
            x = apply_top_k(x, self.top_k)
        return mx.softmax(x * (1 / self.temp), axis=-1)


def make_sampler(temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
                 min_tokens_to_keep: int = 1) -> DistributionSampler:
    """Like `mlx_lm.sample_utils.make_sampler` (same arguments and sampling), usable with draft="mtp"."""
    return DistributionSampler(temp, top_p, min_p, top_k, min_tokens_to_keep)


def rejection_sample(drafts: mx.array, p: mx.array, q: mx.array) -> tuple[mx.array, mx.array]:
    """Speculative sampling for N independent sequences: drafts (N, k) drawn from q (N, k, V), the
    model's distributions p (N, k+1, V) after each prefix. Returns (accepted count a (N,), next token (N,)):
    d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)) while all before it were; the token after
    the accepted prefix is drawn from normalize(max(p_a - q_a, 0)) if a < k, else from p_k. The emitted
    tokens are then distributed exactly as draws from p (Leviathan et al. 2023, theorem 1)."""
    N, k = drafts.shape
    d = drafts[..., None]
    pd = mx.take_along_axis(p[:, :k], d, -1)[..., 0]  # (N, k)
    qd = mx.take_along_axis(q, d, -1)[..., 0]
    ok = mx.random.uniform(shape=(N, k)) * qd < pd  # u < p/q, without dividing (q(d) > 0: d was drawn)
    a = mx.cumprod(ok.astype(mx.int32), axis=1).sum(axis=1)  # (N,) leading acceptances
    p_a = mx.take_along_axis(p, a[:, None, None], 1)[:, 0]  # (N, V)
    q_a = mx.take_along_axis(q, mx.minimum(a, k - 1)[:, None, None], 1)[:, 0]
    resid = mx.maximum(p_a - q_a, 0.0)
    resid = mx.where(resid.sum(-1, keepdims=True) > 0, resid, p_a)  # p == q: nothing left to correct
    dist = mx.where((a < k)[:, None], resid, p_a)
    return a, mx.random.categorical(mx.log(dist))


@dataclass
class DraftStats:
    """Counters of one speculative generation. A verify step is one main-model decode forward."""

    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_steps: int = 0
    first_drafts: int = 0  # steps that drafted at least one token
    first_accepted: int = 0  # ... whose first draft was accepted
    drafting: bool = True  # False once draft="auto" turned drafting off
    expected_speedup: Optional[float] = None  # draft="auto": its latest estimate
    costs: Optional["DraftCosts"] = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def first_acceptance_rate(self) -> float:
        return self.first_accepted / self.first_drafts if self.first_drafts else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens emitted per verify step (the verified token counted): 1.0 without drafting."""
        return (self.accepted_tokens + self.verify_steps) / self.verify_steps if self.verify_steps else 0.0


def _greedy(sampler) -> bool:
    return sampler is None or sampler is greedy_sampler or getattr(sampler, "greedy", False)


def check_draft_args(model, draft: str, num_draft: int, sampler) -> None:
    if draft not in DRAFT_MODES:
        raise GenerationError(f"draft={draft!r}: choose one of {', '.join(DRAFT_MODES)} (or None for plain decoding)")
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
        raise GenerationError(f"num_draft must be a positive integer, got {num_draft!r}")
    mtp = getattr(model, "mtp", None)
    if mtp is not None and not isinstance(mtp, MultiTokenPrediction):
        raise GenerationError(
            f"draft='mtp' supports DeepSeek-V3-style MTP modules; {type(mtp).__name__} "
            f"({model.config.model_type}) is not supported yet; generate without draft"
        )
    if mtp is None:
        raise GenerationError(
            "draft='mtp' needs the model's multi-token-prediction module, and this model has none "
            "(config.json num_nextn_predict_layers is 0, the folder was converted with --drop-mtp, "
            "or it was loaded with with_mtp=False); generate without draft"
        )
    if not _greedy(sampler) and not callable(getattr(sampler, "probs", None)):
        raise GenerationError(
            "speculative sampling needs the sampler's distribution: build the sampler with "
            "mlxseek.speculative.make_sampler(temp=..., top_p=...) instead of mlx_lm's make_sampler"
        )


class _MTPState:
    """The MTP block's cache, the pending main hidden state h_{P-1} (1, 1, D) and the main offset P."""

    def __init__(self, cache: Optional[LatentCache] = None, pending: Optional[mx.array] = None, offset: int = 0):
        self.cache = cache if cache is not None else LatentCache()
        self.pending, self.offset = pending, offset


def _take_state(prompt_cache) -> _MTPState:
    if not prompt_cache:
        return _MTPState()
    state = _MTP_STATES.pop(prompt_cache[0], None)
    P = prompt_cache[0].offset
    if state is not None and state.offset == P and state.cache.offset == P - 1 and state.pending is not None:
        return state
    # The cache moved without us (plain decoding, a trim): the MTP starts afresh. RoPE is relative, so an
    # MTP cache that starts at 0 beside a main cache at P is consistent; it only lacks older context.
    return _MTPState()


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
    prefill_step_size: int = DEFAULT_PREFILL_STEP,
    progress=None,
    stats: Optional[DraftStats] = None,
) -> Generator[tuple[int, mx.array], None, None]:
    """Yield (token, logprobs (V,)) like `mlxseek.generate.generate_step`, drafting with the MTP module.

    draft="mtp" always drafts `num_draft` tokens per step; "auto" first measures what a verify step costs
    on this device (`measure_draft_costs`) and drafts only while the expected speedup, from the measured
    acceptance, exceeds AUTO_MIN_SPEEDUP. `stats` (a DraftStats) is updated as tokens are produced.
    """
    from .draft_loop import SpeculativeDecoder
    from .generate import generate_step

    check_draft_args(model, draft, num_draft, sampler)
    stats = stats if stats is not None else DraftStats()
    if draft == "auto":
        from .draft_costs import measure_draft_costs

        stats.costs = measure_draft_costs(model, num_draft)
        best = stats.costs.speedup(num_draft + 1.0, num_draft)  # every draft accepted
        if stats.expected_speedup is None or best <= AUTO_MIN_SPEEDUP:
            stats.expected_speedup = best
        if best <= AUTO_MIN_SPEEDUP:  # even perfect drafts would not pay here
            stats.drafting = False
            steps = generate_step(prompt, model, max_tokens=max_tokens, sampler=sampler,
                                  logits_processors=logits_processors, prompt_cache=prompt_cache,
                                  prefill_step_size=prefill_step_size, progress=progress)
            for n, out in enumerate(steps):
                stats.verify_steps += n > 0  # every token after the prefill's is one decode forward
                yield out
            return
    cache = prompt_cache if prompt_cache is not None else model.make_cache()
    state = _take_state(prompt_cache)
    dec = SpeculativeDecoder(model, cache, state, sampler=None if _greedy(sampler) else sampler,
                             processors=list(logits_processors or []), num_draft=num_draft, stats=stats,
                             auto=draft == "auto", keep_state=prompt_cache is not None,
                             min_speedup=AUTO_MIN_SPEEDUP, warmup_steps=AUTO_WARMUP_STEPS)
    try:
        yield from dec.run(prompt, max_tokens, prefill_step_size, progress)
    finally:
        settled = dec.settle()
        if prompt_cache is not None and settled is not None:
            _MTP_STATES[prompt_cache[0]] = settled

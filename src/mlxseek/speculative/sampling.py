"""Sampling for speculative decoding: mlx-lm's sampler with its distribution exposed, and rejection
sampling, which keeps the output distribution exactly the sampler's (Leviathan et al. 2023)."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler
from mlx_lm.sample_utils import make_sampler as mlx_lm_make_sampler


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


def draw(logits: mx.array, sampler) -> tuple[mx.array, Optional[mx.array]]:
    """One draft from logits (V,): the argmax without a sampler, else a draw from the sampler's
    distribution q (V,), returned with it."""
    if sampler is None:
        return mx.argmax(logits, axis=-1), None
    q = sampler.probs(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    return mx.random.categorical(mx.log(q)), q


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


def is_greedy(sampler) -> bool:
    """True for no sampler, mlx-lm's greedy sampler, or a DistributionSampler at temperature 0."""
    return sampler is None or sampler is greedy_sampler or getattr(sampler, "greedy", False)

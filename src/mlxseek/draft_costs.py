"""What drafting costs on this device, measured once per model: draft="auto" decides from it.

A speculative step with k drafts runs the main model over k+1 tokens and the MTP module about k times
(the call that catches up on accepted positions plus k-1 chained drafts), and emits on average
`tokens_per_step` tokens; plain decoding emits one token per 1-token forward. So
    speedup = tokens_per_step * t(1-token step) / (t(k+1-token step) + k * t(MTP step)).
On Metal a small batch of rows costs about what one row costs (decode is bandwidth-bound), so drafting
pays; on MLX's CPU backend quantized matmul cost grows about linearly with rows, so it may not.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass

import mlx.core as mx

from .cache import LatentCache
from .model import causal_mask

CONTEXT_TOKENS = 32  # a short context: the step costs measured are the weights' (the cache read is small)
_COSTS: dict = {}  # id(model) -> (weakref to the model, {k: DraftCosts})


@dataclass(frozen=True)
class DraftCosts:
    step_s: float  # one plain decode step: 1-token forward + LM head
    verify_s: float  # one (k+1)-token forward + LM head on every row
    mtp_s: float  # one 1-token MTP step (block + head)
    k: int

    @property
    def verify_ratio(self) -> float:
        return self.verify_s / self.step_s

    def speedup(self, tokens_per_step: float, k: int) -> float:
        """Expected wall speedup over plain decoding at `tokens_per_step` emitted per verify step."""
        return tokens_per_step * self.step_s / (self.verify_s + k * self.mtp_s)


def _median_time(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_draft_costs(model, k: int, *, reps: int = 7) -> DraftCosts:
    """Time a 1-token step, a (k+1)-token verify step and an MTP step on a scratch cache (cached per model
    and k: the first call costs a few dozen forwards)."""
    ref, by_k = _COSTS.get(id(model), (None, {}))
    if ref is None or ref() is not model:
        by_k = {}
        _COSTS[id(model)] = (weakref.ref(model), by_k)
    if k in by_k:
        return by_k[k]
    V = model.config.vocab_size
    ctx = (mx.arange(CONTEXT_TOKENS + k + 2) * 7919 + 3) % V  # arbitrary ordinary token ids
    cache, mtp_cache = model.make_cache(), LatentCache()
    h = model.hidden_states(ctx[None, :CONTEXT_TOKENS], cache)
    model.mtp(h, model.model.embed_tokens(ctx[None, 1: CONTEXT_TOKENS + 1]), causal_mask(CONTEXT_TOKENS, 0), mtp_cache)
    mx.eval([c.state for c in cache], mtp_cache.state)
    embed = model.model.embed_tokens(ctx[None, :1])

    def main_step(n: int):
        def run():
            hs = model.hidden_states(ctx[None, CONTEXT_TOKENS: CONTEXT_TOKENS + n], cache)
            mx.eval(model.lm_head(hs[0]))
            for c in cache:
                c.trim(n)
        return run

    def mtp_step():
        logits, g = model.mtp(h[:, -1:], embed, None, mtp_cache)
        mx.eval(logits, g)
        mtp_cache.trim(1)

    costs = DraftCosts(step_s=_median_time(main_step(1), reps), verify_s=_median_time(main_step(k + 1), reps),
                       mtp_s=_median_time(mtp_step, reps), k=k)
    by_k[k] = costs
    return costs

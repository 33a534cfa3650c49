"""What drafting costs on this device, measured once per conversation (kept with the drafter's cache):
draft="auto" decides from it.

A speculative step with k drafts runs the main model over k+1 tokens (the verify forward), the MTP module
over the accepted positions (about 2 tokens: it catches up on them and drafts the next token) and k-1
more 1-token MTP calls (chained drafts); it emits `tokens_per_step` tokens on average, where plain
decoding emits one token per 1-token forward. So
    speedup = tokens_per_step * t(1-token step) / t(speculative step's work).
On Metal a few rows cost about what one row costs (decode is bandwidth-bound), so drafting pays; on
MLX's CPU backend a 2-row forward of a small model costs ~1.3-1.5x a 1-row one, so it may not.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import mlx.core as mx

CONTEXT_TOKENS = 32  # a short context: the step costs measured are the weights' (the cache read is small)


@dataclass(frozen=True)
class DraftCosts:
    step_s: float  # one plain decode step: 1-token forward + LM head
    verify_s: float  # one (k+1)-token forward + LM head on every row
    mtp_s: float  # one 1-token MTP step (block + head)
    cycle_s: float  # a whole speculative step's work: verify + 2-token MTP catch-up + k-1 chained MTP steps
    k: int

    @property
    def verify_ratio(self) -> float:
        return self.verify_s / self.step_s

    def speedup(self, tokens_per_step: float, k: int) -> float:
        """Expected wall speedup over plain decoding at `tokens_per_step` emitted per verify step (with
        `k`, the drafts per step these costs were measured for)."""
        return tokens_per_step * self.step_s / self.cycle_s


def _median_times(fns: list, reps: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, run in turns so that load from other processes hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def measure_draft_costs(model, k: int, *, reps: int = 15, kind: str = "mtp") -> DraftCosts:
    """Time a 1-token step, a (k+1)-token verify step and a drafter step on scratch caches (a few dozen
    forwards: callers keep the result with the prompt cache's drafter entry)."""
    if kind == "dspark":
        return _dspark_costs(model, k, reps)
    V = model.config.vocab_size
    ctx = (mx.arange(CONTEXT_TOKENS + k + 2) * 7919 + 3) % V  # arbitrary ordinary token ids
    cache, mtp_cache = model.make_cache(), model.make_mtp_cache().block
    h = model.trunk(ctx[None, :CONTEXT_TOKENS], cache)
    model.mtp_forward(h, ctx[None, 1: CONTEXT_TOKENS + 1], mtp_cache)
    mx.eval([c.state for c in cache], mtp_cache.state)
    nxt = ctx[None, 1: CONTEXT_TOKENS + 1]

    def main(n: int) -> list:
        return [model.head(model.trunk(ctx[None, CONTEXT_TOKENS: CONTEXT_TOKENS + n], cache)[0])]

    def mtp(n: int) -> list:
        return list(model.mtp_forward(h[:, -n:], nxt[:, -n:], mtp_cache))

    def timed(*parts):  # (fn, n) pairs evaluated together, then every cache rolled back
        def run():
            mx.eval([out for fn, n in parts for out in fn(n)])
            for c in cache:
                c.trim(c.offset - CONTEXT_TOKENS)
            mtp_cache.trim(mtp_cache.offset - CONTEXT_TOKENS)
        return run

    cycle = [(main, k + 1), (mtp, 2)] + [(mtp, 1)] * (k - 1)
    step_s, verify_s, mtp_s, cycle_s = _median_times(
        [timed((main, 1)), timed((main, k + 1)), timed((mtp, 1)), timed(*cycle)], reps)
    return DraftCosts(step_s=step_s, verify_s=verify_s, mtp_s=mtp_s, cycle_s=cycle_s, k=k)


def _dspark_costs(model, k: int, reps: int) -> DraftCosts:
    """DSpark's cycle: one k-slot block proposal (the stages once, the Markov head per slot), the (k+1)-row
    verify, and the ring rows of the accepted positions (about 2). `mtp_s` holds the proposal's cost."""
    from .drafter import make_draft_cache, make_drafter

    V = model.config.vocab_size
    ctx = (mx.arange(CONTEXT_TOKENS + k + 2) * 7919 + 3) % V
    cache, entry = model.make_cache(), make_draft_cache(model, "dspark")
    drafter = make_drafter(model, "dspark", entry)
    _, taps = drafter.target(ctx[None, :CONTEXT_TOKENS], cache)
    drafter.observe(taps, ctx[:CONTEXT_TOKENS])
    mx.eval([c.state for c in cache], entry.state)

    def main(n: int) -> list:
        h, taps = drafter.target(ctx[None, CONTEXT_TOKENS: CONTEXT_TOKENS + n], cache)
        return [model.head(h[0]), taps]

    def rollback() -> None:
        for c in cache:
            c.trim(c.offset - CONTEXT_TOKENS)
        entry.trim(entry.offset - CONTEXT_TOKENS)

    def timed(n: int, propose: bool, ring: bool):
        def run():
            outs = main(n)
            if propose:
                outs += list(drafter.block_logits(int(ctx[CONTEXT_TOKENS].item()), k))
            if ring:
                drafter.commit(outs[1], 1, [0, 0], k, True)
                outs += entry.state
            mx.eval(outs)
            rollback()
        return run

    step_s, verify_s, draft_s, cycle_s = _median_times(
        [timed(1, False, False), timed(k + 1, False, False), _draft_only(drafter, k, ctx), timed(k + 1, True, True)],
        reps)
    return DraftCosts(step_s=step_s, verify_s=verify_s, mtp_s=draft_s, cycle_s=cycle_s, k=k)


def _draft_only(drafter, k: int, ctx: mx.array):
    y = int(ctx[CONTEXT_TOKENS].item())
    return lambda: mx.eval(list(drafter.block_logits(y, k)))

"""The speculative decode loop behind `mlxseek.speculative.step` (see its docstring for the algorithm),
driving one drafter through the protocol in `speculative.drafter` (MTP or DSpark).

Shapes: k drafts per step, V vocab; features (`drafter.target`) are (1, n, ...); token lists are Python ints.
Between steps, with y the last emitted token, the main cache holds every emitted token but y.
"""

from __future__ import annotations

import time
from typing import Optional

import mlx.core as mx

from ..generation.prefill import cached_tokens, prefill_chunk
from ..generation.steps import generate_step
from .drafter import Drafter
from .sampling import rejection_sample


class SpeculativeDecoder:
    def __init__(self, model, cache: list, drafter: Drafter, *, sampler, processors: list, num_draft: int, stats,
                 policy, keep_state: bool, constraint=None):
        self.model, self.cache, self.drafter = model, cache, drafter  # cache: the per-layer caches only
        self.constraint = constraint  # a TokenConstraint: masks every verified position
        self.sampler, self.processors, self.k = sampler, processors, num_draft  # sampler None: greedy
        self.stats, self.policy, self.keep_state = stats, policy, keep_state
        self.history: Optional[mx.array] = None  # tokens fed so far, for logits processors
        self.in_step = True  # False once the drafter's cache stopped following the main cache
        self.draft_wall, self.draft_steps = 0.0, 0  # wall seconds inside drafting steps (draft="auto")

    def _logprobs(self, logits: mx.array, fed: mx.array) -> mx.array:
        """logits (n, V) right after feeding each of `fed` -> logprobs (n, V), processed as plain decoding
        does (each row sees the history up to and including its own fed token)."""
        if self.processors:
            rows = []
            for i in range(logits.shape[0]):
                hist = mx.concatenate([self.history, fed[: i + 1].astype(self.history.dtype)])
                row = logits[i: i + 1]
                for proc in self.processors:
                    row = proc(hist, row)
                rows.append(row)
            logits = mx.concatenate(rows)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def _sample(self, logprobs: mx.array) -> int:
        return (mx.argmax(logprobs, axis=-1) if self.sampler is None else self.sampler(logprobs))[0].item()

    def prefill(self, prompt: mx.array, step_size: int, progress) -> tuple[int, mx.array]:
        """Feed the prompt in the plain decoder's chunks, the drafter observing each chunk."""
        n, done, h = prompt.size, 0, None
        while done < n:
            chunk_size = prefill_chunk(self.model, cached_tokens(self.cache), step_size)
            end = done + chunk_size if n - done > chunk_size else n
            chunk = prompt[done:end]
            h, extra = self.drafter.target(chunk[None], self.cache)  # (1, n_chunk, ...)
            self.drafter.observe(extra, chunk)
            mx.eval([c.state for c in self.cache], self.drafter.entry.state)
            done = end
            if progress:
                progress(done, n)
        logits = self.model.head(h[0, -1:])  # (1, V)
        for proc in self.processors:  # plain decoding's first step: the history is the prompt
            logits = proc(prompt, logits)
        if self.constraint is not None:
            logits = self.constraint.apply(logits)
        self.history = prompt
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return self._sample(lp), lp[0]

    def _accept(self, drafts: mx.array, lp: mx.array, q: Optional[mx.array]) -> tuple[list[int], int, int]:
        """One host sync: (the drafts as ints, how many were accepted, the model's own token after them)."""
        k = drafts.size
        if self.sampler is None:
            vals = mx.concatenate([drafts, mx.argmax(lp, axis=-1).astype(mx.uint32)]).tolist()  # drafts, targets
            d, target = vals[:k], vals[k:]
            a = next((i for i in range(k) if d[i] != target[i]), k)
            return d, a, target[a]
        if k == 0:
            return [], 0, self._sample(lp)
        a, nxt = rejection_sample(drafts[None], self.sampler.probs(lp)[None], q[None])
        vals = mx.concatenate([drafts, a.astype(mx.uint32), nxt.astype(mx.uint32)]).tolist()
        return vals[:k], vals[k], vals[k + 1]

    def step(self, y: int, k: int, left: int, drafting: bool) -> list[tuple[int, mx.array]]:
        """One main-model forward over y and up to k drafts (k = 0: a plain decode step); the emitted tokens."""
        tic, cuts = time.perf_counter(), self.drafter.cuts
        drafts, q = self.drafter.propose(y, k, self.sampler) if drafting else (mx.zeros((0,), mx.uint32), None)
        k = drafts.size  # a drafter may propose fewer (DSpark's confidence cut)
        fed = mx.concatenate([mx.array([y], dtype=mx.uint32), drafts])
        h, extra = self.drafter.target(fed[None], self.cache)  # (1, k+1, ...)
        logits = self.model.head(h[0])  # (k+1, V)
        if self.constraint is not None:  # a draft the grammar forbids gets p = 0: rejected
            mx.async_eval(logits)
            self.constraint.feed(y)
            logits = self.constraint.verify(logits, drafts.tolist())
        lp = self._logprobs(logits, fed)
        drafts, a, nxt = self._accept(drafts, lp, q)
        for c in self.cache:
            c.trim(k - a)  # roll back the rejected drafts
        if self.processors:
            self.history = mx.concatenate([self.history, fed[: a + 1].astype(self.history.dtype)])
        emitted = [*drafts[:a], nxt]
        if self.constraint is not None:
            for t in drafts[:a]:
                self.constraint.feed(t)
        go_on = drafting and (left > len(emitted) or self.keep_state)
        self.drafter.commit(extra, a, emitted, k, go_on)
        if not go_on:
            self.in_step = False
        s = self.stats
        s.verify_steps += 1
        s.draft_tokens += k
        s.accepted_tokens += a
        s.first_drafts += k > 0
        s.first_accepted += k > 0 and a > 0
        s.confidence_cuts += self.drafter.cuts - cuts  # stats may run over several calls, each with its drafter
        s.count_positions(k, a)
        if k:
            self.draft_wall += time.perf_counter() - tic
            self.draft_steps += 1
        return [(t, lp[i]) for i, t in enumerate(emitted)]

    def run(self, prompt: mx.array, max_tokens: int, step_size: int, progress):
        y, lp = self.prefill(prompt, step_size, progress)
        yield y, lp
        left = max_tokens - 1
        while left > 0:
            drafting = self.policy.drafting and self.in_step
            if not drafting and not self.processors and self.constraint is None:  # the plain decoder is pipelined
                yield from self._plain(y, left)
                return
            out = self.step(y, min(self.k, left - 1) if drafting else 0, left, drafting)
            left -= len(out)
            yield from out
            y = out[-1][0]
            if drafting:
                self.policy.judge(self.stats, self.draft_wall, self.draft_steps)
            if self.stats.verify_steps % 256 == 0:
                mx.clear_cache()

    def _plain(self, y: int, left: int):
        """Plain decoding of the remaining tokens (y is emitted but not yet fed)."""
        self.in_step = False
        for tok, lp in generate_step(mx.array([y], dtype=mx.uint32), self.model, max_tokens=left,
                                     sampler=self.sampler, prompt_cache=self.cache):
            self.stats.verify_steps += 1
            yield tok, lp

    def settle(self) -> None:
        """Leave the drafter's cache resting at the main cache's offset (so the next call on this prompt
        cache drafts on), or out of step."""
        self.drafter.settle(self.cache[0].offset, self.in_step and self.policy.drafting)

"""The speculative decode loop behind `mlxseek.speculative.step` (see its docstring for the algorithm).

Shapes: k drafts per step, V vocab; features (`model.trunk`) are (1, n, ...); token lists are Python ints.
Between steps, with y the last emitted token: the main cache holds every emitted token but y; the MTP
cache holds one entry per main position t (pair h_t, token t+1, the last one pairing with y) and
`next_draft` holds that last entry's output, the first draft of the next step. `mtp.pending` is the
main model's features at its last fed position.
"""

from __future__ import annotations

import time
from typing import Optional

import mlx.core as mx

from ..generation.prefill import cached_tokens, prefill_chunk
from ..generation.steps import generate_step
from .sampling import rejection_sample


class SpeculativeDecoder:
    def __init__(self, model, cache: list, mtp, *, sampler, processors: list, num_draft: int, stats, policy,
                 keep_state: bool, constraint=None):
        self.model, self.cache, self.state = model, cache, mtp  # cache: the per-layer caches only
        self.constraint = constraint  # a TokenConstraint: masks every verified position
        self.sampler, self.processors, self.k = sampler, processors, num_draft  # sampler None: greedy
        self.stats, self.policy, self.keep_state = stats, policy, keep_state
        self.history: Optional[mx.array] = None  # tokens fed so far, for logits processors
        self.next_draft: Optional[tuple[mx.array, mx.array]] = None  # MTP (logits (V,), hidden (1, 1, D))
        self.in_step = True  # False once the MTP cache stopped following the main cache
        self.draft_wall, self.draft_steps = 0.0, 0  # wall seconds inside drafting steps (draft="auto")

    def _mtp(self, hidden: mx.array, tokens: mx.array) -> tuple[mx.array, mx.array]:
        """Feed MTP pairs (features_t, token_{t+1}), tokens (n,); returns (last logits (V,), last MTP
        output (1, 1, ...)). Lazy: drafts stay on the device until the step's one sync."""
        logits, h = self.model.mtp_forward(hidden, tokens.astype(mx.uint32)[None], self.state.block)
        return logits[0, -1], h[:, -1:]

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
        """Feed the prompt in the plain decoder's chunks, and every (h_t, token_{t+1}) pair to the MTP."""
        n, done, h = prompt.size, 0, None
        while done < n:
            chunk_size = prefill_chunk(self.model, cached_tokens(self.cache), step_size)
            end = done + chunk_size if n - done > chunk_size else n
            chunk = prompt[done:end]
            h = self.model.trunk(chunk[None], self.cache)  # (1, n_chunk, ...)
            pending, self.state.pending = self.state.pending, h[:, -1:]
            # Pairs: (pending, chunk[0]) when a previous position waits for its next token, then (h_t, chunk[t+1]).
            pairs_h = h[:, :-1] if pending is None else mx.concatenate([pending, h[:, :-1]], axis=1)
            pairs_t = chunk.tolist()[0 if pending is not None else 1:]
            if pairs_t:
                self._mtp(pairs_h, mx.array(pairs_t))
            mx.eval([c.state for c in self.cache], self.state.block.state, self.state.pending)
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

    def _draft(self, k: int) -> tuple[mx.array, Optional[mx.array]]:
        """k draft tokens (k,) after y, and their draft distributions (k, V) when sampling."""
        logits, g = self.next_draft
        drafts, qs = [], []
        for i in range(k):
            if self.sampler is None:
                d = mx.argmax(logits, axis=-1)
            else:
                q = self.sampler.probs(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
                d = mx.random.categorical(mx.log(q))
                qs.append(q)
            drafts.append(d.astype(mx.uint32))
            if i + 1 < k:  # chain: the MTP's own hidden state stands in for the model's
                logits, g = self._mtp(g, drafts[-1][None])
        return mx.stack(drafts), (mx.stack(qs) if qs else None)

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
        """One main-model forward over y and k drafts (k = 0: a plain decode step); the emitted tokens."""
        tic = time.perf_counter()
        if drafting and self.next_draft is None:  # right after prefill: the MTP entry (h_{P-1}, y)
            self.next_draft = self._mtp(self.state.pending, mx.array([y]))
        drafts, q = self._draft(k) if k else (mx.zeros((0,), mx.uint32), None)
        fed = mx.concatenate([mx.array([y], dtype=mx.uint32), drafts])
        h = self.model.trunk(fed[None], self.cache)  # (1, k+1, ...)
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
        self.next_draft = None
        if drafting and (left > len(emitted) or self.keep_state):
            if k > 1:
                self.state.block.trim(k - 1)  # the chained entries saw the MTP's own output, not h
            # The accepted positions with the model's true hidden states; the last entry drafts next.
            self.next_draft = self._mtp(h[:, : a + 1], mx.array(emitted))
            mx.async_eval(self.next_draft)  # runs while the caller handles the emitted tokens
        else:
            self.in_step = False
        self.state.pending = h[:, a: a + 1]
        s = self.stats
        s.verify_steps += 1
        s.draft_tokens += k
        s.accepted_tokens += a
        s.first_drafts += k > 0
        s.first_accepted += k > 0 and a > 0
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
        """Leave the MTP cache in resting form (one entry behind the main cache, `pending` = the features at
        the main cache's last position) so the next call on this prompt cache drafts on; or out of step."""
        mtp, P = self.state, self.cache[0].offset
        if not self.in_step or not self.policy.drafting or mtp.pending is None:
            mtp.main_offset = -1
            return
        if mtp.offset == P:
            mtp.block.trim(1)  # its last entry pairs h with a token the model has not been fed yet
        mtp.main_offset = P if mtp.offset == P - 1 else -1

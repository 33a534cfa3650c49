"""The DSpark drafter (V4-Flash-0731, V4-Pro-0813, V4-Flash-DSpark): one block forward drafts k tokens.

With y the last sampled token at position P (not yet fed): the ring (`cache.dspark.DSparkCache`) holds
rows for positions 0..P-1, built from the main model's target-layer hiddens. A proposal runs the block
[y, NOISE x (k-1)] at positions P..P+k-1 through the stages once, then draws the drafts left to right,
each slot's logits biased by the Markov head from the token before it. The verify's hiddens at the
accepted positions P..P+a become ring rows; nothing the drafts saw needs rolling back.
With `confidence_cut`, drafts after the first slot whose confidence head scores below it are not
proposed (fewer rows to verify; greedy output is unchanged, only the number of drafts).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..cache.dspark import DSparkCache
from .sampling import draw


class DSparkDrafter:
    def __init__(self, model, entry: DSparkCache, *, confidence_cut: Optional[float] = None):
        self.model, self.entry, self.cut_at, self.cuts = model, entry, confidence_cut, 0
        self.dspark = model.dspark

    def target(self, tokens: mx.array, layers: list) -> tuple[mx.array, mx.array]:
        return self.model.trunk_taps(tokens, layers)

    def observe(self, taps: mx.array, tokens: mx.array) -> None:
        self.entry.write(self.dspark.context_rows(taps, self.entry.offset))

    def block_logits(self, y: int, k: int) -> tuple[mx.array, mx.array]:
        """The block [y, NOISE x (k-1)] at positions P..: (logits before the Markov bias (k, V), head hidden (k, D))."""
        ids = mx.array([[y] + [self.dspark.noise_token_id] * (k - 1)], dtype=mx.uint32)
        embeds = self.model.model.embed_tokens(ids)
        x = self.dspark.block(embeds, ids, self.entry.ring(), self.entry.offset)
        return self.model.lm_head(self.dspark.norm(x))[0], x[0]

    def propose(self, y: int, k: int, sampler) -> tuple[mx.array, Optional[mx.array]]:
        if k == 0:
            return mx.zeros((0,), mx.uint32), None
        logits, x = self.block_logits(y, k)
        prev = mx.array([y], dtype=mx.uint32)
        drafts, qs, embs = [], [], []
        for i in range(k):  # sequential: each slot's Markov bias reads the token drawn before it
            bias, emb = self.dspark.markov_head(prev)
            d, q = draw(logits[i].astype(mx.float32) + bias[0], sampler)
            if q is not None:
                qs.append(q)
            prev = d.astype(mx.uint32)[None]
            drafts.append(prev[0])
            embs.append(emb[0])
        drafts, q = mx.stack(drafts), (mx.stack(qs) if qs else None)
        if self.cut_at is not None and k > 1:
            keep = self._confident(x, mx.stack(embs))
            if keep < k:
                self.cuts += 1
                drafts, q = drafts[:keep], (q[:keep] if q is not None else None)
        return drafts, q

    def _confident(self, x: mx.array, embs: mx.array) -> int:
        """Drafts kept: up to the first slot scored below the cut, at least one (one host sync)."""
        scores = self.dspark.confidence_head(x, embs).tolist()
        return max(1, next((i for i, s in enumerate(scores) if s < self.cut_at), len(scores)))

    def commit(self, taps: mx.array, a: int, emitted: list[int], k: int, go_on: bool) -> None:
        self.entry.write(self.dspark.context_rows(taps[:, : a + 1], self.entry.offset))

    def settle(self, main_offset: int, in_step: bool) -> None:
        self.entry.main_offset = main_offset if in_step and self.entry.offset == main_offset else -1

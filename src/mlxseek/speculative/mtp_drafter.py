"""The MTP drafter (V3, V4): the model's own Multi-Token-Prediction module, chained for k > 1.

Between steps, with y the last emitted token: the main cache holds every emitted token but y; the MTP
cache holds one entry per main position t (pair h_t, token t+1, the last one pairing with y) and
`next_draft` holds that last entry's output, the first draft of the next step. `entry.pending` is the
main model's features at its last fed position. Shapes: features (`model.trunk`) are (1, n, ...).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..cache.mtp import MTPCache
from .sampling import draw


class MTPDrafter:
    def __init__(self, model, entry: MTPCache):
        self.model, self.entry, self.cuts = model, entry, 0
        self.next_draft: Optional[tuple[mx.array, mx.array]] = None  # MTP (logits (V,), hidden (1, 1, D))

    def _mtp(self, hidden: mx.array, tokens: mx.array) -> tuple[mx.array, mx.array]:
        """Feed MTP pairs (features_t, token_{t+1}), tokens (n,); returns (last logits (V,), last MTP
        output (1, 1, ...)). Lazy: drafts stay on the device until the step's one sync."""
        logits, h = self.model.mtp_forward(hidden, tokens.astype(mx.uint32)[None], self.entry.block)
        return logits[0, -1], h[:, -1:]

    def target(self, tokens: mx.array, layers: list) -> tuple[mx.array, mx.array]:
        h = self.model.trunk(tokens, layers)
        return h, h

    def observe(self, h: mx.array, chunk: mx.array) -> None:
        """Feed every (h_t, token_{t+1}) pair of a prefill chunk to the MTP."""
        pending, self.entry.pending = self.entry.pending, h[:, -1:]
        # Pairs: (pending, chunk[0]) when a previous position waits for its next token, then (h_t, chunk[t+1]).
        pairs_h = h[:, :-1] if pending is None else mx.concatenate([pending, h[:, :-1]], axis=1)
        pairs_t = chunk.tolist()[0 if pending is not None else 1:]
        if pairs_t:
            self._mtp(pairs_h, mx.array(pairs_t))

    def propose(self, y: int, k: int, sampler) -> tuple[mx.array, Optional[mx.array]]:
        """k draft tokens (k,) after y, and their draft distributions (k, V) when sampling."""
        if self.next_draft is None:  # right after prefill: the MTP entry (h_{P-1}, y)
            self.next_draft = self._mtp(self.entry.pending, mx.array([y]))
        if k == 0:  # a plain step while drafting (one token left): the MTP entry above is still owed
            return mx.zeros((0,), mx.uint32), None
        logits, g = self.next_draft
        drafts, qs = [], []
        for i in range(k):
            d, q = draw(logits, sampler)
            if q is not None:
                qs.append(q)
            drafts.append(d.astype(mx.uint32))
            if i + 1 < k:  # chain: the MTP's own hidden state stands in for the model's
                logits, g = self._mtp(g, drafts[-1][None])
        return mx.stack(drafts), (mx.stack(qs) if qs else None)

    def commit(self, h: mx.array, a: int, emitted: list[int], k: int, go_on: bool) -> None:
        self.next_draft = None
        if go_on:
            if k > 1:
                self.entry.block.trim(k - 1)  # the chained entries saw the MTP's own output, not h
            # The accepted positions with the model's true hidden states; the last entry drafts next.
            self.next_draft = self._mtp(h[:, : a + 1], mx.array(emitted))
            mx.async_eval(self.next_draft)  # runs while the caller handles the emitted tokens
        self.entry.pending = h[:, a: a + 1]

    def settle(self, main_offset: int, in_step: bool) -> None:
        """Leave the MTP cache in resting form (one entry behind the main cache, `pending` = the features at
        the main cache's last position) so the next call on this prompt cache drafts on; or out of step."""
        mtp, P = self.entry, main_offset
        if not in_step or mtp.pending is None:
            mtp.main_offset = -1
            return
        if mtp.offset == P:
            mtp.block.trim(1)  # its last entry pairs h with a token the model has not been fed yet
        mtp.main_offset = P if mtp.offset == P - 1 else -1

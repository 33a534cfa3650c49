"""Drafting for the one row a `BatchDecoder` runs alone (draft="mtp", "dspark", or "auto": drafting while
the backend policy's measure says it pays, as `stream_generate(draft="auto")` decides).

Drafting verifies k+1 tokens of one sequence per forward; with several rows the batched step already
shares the weights' reads among them, and per-row acceptance would make rows emit different numbers
of tokens per step, so drafting is on only while one row runs. That row keeps a solo cache
(`SpeculativeDecoder` over it, as `stream_generate(draft=...)` does); when a second row joins, the
solo cache becomes a batch row and the drafter's state is dropped. A row that joins an empty batch is
prefilled through the drafter (which then holds the whole prompt's history, resumed from the prompt
cache's drafter entry when it is in step); a row that is alone again starts a fresh drafter cache: RoPE
is relative, so a history restarted mid-sequence is consistent (as `speculative.step.draft_cache_for`
does when the main cache moved without it).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from ..backend import policy_of
from ..errors import GenerationError
from ..speculative.costs import DraftCosts, measure_draft_costs
from ..speculative.decoder import SpeculativeDecoder
from ..speculative.drafter import make_draft_cache, make_drafter
from ..speculative.policy import DraftPolicy, DraftStats
from ..speculative.step import check_draft_args, draft_cache_for, resolve_drafter
from .steps import split_prompt_cache


class SoloDrafter:
    def __init__(self, model, draft: str, num_draft: int):
        if draft not in ("mtp", "dspark", "auto"):
            raise GenerationError(f"batched decoding drafts with draft='mtp', 'dspark' or 'auto' or not at all "
                                  f"(None), got {draft!r}")
        check_draft_args(model, draft, num_draft, None)
        self.model, self.k, self.auto = model, num_draft, draft == "auto"
        self.kind = resolve_drafter(model, draft)
        self.costs: Optional[DraftCosts] = None  # "auto" on a measuring backend: measured once, kept
        self.row = None
        self.dec: Optional[SpeculativeDecoder] = None
        self.primed = False  # the drafter has the features of the last fed position

    @property
    def busy(self) -> bool:
        return self.row is not None

    def _decoder(self, row, layers: list, entry) -> SpeculativeDecoder:
        drafter = make_drafter(self.model, self.kind, entry)
        return SpeculativeDecoder(self.model, layers, drafter, sampler=None, processors=[], num_draft=self.k,
                                  stats=DraftStats(), policy=self._policy(), keep_state=False,
                                  constraint=row.constraint)

    def prefill(self, row, prompt_cache: list, ids: mx.array, step_size: Optional[int],
                progress) -> Optional[tuple[int, mx.array]]:
        """Prefill `ids` after what `prompt_cache` (a solo cache with its drafter entry, if any) holds, the
        drafter observing every chunk; returns the first (token, logprobs), or None (nothing fed) when this
        row will not draft (sampled, or "auto" found drafting cannot pay here): prefill it plainly."""
        if not row.sampler.greedy:
            return None
        layers = split_prompt_cache(self.model, prompt_cache)[0]
        dec = self._decoder(row, layers, draft_cache_for(self.model, prompt_cache, self.kind))
        if not dec.policy.drafting:
            return None
        self.row, self.dec = row, dec
        try:
            out = dec.prefill(ids, step_size, progress)
        except BaseException:
            self.finish()
            raise
        self.primed = True
        return out

    def start(self, row, layers: list) -> None:
        """Decode `row` alone from its solo per-layer caches (holding every emitted token but row.y); a row
        this drafter prefilled is already running."""
        if self.row is row:
            return
        self.row, self.primed = row, False
        self.dec = self._decoder(row, layers, make_draft_cache(self.model, self.kind))

    def _policy(self) -> DraftPolicy:
        policy = DraftPolicy(auto=self.auto, mode=policy_of(self.model).draft_auto if self.auto else None)
        if policy.auto and policy.mode == "measure":
            if self.costs is None:
                self.costs = measure_draft_costs(self.model, self.k, kind=self.kind)
            policy.calibrate(self.costs, self.k)
        return policy

    def step(self) -> list[tuple[int, mx.array, bool]]:
        """(token, logprobs, drafted) for one forward. A row started mid-sequence first takes a plain
        forward (it gives the drafter the features of row.y's position); a sampled row never drafts (its
        sampler has no draft distribution)."""
        row = self.row
        left = row.budget - len(row.tokens)
        drafting = self.primed and row.sampler.greedy and left > 1 and self.dec.policy.drafting
        k = min(self.k, left - 1) if drafting else 0
        self.dec.sampler = None if row.sampler.greedy else row.sampler  # called only as sampler(logprobs (1, V))
        out = self.dec.step(row.y, k, left, drafting)
        if drafting:
            self.dec.policy.judge(self.dec.stats, self.dec.draft_wall, self.dec.draft_steps)
        self.primed = True
        return [(t, lp, drafting) for t, lp in out]

    def layers(self) -> list:
        return self.dec.cache

    def finish(self) -> list:
        """Stop drafting; returns the row's per-layer caches."""
        layers, self.row, self.dec = self.dec.cache, None, None
        return layers

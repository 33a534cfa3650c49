"""The drafter protocol the speculative decoder drives; MTP (`mtp_drafter`) and DSpark (`dspark_drafter`)
implement it. A drafter's state lives in its entry of the prompt cache (`cache.draft.DraftCache`).

  target(tokens, layers)        one main-model forward over tokens (1, n): (features the LM head reads,
                                what the drafter reads from it); the decoder calls it for prefill and verify
  observe(extra, tokens)        prefill: the main model was fed `tokens` (n,) (`extra` from `target`)
  propose(y, k, sampler)        k draft tokens after y (the last sampled token, not yet fed): (drafts (k',),
                                their draft distributions (k', V) when sampling, else None), k' <= k
  commit(extra, a, emitted, k, go_on)
                                after a verify over [y, drafts] of which a were accepted (`emitted`: the
                                a accepted drafts and the model's own next token); roll back what saw the
                                rejected drafts; `go_on`: drafting continues (prepare the next proposal)
  settle(main_offset, in_step)  leave the cache entry resting at the main cache's offset, or out of step
  cut                           proposals cut short by the drafter's own confidence (DSpark), counted
"""

from __future__ import annotations

from typing import Optional, Protocol

import mlx.core as mx

from ..cache.draft import DraftCache
from ..errors import GenerationError

DRAFTERS = ("mtp", "dspark")


class Drafter(Protocol):
    entry: DraftCache
    cuts: int

    def target(self, tokens: mx.array, layers: list) -> tuple[mx.array, mx.array]: ...

    def observe(self, extra: mx.array, tokens: mx.array) -> None: ...

    def propose(self, y: int, k: int, sampler) -> tuple[mx.array, Optional[mx.array]]: ...

    def commit(self, extra: mx.array, a: int, emitted: list[int], k: int, go_on: bool) -> None: ...

    def settle(self, main_offset: int, in_step: bool) -> None: ...


def make_draft_cache(model, kind: str) -> DraftCache:
    return model.make_dspark_cache() if kind == "dspark" else model.make_mtp_cache()


def make_drafter(model, kind: str, entry: DraftCache, *, confidence_cut: Optional[float] = None) -> Drafter:
    """The drafter `kind` ("mtp" | "dspark") of `model` over its prompt-cache entry."""
    if kind == "dspark":
        from .dspark_drafter import DSparkDrafter

        return DSparkDrafter(model, entry, confidence_cut=confidence_cut)
    if kind == "mtp":
        from .mtp_drafter import MTPDrafter

        return MTPDrafter(model, entry)
    raise GenerationError(f"drafter {kind!r}: choose one of {', '.join(DRAFTERS)}")

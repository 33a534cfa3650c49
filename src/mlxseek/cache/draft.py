"""What every drafter's cache is: the prompt cache's entry after the per-layer caches (as mlx-lm keeps a
draft model's cache in `prompt_cache[len(model.layers):]`). A prefix cache does not snapshot it (it is
rebuilt from the main cache's history); speculative decoding restarts it when the main cache moved without it.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import _BaseCache


class DraftCache(_BaseCache):
    """Base of MTPCache and DSparkCache. `costs`: k -> measured DraftCosts (draft="auto"), per conversation."""

    def __init__(self):
        self.costs: dict[int, Any] = {}

    def in_step_with(self, main_offset: int) -> bool:
        raise NotImplementedError

    def size(self) -> int:
        return self.offset

    def empty(self) -> bool:
        return self.offset == 0

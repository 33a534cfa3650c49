"""The MTP module's cache, kept in the prompt cache after the per-layer caches (as mlx-lm keeps a draft
model's cache in `prompt_cache[len(model.layers):]`), so a conversation that drafts keeps drafting with
the MTP's history, a prefix cache that snapshots the prompt cache carries it, and no state lives elsewhere.

Besides the MTP block's own cache (a latent cache for V2/V3, a V4 layer cache for V4) it holds the
main model's pending hidden state (the features at the main cache's last fed position, which pair with
the next token) and the main offset it belongs to. When the main cache moved without the MTP (plain
decoding, a trim), speculative decoding sees the offsets disagree and starts the MTP afresh.
"""

from __future__ import annotations

from typing import Any, Optional

import mlx.core as mx

from .draft import DraftCache
from .protocol import Capabilities, CacheState, check_kind, cut, owned


class MTPCache(DraftCache):
    # The pending features pair with one main position, so a state is only valid where it was taken.
    capabilities = Capabilities(cut=False, batch=False, quantize=False)

    def __init__(self, block_cache: Any):
        super().__init__()
        self.block = block_cache  # the MTP decoder block's cache
        self.pending: Optional[mx.array] = None  # main features at the last fed position (1, 1, ...)
        self.main_offset = -1  # the main cache's offset when `pending` was taken; -1: not in step

    @property
    def offset(self) -> int:
        return self.block.offset

    def in_step_with(self, main_offset: int) -> bool:
        """True when this cache continues a main cache at `main_offset` (MTP one entry behind it)."""
        return self.pending is not None and self.main_offset == main_offset and self.offset == main_offset - 1

    def reset(self, block_cache: Any) -> None:
        self.block, self.pending, self.main_offset = block_cache, None, -1

    @property
    def state(self):
        return [*(self.block.state or ()), *([] if self.pending is None else [self.pending])]

    @property
    def kind(self) -> str:
        return f"mtp:{self.block.kind}"

    def snapshot(self) -> CacheState:
        inner = self.block.snapshot()
        arrays = {f"b.{k}": a for k, a in inner.arrays.items()}
        if self.pending is not None:
            arrays["pending"] = owned(self.pending)
        meta = {f"b.{k}": v for k, v in inner.meta.items()} | {"main_offset": self.main_offset}
        return CacheState(self.kind, inner.offset, arrays, meta)

    def restore(self, state: CacheState) -> None:
        check_kind(state, self.kind)
        inner = CacheState(self.block.kind, state.offset,
                           {k[2:]: a for k, a in state.arrays.items() if k.startswith("b.")},
                           {k[2:]: v for k, v in state.meta.items() if k.startswith("b.")})
        self.block.restore(inner)
        self.pending = owned(state.arrays["pending"]) if "pending" in state.arrays else None
        self.main_offset = state.meta["main_offset"]

    cut_state = staticmethod(cut)  # no token axis: valid only where it was taken

    def is_trimmable(self) -> bool:
        return self.block.is_trimmable()

    def trim(self, n: int) -> int:
        self.main_offset = -1  # trimmed from outside: no longer in step with the main cache
        return self.block.trim(n)

    @property
    def nbytes(self) -> int:
        pending = self.pending.nbytes if self.pending is not None else 0
        return getattr(self.block, "nbytes", 0) + pending

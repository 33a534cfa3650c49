"""Which weights this process holds. By default all of them; with `group=` one rank's share
(`mlxseek.parallel.distributed`); with `expert_memory_gb=` every non-expert weight plus an LRU of routed experts
paged from the store (`mlxseek.paging.pager`).

The loader asks a placement three things: `restrict(store, plan)` -> the store and key-map plan of what
to load now (before anything is read), `build(cfg, with_mtp)` -> the model skeleton, `finish(model)`
once the weights are in.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from ..config import ModelConfig
from ..errors import ConfigError


class Placement(Protocol):
    def restrict(self, store, plan) -> tuple[Any, Any]: ...

    def build(self, cfg: ModelConfig, *, with_mtp: bool): ...

    def finish(self, model) -> None: ...


def placement_for(cfg: ModelConfig, store, plan, *, group=None, parallel: str = "pipeline",
                  expert_memory_gb: Optional[float] = None, dtype=None, keep_fp32=None) -> Optional[Placement]:
    """The placement for these `load` options, or None for the default (everything resident)."""
    if parallel not in ("pipeline", "expert"):
        raise ConfigError(f"parallel={parallel!r}: choose 'pipeline' (contiguous layers per rank) or 'expert' "
                          "(a slice of every MoE layer's experts per rank)")
    sharded = group is not None and group.size() > 1
    if sharded and expert_memory_gb is not None:
        raise ConfigError("expert_memory_gb and a distributed group cannot be combined yet; "
                          "use --distributed or --expert-memory-gb, not both")
    if sharded:
        from ..parallel.distributed import ShardPlacement

        return ShardPlacement(cfg, store, plan, group, parallel)
    if expert_memory_gb is not None:
        from ..paging.pager import PagedPlacement

        return PagedPlacement(cfg, store, plan, budget_gb=expert_memory_gb, dtype=dtype, keep_fp32=keep_fp32)
    return None

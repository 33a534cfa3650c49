"""What both families share: mlx-lm's model protocol plus mlxseek's own, so every tool drives V2/V3/V3.2
and V4 alike.

  model(inputs, cache)           logits (B, L, V)               mlx-lm's protocol (`args`, `layers`)
  make_cache(kv_bits=, ...)      one cache per layer             kv_bits: 8/4-bit latent (a family that
                                                                 cannot quantize its cache raises)
  trunk(inputs, cache) -> T      what the LM head and the MTP module read (V3: normed hidden (B, L, D);
                                 V4: the last layer's hc streams (B, L, n, D))
  head(T)                        logits from trunk features
  mtp_forward(T, next_ids, c)    the MTP module: (logits for t+2, its own features for chaining)
  make_mtp_cache()               the MTP block's cache, wrapped as the prompt cache's MTP entry
  set_attention_impl(impl)       "auto" | "naive" | "absorbed" (a family without a path raises)
Placement and layout are typed attributes set by the loader: `kernel_layout`, `pager`, `shard`, `backend`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

import mlx.nn as nn

from ..config import ModelConfig
from ..cpu.kmajor import LAYOUT_BITS  # bits of the load-time K-major re-layout
from ..errors import ConfigError

ATTENTION_IMPLS = ("auto", "naive", "absorbed")


class KernelLayout(str, Enum):
    """Which quantized-weight layout the model runs: the checkpoint's, K-major stored by `convert
    --layout kmajor`, K-major re-laid at load (8-bit), or both (stored modules kept, the rest re-laid)."""

    CHECKPOINT = "checkpoint"
    KMAJOR_STORED = "kmajor (stored)"
    KMAJOR_RELAID = f"kmajor-int{LAYOUT_BITS}"
    KMAJOR_STORED_AND_RELAID = f"kmajor (stored) + kmajor-int{LAYOUT_BITS}"

    @property
    def relaid(self) -> bool:
        """True when some modules were re-laid at load (their bits are LAYOUT_BITS, not the recipe's)."""
        return self in (KernelLayout.KMAJOR_RELAID, KernelLayout.KMAJOR_STORED_AND_RELAID)

    def __str__(self) -> str:
        return self.value


class CausalLM(nn.Module):
    """Base of both families' models. Subclasses build `model` (the backbone), `lm_head`, `mtp`."""

    supports_mtp_drafting = False  # `draft="mtp"` works for this family
    # Its attention layers also take a batch of solo caches (`cache.batch.RowBatchCache.row_caches`) and
    # attend row by row inside one forward (V4: the reference of its fused batch cache).
    attends_row_caches = False
    # False: batched rows keep their solo caches (`cache.batch.RowBatchCache`) whatever their kind, the slow
    # reference the fused batch caches (one attention pass for all rows) are tested and measured against.
    fuse_batch_rows = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.args = cfg  # mlx-lm reads `model.args`
        self.config = cfg
        self.model_type = cfg.model_type
        self.kernel_layout = KernelLayout.CHECKPOINT
        self.pager: Optional[Any] = None  # mlxseek.paging.pager.ExpertPager when experts are paged
        self.shard: Optional[Any] = None  # mlxseek.parallel.distributed.Shard on a distributed rank
        self.backend: Optional[Any] = None  # mlxseek.backend.BackendPolicy the loader applied (None: built directly)

    @property
    def drafters(self) -> tuple[str, ...]:
        """The drafters this model carries (`draft=` names), the one draft="auto" takes first."""
        found = ["dspark"] if "dspark" in self else []
        if self.supports_mtp_drafting and "mtp" in self:
            found.append("mtp")
        return tuple(found)

    @property
    def layers(self) -> list:
        return self.model.layers

    def hidden_states(self, inputs, cache: Optional[list] = None):
        """Final normed hidden states (B, L, D): what the LM head reads."""
        return self.model(inputs, cache)

    @staticmethod
    def check_attention_impl(impl: str, supported: tuple[str, ...], family: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention impl must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
        if impl not in supported:
            raise ConfigError(f"attention impl {impl!r} does not exist for {family}; "
                              f"choose one of {', '.join(supported)}")

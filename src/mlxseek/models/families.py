"""Model families as objects: one `Family` per DeepSeek family owns what generic code used to learn by
testing `model_type` (loading, placements, serve, info/estimate ask it instead).

  model_types   the config.json `model_type`s it reads (V2 and V3.2 are variations of V3)
  model_class   the `CausalLM` it builds
  sizing        which parameter census / cache-size rules `tools/` apply ("mla", "v4", "csa2")
  chat style    the default chat format (`formats.detect_style` refines V2/V3 by the shipped template)
  capabilities  what placements support it: experts paged from disk, distributed (pipeline / expert);
                which layer-by-layer forward `convert --calibration` runs ("mla", "mhc"), or why none
  drafters      the drafters the family can carry (a checkpoint may hold none of them)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

from ..checkpoint.v4_names import official_v4_key
from ..config import ModelConfig
from ..errors import ConfigError
from ..formats import detect_style
from .deepseek_v3 import Model
from .deepseek_v4 import V4Model
from .deepseek_v41 import V41Model


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    model_class: type
    sizing: str  # "mla" (latent cache), "dsa" (+ indexer keys, V3.2), "v4" (window + compressed), "csa2" (V4.1)
    official_v4_names: bool  # DeepSeek's V4 tensor names and `X.scale` tensors (keymap)
    fp8_scale_bytes: int  # one FP8 block scale as shipped: float32 (V3, V3.2), ue8m0 byte (V4, V4.1)
    pages_experts: bool  # `expert_memory_gb` (paging/)
    distributes: bool  # pipeline / expert parallel (parallel/)
    # `convert --calibration`'s layer-by-layer forward: "mla" (one hidden state between layers), "mhc" (V4's
    # hc_mult residual streams between layers); "" with `calibration_gap` saying what it lacks.
    calibrates: str
    drafters: tuple[str, ...]
    calibration_gap: str = ""

    def key_rename(self, cfg: ModelConfig) -> Optional[Callable[[str], str]]:
        """The family's checkpoint names -> mlxseek paths (`checkpoint.keymap.build_plan(rename=)`); None: the
        HF layout the key map reads as is. V4's DSpark releases store the drafter under `mtp.{s}.`."""
        if not self.official_v4_names:
            return None
        return partial(official_v4_key, dspark=cfg.has_dspark)

    def chat_style(self, model_type: str, chat_template: Optional[str] = None, *, dspark: bool = False) -> str:
        """The default chat format of a checkpoint of this family (raises ChatFormatError if none). `dspark`:
        the config carries `dspark_*` keys, which among V4 releases only 0731/0813 (and June's -DSpark) do,
        and those speak the 0731 encoder (formats.style.is_v4_0731 prefers the shipped encoder file)."""
        return detect_style(model_type=model_type, chat_template=chat_template, v0731=dspark)


_MLA = dict(official_v4_names=False, fp8_scale_bytes=4, pages_experts=True, distributes=True, calibrates="mla",
            drafters=("mtp",))
_V4 = dict(official_v4_names=True, fp8_scale_bytes=1, pages_experts=False, distributes=False)
FAMILIES: tuple[Family, ...] = (
    Family("deepseek_v3", ("deepseek_v2", "deepseek_v3"), Model, "mla", **_MLA),  # V2, V2-Lite, V3, R1, V3.1
    Family("deepseek_v32", ("deepseek_v32",), Model, "dsa", **_MLA),
    Family("deepseek_v4", ("deepseek_v4",), V4Model, "v4", drafters=("mtp", "dspark"), calibrates="mhc",
           **_V4),  # 0731/0813 too
    Family("deepseek_v41", ("deepseek_v41",), V41Model, "csa2", drafters=("dspark",), calibrates="",
           calibration_gap="CSA2 layers reuse other layers' compressed KV and top-k, Engram reads its tables by "
                           "position: a layer cannot run alone", **_V4),
)
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(cfg: ModelConfig) -> Family:
    """The family of a config (ConfigError naming model_type for one mlxseek does not build)."""
    fam = _BY_TYPE.get(cfg.model_type)
    if fam is None:
        raise ConfigError(f"config.json model_type {cfg.model_type!r}: mlxseek builds {', '.join(_BY_TYPE)}",
                          field="model_type")
    return fam


def has(cfg: ModelConfig, capability: str) -> bool:
    """True when cfg's family has `capability` (False for a model_type no family reads)."""
    fam = _BY_TYPE.get(cfg.model_type)
    return fam is not None and bool(getattr(fam, capability))


def supported(capability: str) -> list[str]:
    """The model_types whose family has `capability` (an attribute of Family), for error messages."""
    return [t for f in FAMILIES if getattr(f, capability) for t in f.model_types]

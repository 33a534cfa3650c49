"""The model families, one file each: `deepseek_v3` (V2, V2-Lite, V3, R1, V3.1, V3.2) and `deepseek_v4`
(V4 Flash/Pro), both following the protocol in `base`. `build_model(cfg)` picks the family."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import ConfigError
from .base import CausalLM, KernelLayout
from .deepseek_v3 import Model
from .deepseek_v4 import V4Model

# model_type -> the family's model class (config.json `model_type`; V2 and V3.2 are variations of V3).
MODEL_CLASSES: dict[str, type] = {"deepseek_v2": Model, "deepseek_v3": Model, "deepseek_v32": Model,
                                  "deepseek_v4": V4Model}


def build_model(cfg: ModelConfig, *, with_mtp: bool = True) -> CausalLM:
    if cfg.model_type not in MODEL_CLASSES:
        raise ConfigError(f"config.json model_type {cfg.model_type!r}: mlxseek builds {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[cfg.model_type](cfg, with_mtp=with_mtp)


__all__ = ["CausalLM", "KernelLayout", "MODEL_CLASSES", "Model", "V4Model", "build_model"]

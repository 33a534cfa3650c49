"""The model families, one file each: `deepseek_v3` (V2, V2-Lite, V3, R1, V3.1, V3.2), `deepseek_v4`
(V4 Flash/Pro, 0731/0813 with DSpark) and `deepseek_v41`, all following the protocol in `base`; `families`
holds one `Family` object per family, which generic code asks. `build_model(cfg)` builds the family's model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..config import ModelConfig
from ..errors import ConfigError
from .base import CausalLM, KernelLayout
from .deepseek_v3 import Model
from .deepseek_v4 import V4Model
from .deepseek_v41 import V41Model
from .families import FAMILIES, Family, family_of

# model_type -> the family's model class (config.json `model_type`; V2 and V3.2 are variations of V3).
MODEL_CLASSES: dict[str, type] = {t: f.model_class for f in FAMILIES for t in f.model_types}


def build_model(cfg: ModelConfig, *, with_mtp: bool = True) -> CausalLM:
    return family_of(cfg).model_class(cfg, with_mtp=with_mtp)


def build_checked(build: Callable, cfg: ModelConfig, folder: Path, *, prepare: Optional[Callable] = None,
                  **kw) -> CausalLM:
    """`build(cfg, **kw)`, then `prepare(model)` (e.g. quantize like the checkpoint), with the sizes
    config.json gives that MLX cannot even describe (an array shape past 2**31, a dimension a quantization
    group does not divide) reported as a ConfigError. Parameters stay lazy: nothing is allocated."""
    try:
        model = build(cfg, **kw)
        if prepare is not None:
            prepare(model)
        return model
    except (OverflowError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise ConfigError(f"{Path(folder) / 'config.json'}: describes a model that cannot be built "
                          f"({type(e).__name__}: {e}); its sizes (hidden_size, head counts and dims, hc_mult, ...) "
                          "are wrong") from None


__all__ = ["FAMILIES", "CausalLM", "Family", "KernelLayout", "MODEL_CLASSES", "Model", "V4Model", "V41Model", "build_checked", "build_model",
           "family_of"]

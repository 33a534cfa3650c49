"""What config.json's `quantization` records for a module: its parameters and its weight layout.

Recorded, never guessed from tensor shapes: the global entry (group_size, bits, mode) applies unless the
module's path has its own entry (a params dict, or `false` for a module left in float).
"""

from __future__ import annotations

from typing import Optional

from ..config import ModelConfig
from ..errors import ConfigError


def quant_params(cfg: ModelConfig, path: str) -> Optional[dict]:
    """Recorded (never guessed) quantization parameters for module `path`, or None if it is not quantized."""
    q = cfg.quantization
    if not q:
        return None
    per = q.get(path, True)
    if per is False:
        return None
    src = per if isinstance(per, dict) else q
    try:
        return {"group_size": int(src["group_size"]), "bits": int(src["bits"]), "mode": src.get("mode", "affine")}
    except KeyError as e:
        raise ConfigError(f"config.json: quantization entry for {path!r} lacks {e.args[0]!r}") from None


def quant_layout(cfg: ModelConfig, path: str) -> str:
    """The recorded weight layout of quantized module `path`: "transposed" (MLX's default) or "kmajor"."""
    per = (cfg.quantization or {}).get(path)
    return per.get("layout", "transposed") if isinstance(per, dict) else "transposed"


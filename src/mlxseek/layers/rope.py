"""Rotary position embedding with DeepSeek's YaRN context extension.

Provenance: YaRN (Peng et al. 2023, arXiv:2309.00071) as DeepSeek-V2/V3 configure it in `rope_scaling`
(`factor`, `original_max_position_embeddings`, `beta_fast`, `beta_slow`, `mscale`, `mscale_all_dim`).
DeepSeek rotates interleaved pairs (x0,x1),(x2,x3)... ("traditional" in MLX terms).
"""

from __future__ import annotations

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import ConfigError


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    # YaRN's attention temperature: 0.1 * m * ln(s) + 1 for s > 1.
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(rotations: float, dim: int, base: float, max_pos: int) -> float:
    # The rotary dim whose wavelength completes `rotations` turns over `max_pos` tokens.
    return dim * math.log(max_pos / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(dim: int, base: float, scaling: dict) -> np.ndarray:
    """Per-pair inverse frequencies (dim/2,): interpolated below beta_slow, extrapolated above beta_fast."""
    factor = float(scaling["factor"])
    orig = int(scaling.get("original_max_position_embeddings", 4096))
    beta_fast, beta_slow = float(scaling.get("beta_fast", 32)), float(scaling.get("beta_slow", 1))
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low = max(math.floor(_correction_dim(beta_fast, dim, base, orig)), 0)
    high = min(math.ceil(_correction_dim(beta_slow, dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    extrapolate = 1.0 - ramp  # 1 keeps the original frequency, 0 interpolates by `factor`
    return inv / factor * (1 - extrapolate) + inv * extrapolate


def softmax_scale(head_dim: int, scaling: Optional[dict]) -> float:
    """1/sqrt(d), times YaRN's mscale(factor, mscale_all_dim)^2 as DeepSeek applies it to attention."""
    scale = head_dim**-0.5
    if scaling and scaling.get("mscale_all_dim"):
        m = yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"]))
        scale *= m * m
    return scale


class RotaryEmbedding(nn.Module):
    def __init__(self, dims: int, base: float, scaling: Optional[dict] = None):
        super().__init__()
        self.dims = dims
        rtype = (scaling or {}).get("type", (scaling or {}).get("rope_type", "default"))
        if scaling is None or rtype == "default":
            inv = 1.0 / (base ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
            self.mscale = 1.0
        elif rtype == "yarn":
            inv = yarn_inv_freq(dims, base, scaling)
            f, m, m_all = float(scaling["factor"]), scaling.get("mscale"), scaling.get("mscale_all_dim")
            # cos/sin carry mscale/mscale_all_dim (1.0 for every released V2/V3 config, where the two match);
            # DeepSeek's reference applies no cos/sin scale when they are absent, so neither do we.
            self.mscale = yarn_mscale(f, float(m)) / yarn_mscale(f, float(m_all)) if m and m_all else 1.0
        else:
            raise ConfigError(f"config.json: rope_scaling.type {rtype!r} is not supported (yarn or default)")
        # mx.fast.rope takes wavelengths (1/inv_freq); kept out of the parameter tree.
        self._freqs = mx.array((1.0 / inv).astype(np.float32))

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        # offset: the first position, or (B,) per-row first positions (batched ragged rows).
        if self.mscale != 1.0:
            x = x * self.mscale
        return mx.fast.rope(
            x, self.dims, traditional=True, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )

"""DeepSeek-V4's official low-precision formats: FP4 e2m1 routed experts and e8m0 (ue8m0) scales.

Provenance: DeepSeek-V4 `inference/model.py` (`Linear` with `torch.float4_e2m1fn_x2`) and the released
safetensors: a routed-expert weight W (M, N) is stored as `weight` int8 (M, N/2), two e2m1 codes per
byte (element 2i in the low nibble, 2i+1 in the high one), plus `scale` float8_e8m0 (M, N/32), one
power of two per 32 consecutive inputs: W[m, n] = e2m1(code[m, n]) * 2^(scale[m, n // 32] - 127).
Non-expert weights are FP8 e4m3 with one e8m0 scale per 128x128 block (`fp8.py` dequantizes them once
the scales are decoded here). MLX loads both e8m0 and int8 tensors as raw bytes.

MLX's `mxfp4` quantization mode (group 32, e2m1 codes packed low nibble first into uint32, uint8 e8m0
scales) is the same encoding, so the experts import losslessly: the bytes are reinterpreted, not
re-rounded (`fp4_to_mxfp4`; tests/test_v4.py checks the dequantizations agree bit for bit).
"""

from __future__ import annotations

import mlx.core as mx

from ..errors import CheckpointError

FP4_GROUP = 32  # inputs per e8m0 scale (OCP MX block size, DeepSeek-V4 `fp4_block_size`)
MXFP4 = {"group_size": FP4_GROUP, "bits": 4, "mode": "mxfp4"}  # the nn.quantize parameters it maps to
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def decode_e8m0(s: mx.array) -> mx.array:
    """uint8 e8m0 bytes -> float32 2^(s - 127), built from the bits (exact, 2^-127 included); 255 is NaN."""
    s = s.astype(mx.uint32)
    bits = mx.where(s == 0, mx.array(1 << 22, mx.uint32), s << 23)  # s = 0: the subnormal 2^-127
    bits = mx.where(s == 255, mx.array(0x7FC00000, mx.uint32), bits)
    return bits.view(mx.float32)


def unpack_e2m1(packed: mx.array) -> mx.array:
    """(M, N/2) int8/uint8, two codes per byte, low nibble first -> (M, N) float32 values."""
    b = packed.view(mx.uint8)
    codes = mx.stack([b & 0xF, b >> 4], axis=-1).reshape(*b.shape[:-1], -1)
    return mx.array(E2M1_VALUES, mx.float32)[codes]


def _check(packed: mx.array, scale: mx.array, key: str) -> None:
    M, half = packed.shape
    if scale.shape != (M, 2 * half // FP4_GROUP) or (2 * half) % FP4_GROUP:
        raise CheckpointError(
            f"{key}: FP4 weight {tuple(packed.shape)} (two values per byte) needs an e8m0 scale of shape "
            f"{(M, 2 * half // FP4_GROUP)} (one per {FP4_GROUP} inputs), got {tuple(scale.shape)}"
        )


def dequant_fp4(packed: mx.array, scale: mx.array, dtype=mx.float32, *, key: str = "weight") -> mx.array:
    """FP4 weight (M, N/2) + raw e8m0 scale bytes (M, N/32) -> (M, N) in `dtype` (exact in float32)."""
    _check(packed, scale, key)
    w = unpack_e2m1(packed).reshape(packed.shape[0], -1, FP4_GROUP)  # (M, N/32, 32)
    return (w * decode_e8m0(scale)[..., None]).reshape(packed.shape[0], -1).astype(dtype)


def fp4_to_mxfp4(packed: mx.array, scale: mx.array, *, key: str = "weight") -> tuple[mx.array, mx.array]:
    """The same bytes as MLX mxfp4: (weight uint32 (M, N/8), scales uint8 (M, N/32)); nothing is rounded."""
    _check(packed, scale, key)
    return packed.view(mx.uint8).view(mx.uint32), scale.view(mx.uint8)

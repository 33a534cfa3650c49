"""A quantized-weight layout for MLX's CPU backend: W stored as (in, out), 8-bit groups along `out`.

Why: MLX's CPU quantized kernels are far faster with `transpose=False` (weight (K, N), groups along N)
than with the checkpoint's transposed layout (weight (N, K), groups along K), which is Metal's fast path.
Measured on this machine (one row, 16384x1024, float32 activations; benchmarks/profile_decode.py per op):
quantized_matmul 4-bit transposed ~10-15 ms vs 8-bit (K, N) ~3.3 ms; gather_qmm for 6 of 64 experts
~15x faster. The cost: requantizing already-quantized weights adds error (at 8 bits, ~5% of the original
4-bit RMS error) and 8-bit weights take ~2x the memory of 4-bit ones. So this is applied once, at load
time, only on the CPU backend, and `load(..., cpu_layout=False)` keeps the checkpoint layout.

`mlxseek convert --layout kmajor` avoids both costs: it quantizes the float source straight into this
layout at the recipe's bits (4-bit K-major gather_qmm is even faster than 8-bit here), and the loader
builds these modules from the stored shapes (`stored_kmajor_skeleton`).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

from ..checkpoint.quant_record import quant_layout, quant_params
from ..errors import ConfigError

LAYOUT_BITS = 8


def _group_size(n_out: int) -> int | None:
    # Groups run along `out` in this layout, so `out` must divide into whole groups.
    return next((g for g in (128, 64, 32) if n_out % g == 0), None)


def _requantize_kmajor(weight, scales, biases, *, group_size, bits, mode) -> tuple[mx.array, ...] | None:
    """(..., N, K) checkpoint-layout quantized weight -> (..., K, N) 8-bit groups along N, or None."""
    if mode != "affine":
        return None  # mxfp4 imports are lossless as they are; requantizing would lose that
    # In float32 whatever the scales' dtype (bf16 on Metal): bf16 rounding here would be ~one 8-bit step.
    f32 = lambda a: None if a is None else a.astype(mx.float32)  # noqa: E731
    w = mx.dequantize(weight, f32(scales), f32(biases), group_size=group_size, bits=bits, mode=mode)  # (..., N, K)
    g = _group_size(w.shape[-2])
    if g is None:
        return None
    q = mx.quantize(mx.contiguous(w.swapaxes(-1, -2)), group_size=g, bits=LAYOUT_BITS)
    mx.eval(q)  # materialise now so the checkpoint-layout arrays can be freed module by module
    return (*q, g)


class KMajorQuantizedLinear(nn.Module):
    """y = x @ W (+ bias) with W (in, out) quantized along `out`."""

    def __init__(self, weight, scales, biases, group_size: int, bias=None, bits: int = LAYOUT_BITS):
        super().__init__()
        self.weight, self.scales, self.biases = weight, scales, biases
        if bias is not None:
            self.bias = bias
        self.group_size, self.bits = group_size, bits
        self.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.quantized_matmul(
            x, self["weight"], self["scales"], self["biases"], transpose=False,
            group_size=self.group_size, bits=self.bits,
        )
        return y + self["bias"] if "bias" in self else y


class KMajorQuantizedSwitchLinear(nn.Module):
    """Stacked experts (E, in, out), quantized along `out`, for gather_qmm with transpose=False."""

    def __init__(self, weight, scales, biases, group_size: int, bits: int = LAYOUT_BITS):
        super().__init__()
        self.weight, self.scales, self.biases = weight, scales, biases
        self.group_size, self.bits = group_size, bits
        self.freeze()

    def __call__(self, x, indices, sorted_indices=False):
        return mx.gather_qmm(
            x, self["weight"], self["scales"], self["biases"], rhs_indices=indices, transpose=False,
            group_size=self.group_size, bits=self.bits, sorted_indices=sorted_indices,
        )

    def dense_weight(self, e: int) -> mx.array:
        """Expert e as a dense (out, in) matrix, for the per-expert reference path."""
        w = mx.dequantize(self.weight[e], self.scales[e], self.biases[e], group_size=self.group_size, bits=self.bits)
        return w.T


def _convert(module: nn.Module):
    if isinstance(module, nn.QuantizedLinear):
        q = _requantize_kmajor(module.weight, module.scales, module.get("biases"),
                               group_size=module.group_size, bits=module.bits, mode=module.mode)
        return q and KMajorQuantizedLinear(*q, bias=module.get("bias"))
    if isinstance(module, QuantizedSwitchLinear) and "bias" not in module:
        q = _requantize_kmajor(module.weight, module.scales, module.get("biases"),
                               group_size=module.group_size, bits=module.bits, mode=module.mode)
        return q and KMajorQuantizedSwitchLinear(*q)
    return None


def apply_cpu_layout(model: nn.Module) -> int:
    """Swap every eligible quantized linear / expert stack for its K-major 8-bit twin, in place.
    Returns how many modules were converted. Swaps happen one module at a time, so the old and new
    copies of the weights coexist for one module only (peak memory ~ model + one matrix)."""
    from mlx.utils import tree_unflatten

    paths = [p for p, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, QuantizedSwitchLinear))]
    converted = 0
    for path in paths:
        module = _lookup(model, path)
        new = _convert(module)
        if new is not None:
            model.update_modules(tree_unflatten([(path, new)]))
            converted += 1
            del module, new
    return converted


def stored_kmajor_skeleton(model: nn.Module, cfg, stored, prefix: str = "") -> int:
    """Swap the quantized modules a converted folder stores K-major (`mlxseek convert --layout kmajor`)
    for KMajor twins with placeholder arrays of the stored shapes, before the weights are loaded.
    `stored(path)`: whether the folder holds module `path` quantized; `prefix` + path is its name in
    config.json's `quantization` (a paged expert module is built apart from the model)."""
    from mlx.utils import tree_unflatten

    swaps = []
    for path, m in model.named_modules():
        if not stored(path) or quant_layout(cfg, prefix + path) != "kmajor":
            continue
        if not isinstance(m, (nn.QuantizedLinear, QuantizedSwitchLinear)):
            raise ConfigError(f"config.json: quantization records {prefix + path!r} as kmajor, but it is a "
                              f"{type(m).__name__}; only Linear and expert stacks can be stored K-major")
        p = quant_params(cfg, prefix + path)
        g, b = p["group_size"], p["bits"]
        *lead, n_out, packed_in = m.weight.shape  # (..., out, in * bits / 32)
        n_in = packed_in * 32 // b
        w = mx.zeros((*lead, n_in, n_out * b // 32), mx.uint32)  # placeholders: load_weights replaces them
        sb = mx.zeros((*lead, n_in, n_out // g), m.scales.dtype)
        new = (KMajorQuantizedLinear(w, sb, sb, g, bias=m.get("bias"), bits=b) if isinstance(m, nn.QuantizedLinear)
               else KMajorQuantizedSwitchLinear(w, sb, sb, g, bits=b))
        swaps.append((path, new))
    if swaps:
        model.update_modules(tree_unflatten(swaps))
    return len(swaps)


def _lookup(model: nn.Module, path: str) -> nn.Module:
    m = model
    for part in path.split("."):
        m = m[int(part)] if isinstance(m, list) else m[part]
    return m

"""The CPU kernel layout (K-major, 8-bit) vs the checkpoint layout it is derived from."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import FIXTURES, golden

import mlxseek
from mlxseek.cpu.kmajor import (
    KMajorQuantizedLinear,
    KMajorQuantizedSwitchLinear,
    apply_cpu_layout,
)


def test_kmajor_linear_matches_its_dense_weight():
    holder = nn.Module()
    holder.lin = nn.Linear(256, 384, bias=True)
    nn.quantize(holder, group_size=64, bits=4)
    assert apply_cpu_layout(holder) == 1
    k = holder.lin
    assert isinstance(k, KMajorQuantizedLinear)
    dense = mx.dequantize(k.weight, k.scales, k.biases, group_size=k.group_size, bits=k.bits)  # (in, out)
    x = mx.random.normal((3, 256))
    assert float(mx.abs(k(x) - (x @ dense + k.bias)).max()) < 1e-4


def test_layout_error_is_small_next_to_quantization_error(mlx_community_v3):
    """Re-laying 4-bit weights at 8 bits must add far less error than the 4-bit quantization itself."""
    x = mx.array(golden("v3")["prompt"])[None]
    full = mlxseek.load(FIXTURES / "v3", with_mtp=False)[0](x)  # unquantized bf16 weights
    ckpt = mlxseek.load(mlx_community_v3, cpu_layout=False)[0]
    kmaj = mlxseek.load(mlx_community_v3, cpu_layout=True)[0]
    assert ckpt.kernel_layout == "checkpoint" and kmaj.kernel_layout == "kmajor-int8"
    assert any(isinstance(m, KMajorQuantizedSwitchLinear) for _, m in kmaj.named_modules())
    # Means, not maxima: one routing flip at one position would dominate a max on random weights.
    quant_err = float(mx.abs(ckpt(x) - full).mean())
    layout_err = float(mx.abs(kmaj(x) - ckpt(x)).mean())
    print(f"mean |logit error|: 4-bit quantization {quant_err:.3e}; added by the CPU layout {layout_err:.3e}")
    assert layout_err < 0.2 * quant_err


def test_experts_reference_path_understands_the_layout(mlx_community_v3):
    model = mlxseek.load(mlx_community_v3, cpu_layout=True)[0]
    moe = model.layers[1].mlp
    x = mx.random.normal((1, 5, model.config.hidden_size))
    assert float(mx.abs(moe(x) - moe(x, reference=True)).max()) < 1e-4


def test_bad_cpu_layout_option():
    with pytest.raises(ValueError, match="cpu_layout"):
        mlxseek.load(FIXTURES / "v3", cpu_layout="yes")

"""Quantized MLA latent cache (8/4-bit groups along the latent) vs the full-precision cache."""

import mlx.core as mx
import pytest
from conftest import FIXTURES, golden

import mlxseek
from mlxseek.cache.mla import LatentCache, QuantizedLatentCache


@pytest.fixture(scope="module")
def model_and_prompt():
    model, _ = mlxseek.load(FIXTURES / "v3", with_mtp=False)
    return model, mx.array(golden("v3")["prompt"])[None]


def run(model, x, cache):
    parts = [model(x[:, :6], cache)] + [model(x[:, i : i + 1], cache) for i in range(6, x.shape[1])]
    return mx.concatenate(parts, axis=1)


def test_quantized_cache_tracks_full_cache(model_and_prompt):
    model, x = model_and_prompt
    full = run(model, x, model.make_cache())
    scale = float(mx.abs(full).mean())
    drift = {}
    for bits in (8, 4):
        quant = run(model, x, model.make_cache(kv_bits=bits, kv_group_size=32))
        drift[bits] = float(mx.abs(quant - full).mean())
        print(f"{bits}-bit latent cache: mean |logit drift| {drift[bits]:.3e}, max {float(mx.abs(quant - full).max()):.3e}"
              f" (mean |logit| {scale:.2f})")
    # A broken cache (wrong groups, stale tokens) drifts by about the logits' own size.
    assert drift[8] < 0.02 * scale
    assert drift[4] < 0.3 * scale
    assert drift[8] < drift[4] / 4  # 16x finer steps: error must shrink accordingly


def set_cache_read(model, mode):
    for _, m in model.named_modules():
        if hasattr(m, "quantized_cache_read"):
            m.quantized_cache_read = mode


@pytest.mark.parametrize("read", ["packed", "dequantize"])
def test_quantized_absorbed_equals_dequantized_naive(model_and_prompt, read):
    """Absorbed attention over the quantized cache, reading the packed bytes (Metal's path) or a
    dequantized copy (the CPU's), equals naive attention over the dequantized cache."""
    model, x = model_and_prompt
    outs = {}
    for impl in ("absorbed", "naive"):
        model.set_attention_impl(impl)
        set_cache_read(model, read)
        outs[impl] = run(model, x, model.make_cache(kv_bits=8, kv_group_size=32))
    model.set_attention_impl("auto")
    set_cache_read(model, "auto")
    assert float(mx.abs(outs["absorbed"] - outs["naive"]).max()) < 1e-4


def test_cache_bytes_per_token(model_and_prompt):
    model, x = model_and_prompt
    cfg = model.config
    sizes = {}
    for bits in (None, 8, 4):
        cache = model.make_cache(kv_bits=bits, kv_group_size=32)
        model(x, cache)
        c = cache[0]
        sizes[bits] = c.bytes_per_token() if bits else sum(a.nbytes for a in c.keys_and_values()) / x.shape[1]
    R, Dr = cfg.kv_lora_rank, cfg.qk_rope_head_dim
    item = getattr(mx, model.backend.compute_dtype).size  # the backend policy's: float32 on CPU, bf16 on a GPU
    assert sizes[None] == (R + Dr) * item
    # packed latent + one scale and bias (compute dtype) per 32 values, rotary key unquantized
    assert sizes[8] == R + 2 * item * R / 32 + Dr * item
    assert sizes[4] == R / 2 + 2 * item * R / 32 + Dr * item


def test_to_quantized_keeps_tokens_and_trims(model_and_prompt):
    model, x = model_and_prompt
    cache = model.make_cache()
    model(x[:, :8], cache)
    q = [c.to_quantized(group_size=32, bits=8) for c in cache]
    assert isinstance(q[0], QuantizedLatentCache) and q[0].offset == 8
    assert q[0].trim(3) == 3 and q[0].offset == 5
    assert isinstance(cache[0], LatentCache)

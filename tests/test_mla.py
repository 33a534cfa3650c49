"""Naive vs absorbed MLA, and cached prefill+decode vs one full forward (slow reference vs fast path)."""

import mlx.core as mx
import pytest
from conftest import FIXTURES, golden

import mlxseek


@pytest.fixture(scope="module", params=["v2_lite", "v3"])
def model_and_prompt(request):
    model, _ = mlxseek.load(FIXTURES / request.param, dtype="float32")
    return model, mx.array(golden(request.param)["prompt"])[None]


def maxdiff(a, b):
    return float(mx.abs(a - b).max())


def test_naive_equals_absorbed(model_and_prompt):
    model, x = model_and_prompt
    model.set_attention_impl("naive")
    naive = model(x)
    model.set_attention_impl("absorbed")
    absorbed = model(x)
    model.set_attention_impl("auto")
    assert maxdiff(naive, absorbed) < 1e-4


@pytest.mark.parametrize("impl", ["naive", "absorbed", "auto"])
def test_prefill_then_decode_equals_full_forward(model_and_prompt, impl):
    model, x = model_and_prompt
    full = model(x)
    model.set_attention_impl(impl)
    cache = model.make_cache()
    parts = [model(x[:, :5], cache)]  # prefill a chunk
    parts.append(model(x[:, 5:8], cache))  # a second chunk attends over the cache
    parts += [model(x[:, i : i + 1], cache) for i in range(8, x.shape[1])]  # token-by-token decode
    model.set_attention_impl("auto")
    assert maxdiff(mx.concatenate(parts, axis=1), full) < 1e-4


def test_cache_holds_only_latent_and_rope_key(model_and_prompt):
    model, x = model_and_prompt
    cfg = model.config
    cache = model.make_cache()
    model(x, cache)
    keys, values = cache[0].keys_and_values()
    L = x.shape[1]
    assert keys.shape == (1, 1, L, cfg.kv_lora_rank)
    assert values.shape == (1, 1, L, cfg.qk_rope_head_dim)

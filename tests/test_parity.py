"""mlxseek vs two independent references on identical weights:
transformers' DeepseekV2/V3ForCausalLM (committed goldens) and mlx-lm's deepseek_v2/v3 models."""

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, golden
from mlx_lm.models.cache import make_prompt_cache
from reference import greedy, mlx_lm_model

TOL = 1e-4


def test_logits_match_transformers(fixture_name, fixture_model):
    g = golden(fixture_name)
    logits = fixture_model(fixture_name)(mx.array(g["prompt"])[None])[0]
    diff = np.abs(np.array(logits) - g["logits"]).max()
    print(f"{fixture_name}: max |mlxseek - transformers| = {diff:.2e}")
    assert diff < TOL


def test_greedy_tokens_match_transformers(fixture_name, fixture_model):
    g = golden(fixture_name)
    model = fixture_model(fixture_name)
    toks = greedy(model, mx.array(g["prompt"]), len(g["greedy"]), model.make_cache())
    assert toks == g["greedy"].tolist()


def test_logits_match_mlx_lm(fixture_name, fixture_model):
    g = golden(fixture_name)
    x = mx.array(g["prompt"])[None]
    ref = mlx_lm_model(FIXTURES / fixture_name)
    diff = float(mx.abs(fixture_model(fixture_name)(x) - ref(x)).max())
    print(f"{fixture_name}: max |mlxseek - mlx-lm| = {diff:.2e}")
    assert diff < TOL


def test_latent_cache_is_smaller_than_mlx_lm_v2_cache(fixture_model):
    """mlx-lm's deepseek_v2 caches per-head K and V; mlxseek caches the latent + rope key only."""
    g = golden("v2_lite")
    model, ref = fixture_model("v2_lite"), mlx_lm_model(FIXTURES / "v2_lite")
    ours, theirs = model.make_cache(), make_prompt_cache(ref)
    x = mx.array(g["prompt"])
    model(x[None], cache=ours)
    ref(x[None], cache=theirs)

    def per_token(cache):
        return sum(sum(a.nbytes for a in c.keys_and_values()) for c in cache) / len(x)

    cfg = model.config
    expected = cfg.num_attention_heads * (cfg.q_head_dim + cfg.v_head_dim) / (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    ratio = per_token(theirs) / per_token(ours)
    print(f"v2_lite fixture: mlx-lm cache {per_token(theirs):.0f} B/token, mlxseek {per_token(ours):.0f} B/token")
    assert ratio == pytest.approx(expected, rel=1e-6)

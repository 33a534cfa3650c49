"""DeepSeek-V3.2 (DSA): mlxseek vs transformers' DeepseekV32ForCausalLM goldens and mlx-lm's deepseek_v32
on identical weights, prefill vs token-by-token decode over a context 10x the indexer's top-k, cache
trimming, the official FP8 layout with ue8m0 scales, and the indexer against a NumPy reference.

Fixtures come from tests/fixtures/make_goldens_v32.py. v32_long has index_topk 32 and a 320-token
prompt: positions >= 32 attend to a strict subset of their past (the region mlx-lm is reported to break).
"""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, golden
from mlx_lm.models.cache import make_prompt_cache
from reference import greedy, mlx_lm_model

from mlxseek.cache.mla import DSACache
from mlxseek.config import ModelConfig
from mlxseek.layers.indexer import LightningIndexer

TOL = 1e-4
SHORT = ["v32", "v32_fp8"]


@pytest.fixture(scope="module")
def long_golden():
    g = golden("v32_long")
    g["topk"] = json.loads((FIXTURES / "v32_long" / "config.json").read_text())["index_topk"]
    assert len(g["prompt"]) >= 10 * g["topk"]
    return g


def decode_rows(model, tokens: mx.array, cache) -> mx.array:
    """Feed tokens one at a time through `cache`; returns each step's logits (T, V)."""
    rows = []
    for t in range(tokens.size):
        rows.append(model(tokens[t : t + 1][None], cache=cache)[0, -1])
        mx.eval(rows[-1])
    return mx.stack(rows)


def region_diffs(logits, g) -> tuple[float, float]:
    """Max |logits - golden| over positions < index_topk (dense) and >= index_topk (sparse)."""
    d = np.abs(np.array(logits) - g["logits"][: len(logits)]).max(-1)
    return float(d[: g["topk"]].max()), float(d[g["topk"] :].max())


@pytest.mark.parametrize("name", SHORT)
def test_logits_and_greedy_match_transformers(name, fixture_model):
    g, model = golden(name), fixture_model(name)
    prompt = mx.array(g["prompt"])
    diff = np.abs(np.array(model(prompt[None])[0]) - g["logits"]).max()
    print(f"{name}: max |mlxseek - transformers| = {diff:.2e}")
    assert diff < TOL
    assert greedy(model, prompt, len(g["greedy"]), model.make_cache()) == g["greedy"].tolist()


@pytest.mark.parametrize("name", SHORT)
def test_logits_match_mlx_lm(name, fixture_model):
    x = mx.array(golden(name)["prompt"])[None]
    diff = float(mx.abs(fixture_model(name)(x) - mlx_lm_model(FIXTURES / name)(x)).max())
    print(f"{name}: max |mlxseek - mlx-lm| = {diff:.2e}")
    assert diff < TOL


def test_long_prefill_matches_transformers_past_topk(fixture_model, long_golden):
    g, model = long_golden, fixture_model("v32_long")
    for impl in ("naive", "absorbed"):
        model.set_attention_impl(impl)
        dense, sparse = region_diffs(model(mx.array(g["prompt"])[None])[0], g)
        print(f"v32_long prefill [{impl}]: max diff positions < {g['topk']}: {dense:.2e}, >= {g['topk']}: {sparse:.2e}")
        assert max(dense, sparse) < TOL
    model.set_attention_impl("auto")


def test_long_prefill_scored_in_query_blocks(fixture_model, long_golden):
    """A small score budget makes the indexer score 7 queries at a time: same selection, same logits."""
    g, model = long_golden, fixture_model("v32_long")
    indexers = [layer.self_attn.indexer for layer in model.layers]
    budget = indexers[0].score_budget
    try:
        for ix in indexers:
            ix.score_budget = 7 * ix.n_heads * len(g["prompt"])
        assert max(region_diffs(model(mx.array(g["prompt"])[None])[0], g)) < TOL
    finally:
        for ix in indexers:
            ix.score_budget = budget


def test_long_decode_matches_prefill_and_transformers(fixture_model, long_golden):
    g, model = long_golden, fixture_model("v32_long")
    prompt = mx.array(g["prompt"])
    decoded = decode_rows(model, prompt, model.make_cache())
    dense, sparse = region_diffs(decoded, g)
    vs_prefill = float(mx.abs(decoded - model(prompt[None])[0]).max())
    print(f"v32_long decode: vs transformers < {g['topk']}: {dense:.2e}, >= {g['topk']}: {sparse:.2e}; "
          f"vs own prefill {vs_prefill:.2e}")
    assert max(dense, sparse, vs_prefill) < TOL
    assert greedy(model, prompt, len(g["greedy"]), model.make_cache()) == g["greedy"].tolist()


def test_long_context_mlx_lm_on_same_weights(long_golden):
    """What mlx-lm's deepseek_v32 gives over the same sequence (prefill and decode)."""
    g = long_golden
    ref, prompt = mlx_lm_model(FIXTURES / "v32_long"), mx.array(g["prompt"])
    pre = region_diffs(ref(prompt[None])[0], g)
    dec = region_diffs(decode_rows(ref, prompt, make_prompt_cache(ref)), g)
    print(f"v32_long mlx-lm vs transformers: prefill {pre[0]:.2e} / {pre[1]:.2e}, decode {dec[0]:.2e} / {dec[1]:.2e} "
          f"(positions < / >= {g['topk']})")
    assert max(*pre, *dec) < TOL


def test_multi_token_step_over_a_long_cache(fixture_model, long_golden):
    """A 4-token verify step after 300 cached tokens: the absorbed path gathers each query's top-k
    keys; the naive path masks all 304. Both must match the golden rows."""
    g, model = long_golden, fixture_model("v32_long")
    prompt = mx.array(g["prompt"])
    for impl in ("absorbed", "naive"):
        model.set_attention_impl(impl)
        cache = model.make_cache()
        model(prompt[None, :300], cache=cache)
        step = np.array(model(prompt[None, 300:304], cache=cache)[0])
        assert np.abs(step - g["logits"][300:304]).max() < TOL, impl
    model.set_attention_impl("auto")


@pytest.mark.parametrize("start,decoded,trim", [(310, 6, 9), (40, 4, 24)])
def test_trim_rolls_back_latent_and_indexer_keys_together(fixture_model, long_golden, start, decoded, trim):
    """Prefill, decode, trim n (the second case crosses back below index_topk), re-decode: same logits."""
    g, model = long_golden, fixture_model("v32_long")
    prompt = mx.array(g["prompt"])
    cache = model.make_cache()
    model(prompt[None, :start], cache=cache)
    decode_rows(model, prompt[start : start + decoded], cache)
    assert [c.trim(trim) for c in cache] == [trim] * len(cache)
    end = start + decoded - trim
    assert all(isinstance(c, DSACache) and c.offset == c.index.offset == end for c in cache)
    redo = decode_rows(model, prompt[end : end + trim + 2], cache)
    assert np.abs(np.array(redo) - g["logits"][end : end + trim + 2]).max() < TOL


def test_cache_state_round_trip(fixture_model, long_golden):
    g, model = long_golden, fixture_model("v32_long")
    prompt = mx.array(g["prompt"])
    cache = model.make_cache()
    model(prompt[None, :100], cache=cache)
    restored = [DSACache.from_state(c.state) for c in cache]
    step = np.array(decode_rows(model, prompt[100:104], restored))
    assert np.abs(step - g["logits"][100:104]).max() < TOL


def _numpy_index_scores(ix: LightningIndexer, x, qr, theta: float) -> np.ndarray:
    """Index scores from the DSA definition: half-split RoPE on the first Dr dims, LayerNorm keys,
    I[t, s] = sum_h w[t, h] relu(q[t, h] . k[s]) / sqrt(Di * Hi). Plain RoPE (no YaRN)."""
    p = {k: np.array(v, np.float64) for k, v in
         [("wq", ix.wq_b.weight), ("wk", ix.wk.weight), ("g", ix.k_norm.weight), ("b", ix.k_norm.bias), ("wp", ix.weights_proj.weight)]}
    Hi, Di, Dr = ix.n_heads, ix.head_dim, ix.rope_dim
    L = x.shape[0]

    def rope(v):  # v (L, ..., Di); pairs (i, i + Dr/2) rotate by pos * theta^(-2i/Dr)
        ang = np.arange(L)[:, None] * theta ** (-np.arange(0, Dr, 2) / Dr)[None]  # (L, Dr/2)
        ang = ang.reshape(L, *([1] * (v.ndim - 2)), Dr // 2)
        a, b = v[..., : Dr // 2], v[..., Dr // 2 : Dr]
        return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang), v[..., Dr:]], -1)

    q = rope((qr @ p["wq"].T).reshape(L, Hi, Di))
    k = x @ p["wk"].T
    k = rope((k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6) * p["g"] + p["b"])
    w = x @ p["wp"].T / np.sqrt(Hi * Di)  # (L, Hi)
    return np.einsum("th,ths->ts", w, np.maximum(np.einsum("thd,sd->ths", q, k), 0))


def test_indexer_matches_numpy_reference():
    cfg = ModelConfig.from_file(FIXTURES / "v32").replace(rope_scaling=None, index_topk=5)
    ix = LightningIndexer(cfg)
    ix.update({"k_norm": {"weight": mx.random.normal((cfg.index_head_dim,)), "bias": mx.random.normal((cfg.index_head_dim,))}})
    rng = np.random.default_rng(0)
    x, qr = rng.standard_normal((12, cfg.hidden_size)), rng.standard_normal((12, cfg.q_lora_rank))
    keys = ix.keys(mx.array(x, mx.float32)[None], 0)
    ours = np.array(ix.scores(mx.array(x, mx.float32)[None], mx.array(qr, mx.float32)[None], keys, 0)[0])
    ref = _numpy_index_scores(ix, x, qr, cfg.rope_theta)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    causal = np.tril(np.ones((12, 12), bool))
    top = np.array(ix.select(mx.array(ours)[None], mx.array(causal))[0])
    for t in range(ix.topk, 12):  # rows with more than K allowed keys pick exactly the K best
        assert set(top[t]) == set(np.argsort(-np.where(causal[t], ref[t], -np.inf))[: ix.topk])



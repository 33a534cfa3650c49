"""DeepSeek-V4 (Flash / Pro): transformers goldens on tiny official-layout checkpoints, cached decoding,
the official FP8 / FP4 weight formats, and the V4 building blocks against slow references."""

import json
import shutil
import time

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, golden
from st_io import edit_index, read_raw, rewrite

import mlxseek
from mlxseek.errors import WeightMismatchError
from mlxseek.layers.v4.mhc import sinkhorn

V4_FIXTURES = ["v4_flash", "v4_pro", "v4_fp4"]
_MODELS: dict = {}


def load(name):
    if name not in _MODELS:
        _MODELS[name] = mlxseek.load(FIXTURES / name, dtype="float32", tokenizer=False)[0]
    return _MODELS[name]


def raw_tensors(folder):
    """{key: (safetensors dtype, shape, raw bytes)} for every shard, read without MLX or torch."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        header, body = read_raw(f)
        for k, i in header.items():
            a, b = i["data_offsets"]
            out[k] = (i["dtype"], i["shape"], body[a:b])
    return out


def decode_e8m0(raw: bytes) -> np.ndarray:
    return np.ldexp(np.float32(1), np.frombuffer(raw, np.uint8).astype(np.int32) - 127).astype(np.float32)


# ---- goldens from transformers' DeepseekV4ForCausalLM ----------------------------------------------


@pytest.mark.parametrize("name", V4_FIXTURES)
def test_v4_logits_match_transformers(name):
    g = golden(name)
    logits = np.array(load(name)(mx.array(g["prompt"])[None])[0])
    diff = float(np.abs(logits - g["logits"]).max())
    print(f"{name}: max |logits - transformers| over {len(g['prompt'])} positions = {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.parametrize("name", V4_FIXTURES)
def test_v4_greedy_matches_transformers(name):
    g, model = golden(name), load(name)
    cache = model.make_cache()
    logits = model(mx.array(g["prompt"])[None], cache=cache)
    out = []
    for _ in range(len(g["greedy"])):
        out.append(int(mx.argmax(logits[0, -1])))
        logits = model(mx.array([[out[-1]]]), cache=cache)
    assert out == g["greedy"].tolist()


@pytest.mark.parametrize("name", ["v4_flash", "v4_pro"])
def test_v4_mtp_matches_reference(name):
    g, model = golden(name), load(name)
    x = mx.array(g["prompt"])[None]
    streams = model.trunk(x)
    logits, _ = model.mtp_forward(streams[:, :-1], x[:, 1:])
    start = int(g["mtp_start"])
    diff = float(np.abs(np.array(logits[0, start:]) - g["mtp_logits"]).max())
    print(f"{name}: max |MTP logits - reference| = {diff:.3g}")
    assert diff < 1e-4


# ---- caches: prefill vs incremental decode over > 2x the largest compression ratio -------------------


def run_in_chunks(model, ids: mx.array, chunk: int) -> np.ndarray:
    cache = model.make_cache()
    outs = [model(ids[:, i : i + chunk], cache=cache) for i in range(0, ids.shape[1], chunk)]
    assert cache[0].offset == ids.shape[1]
    return np.array(mx.concatenate(outs, axis=1)[0])


@pytest.mark.parametrize("name,chunk", [("v4_flash", 1), ("v4_flash", 37), ("v4_pro", 1), ("v4_pro", 128)])
def test_v4_prefill_matches_incremental_decode(name, chunk):
    g, model = golden(name), load(name)
    ids = mx.array(g["prompt"])[None]  # 300 tokens > 2 x 128: HCA emits entries at 128 and 256
    t = time.perf_counter()
    inc = run_in_chunks(model, ids, chunk)
    full = np.array(model(ids)[0])
    diff = float(np.abs(inc - full).max())
    print(f"{name}, chunks of {chunk}: max |incremental - prefill| = {diff:.3g} ({time.perf_counter() - t:.1f}s)")
    assert diff < 1e-4


def test_v4_cache_trim_rolls_back_across_window_boundaries():
    g, model = golden("v4_pro"), load("v4_pro")
    ids = mx.array(g["prompt"])[None]
    cache = model.make_cache()
    model(ids[:, :250], cache=cache)
    model(ids[:, 250:260], cache=cache)  # crosses the 256 boundary of ratio 4 and ratio 128
    assert all(c.is_trimmable() for c in cache) and [c.trim(7) for c in cache] == [7] * len(cache)
    assert cache[0].offset == 253
    redo = np.array(model(ids[:, 253:300], cache=cache)[0])
    fresh = np.array(model(ids)[0, 253:300])
    assert float(np.abs(redo - fresh).max()) < 1e-4


def test_v4_cache_trim_is_bounded_by_its_slack():
    model = load("v4_flash")
    cache = model.make_cache()
    assert cache[0].trim(5) == 0  # nothing cached yet
    model(mx.array(golden("v4_flash")["prompt"][:40])[None], cache=cache)
    slack = cache[0].trim_slack
    assert [c.trim(slack + 5) for c in cache] == [slack] * len(cache)  # deeper history is not kept
    assert {c.offset for c in cache} == {40 - slack}


# ---- official FP8 (e8m0 block scales) and FP4 (e2m1, mxfp4 import) --------------------------------


# ---- loading is strict under the official names --------------------------------------------------


def test_v4_missing_hash_table_is_named(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIXTURES / "v4_flash", d)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    victim = "layers.0.ffn.gate.tid2eid"
    rewrite(d / wm[victim], drop=[victim])
    edit_index(d, drop=[victim])
    with pytest.raises(WeightMismatchError, match=r"missing from the checkpoint.*model\.layers\.0\.mlp\.gate\.tid2eid"):
        mlxseek.load(d, tokenizer=False)


def test_v4_unknown_official_key_is_named(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIXTURES / "v4_flash", d)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    rewrite(d / wm["layers.0.attn.attn_sink"], rename={"layers.0.attn.attn_sink": "layers.0.attn.sink_bias"})
    edit_index(d, rename={"layers.0.attn.attn_sink": "layers.0.attn.sink_bias"})
    with pytest.raises(WeightMismatchError, match=r"not used by the model.*layers\.0\.attn\.sink_bias"):
        mlxseek.load(d, tokenizer=False)


# ---- slow references beside the fast paths ---------------------------------------------------------


def test_v4_sink_attention_fast_path_matches_reference():
    g, model = golden("v4_flash"), load("v4_flash")
    ids = mx.array(g["prompt"][:160])[None]
    fast = np.array(model(ids))
    model.set_attention_impl("naive")
    try:
        ref = np.array(model(ids))
    finally:
        model.set_attention_impl("auto")
    assert float(np.abs(fast - ref).max()) < 1e-5


def test_sinkhorn_is_doubly_stochastic():
    m = mx.exp(mx.array(np.random.RandomState(1).standard_normal((3, 4, 4)).astype(np.float32)))
    p = np.array(sinkhorn(m, 20, 1e-6))
    np.testing.assert_allclose(p.sum(-2), 1, atol=1e-5)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-3)


@pytest.mark.parametrize("name", ["v4_flash", "v4_fp4"])
def test_v4_moe_gather_matches_per_expert_loop(name):
    model = load(name)
    x = mx.array(np.random.RandomState(2).standard_normal((1, 70, model.config.hidden_size)).astype(np.float32))
    ids = mx.array(golden(name)["prompt"][:70])[None]
    for layer in model.layers[:2]:  # a hash-routed and a score-routed layer
        fast, ref = layer.mlp(x, ids), layer.mlp(x, ids, reference=True)
        assert float(mx.abs(fast - ref).max()) < 1e-4

"""The DeepSeek-V4.1 DSpark drafter on a tiny V4.1 folder in the official layout (tests/v41_checkpoint.py:
the 10-layer CSA2 schedule, Engram at layers 1 and 6, a random 3-stage drafter under `mtp.{s}.*` with its own
4-expert top-3 MoE): loading, a partial drafter named, greedy drafting identical to plain greedy, and the
caches after accept / reject equal to a plain run's (window, compressed entries, open group, Engram look-back)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from dspark_oracle import BlockOracle
from engram_fixture import engram_config
from mlx.utils import tree_flatten
from test_v4_mtp import _plain
from v41_checkpoint import write_official
from v41_fixture import DSPARK, TINY, mlx_lm_model, ours_from

import mlxseek
from mlxseek.errors import CheckpointError
from mlxseek.speculative import DraftStats, speculative_generate_step
from mlxseek.speculative.dspark_drafter import DSparkDrafter

BASE = {**TINY, **DSPARK}
PROMPT_LENGTHS = [3, 11, 19, 30]  # window 8, ratio-2 groups: odd and even, shorter and longer than the window


@pytest.fixture(scope="module")
def source():
    return ours_from(mlx_lm_model(), engram_config(BASE), stages=3)


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("v41_dspark") / "v41"
    write_official(path, source, BASE)
    return path


@pytest.fixture(scope="module")
def loaded(folder):
    model = mlxseek.load(folder, dtype="float32", tokenizer=False)[0]
    rng = np.random.default_rng(11)
    return model, [mx.array(rng.integers(0, 256, n).astype(np.uint32)) for n in PROMPT_LENGTHS]


def test_the_drafter_loads_from_the_official_layout(loaded, source):
    model, _ = loaded
    assert model.drafters == ("dspark",) and model.config.dspark_stages == 3 and len(model.dspark.stages) == 3
    assert "hc_head" not in model.dspark
    experts = model.dspark.stages[0].mlp.switch_mlp.gate_proj.weight
    assert experts.shape[0] == DSPARK["dspark_n_routed_experts"]
    inds, _ = model.dspark.stages[0].mlp.gate(mx.ones((2, TINY["hidden_size"])), None)
    assert inds.shape == (2, DSPARK["dspark_num_experts_per_tok"])
    want = dict(tree_flatten(source.dspark.parameters()))
    got = dict(tree_flatten(model.dspark.parameters()))
    assert sorted(got) == sorted(want)
    for name in ("markov_head.embed.weight", "markov_head.head.weight", "confidence_head.proj.weight",
                 "main_proj.weight", "stages.2.attn_hc.fn", "stages.1.mlp.switch_mlp.down_proj.weight"):
        np.testing.assert_array_equal(np.array(got[name]), np.array(want[name]), err_msg=name)
    assert model.dspark.confidence_head.proj.weight.shape == (1, TINY["hidden_size"] + DSPARK["dspark_markov_rank"])


class _Entering:
    """Stands in for one backbone layer and records the streams it is called with (B, L, n, D)."""

    def __init__(self, layer):
        self.layer, self.seen = layer, []

    def __call__(self, streams, *args):
        self.seen.append(streams)
        return self.layer(streams, *args)


def test_the_target_hidden_is_the_streams_entering_each_target_layer(loaded):
    """transformers' V4.1 config (0a2080b4): dspark_target_layer_ids are the layers "whose attention input
    (mean over the hc streams) feeds the draft model" -- the input, where V4's DSpark reads the output."""
    model, prompts = loaded
    backbone, targets = model.model, list(model.dspark.target_layer_ids)
    originals = list(backbone.layers)
    spies = {t: _Entering(originals[t]) for t in targets}
    try:
        for t, spy in spies.items():
            backbone.layers[t] = spy
        _, taps = model.trunk_taps(prompts[0][None], model.make_cache())
    finally:
        backbone.layers = originals
    D = model.config.hidden_size
    for k, t in enumerate(targets):
        want = spies[t].seen[0].mean(axis=2)
        np.testing.assert_array_equal(np.array(taps[..., k * D:(k + 1) * D]), np.array(want), err_msg=str(t))


@pytest.mark.parametrize("drop, needle", [
    (("mtp.1.attn.wkv.weight",), "dspark.stages.1.self_attn.kv_proj.weight"),
    (("mtp.2.markov_head.embed.weight",), "dspark.markov_head.embed.weight"),
    (("mtp.0.main_proj.weight",), "dspark.main_proj.weight"),
])
def test_a_partial_drafter_is_a_typed_error_naming_the_key(source, tmp_path, drop, needle):
    write_official(tmp_path / "partial", source, BASE, drop=drop)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        mlxseek.load(tmp_path / "partial", tokenizer=False)


def test_without_dspark_keys_in_config_the_mtp_keys_are_ignored(tmp_path):
    plain = ours_from(mlx_lm_model(), engram_config(TINY))
    write_official(tmp_path / "bare", plain, TINY)
    model = mlxseek.load(tmp_path / "bare", tokenizer=False)[0]
    assert model.drafters == () and "dspark" not in model


@pytest.mark.parametrize("draft, block", [("dspark", 5), ("auto", 3)])
def test_greedy_with_dspark_is_plain_greedy(loaded, draft, block):
    model, prompts = loaded
    for prompt in prompts:
        plain = _plain(model, prompt, 32)
        stats = DraftStats()
        spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=32, draft=draft, num_draft=block,
                                                        stats=stats)]
        assert spec == plain
        assert 1 + stats.verify_steps + stats.accepted_tokens == 32 and stats.draft_tokens > 0


def _visible(c) -> dict:
    """What a V4.1 layer's next step reads from its cache (the window's last `window_size` rows)."""
    parts = {"window": None if c.window is None else c.window[:, -c.window_size:]}
    for k in ("compress_kv", "index_k", "pending_kv", "pending_gate"):
        parts[k] = getattr(c, k)
    parts = {k: (None if v is None or v.shape[1] == 0 else np.array(v)) for k, v in parts.items()}
    parts["engram_history"] = c.engram_history
    return parts


@pytest.mark.parametrize("block, accept", [
    (5, lambda n: n % 3),  # accept 0, 1, 2 of 5 in turn: rollbacks of 5, 4 and 3 at moving group alignments
    (4, lambda n: 4),  # all accepted
    (2, lambda n: n % 3),  # 0, 1 or both of 2
])
def test_caches_after_accept_and_reject_equal_a_plain_runs(loaded, monkeypatch, block, accept):
    model, prompts = loaded
    prompt = prompts[2]
    plain_cache = model.make_cache()
    plain = _plain(model, prompt, 32, plain_cache)
    seq = prompt.tolist() + plain
    oracle = BlockOracle(DSparkDrafter.block_logits, seq, model.config.vocab_size, accept, by="count")
    monkeypatch.setattr(DSparkDrafter, "block_logits", lambda self, y, k: oracle(self, y, k))
    cache, stats = mlxseek.make_prompt_cache(model), DraftStats()
    spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=32, draft="dspark", num_draft=block,
                                                    prompt_cache=cache, stats=stats)]
    assert spec == plain
    assert stats.accepted_tokens == sum(oracle.accepted[: stats.verify_steps])
    if block == 5:
        assert {0, 1, 2} <= set(oracle.accepted)  # rejections of 5, 4 and 3 drafts all happened
    for i, (a, b) in enumerate(zip(plain_cache, cache[: len(model.layers)])):
        assert a.offset == b.offset == prompt.size + 31
        va, vb = _visible(a), _visible(b)
        for k in va:
            if va[k] is None or vb[k] is None:
                assert va[k] is None and vb[k] is None, (i, k)
            else:
                assert va[k].shape == vb[k].shape, (i, k)
                np.testing.assert_allclose(va[k], vb[k], atol=1e-5, err_msg=f"layer {i} {k}")


def test_convert_keeps_the_drafter_and_drop_drafter_leaves_it_out(folder, loaded, tmp_path):
    from mlxseek.convert.convert import convert

    model, prompts = loaded
    convert(hf_path=folder, mlx_path=tmp_path / "mlx", dtype="float32", quiet=True)
    converted = mlxseek.load(tmp_path / "mlx", dtype="float32", tokenizer=False)[0]
    assert converted.drafters == ("dspark",) and len(converted.dspark.stages) == 3
    for name, p in tree_flatten(model.dspark.parameters()):
        np.testing.assert_array_equal(np.array(dict(tree_flatten(converted.dspark.parameters()))[name]),
                                      np.array(p), err_msg=name)
    spec = [t for t, _ in speculative_generate_step(prompts[1], converted, max_tokens=16, draft="dspark")]
    assert spec == _plain(model, prompts[1], 16)
    convert(hf_path=folder, mlx_path=tmp_path / "bare", quiet=True, drop_mtp=True)
    assert mlxseek.load(tmp_path / "bare", tokenizer=False)[0].drafters == ()

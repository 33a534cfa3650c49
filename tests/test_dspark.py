"""DSpark block drafting on a tiny DeepSeek-V4-Flash-0731-shaped checkpoint in the official key layout
(tests/dspark_checkpoint.py: the v4_flash backbone, window 32, ratios 0/4/128/4, plus a random 3-stage
drafter): loading, greedy output identical to plain decoding, caches after accept/reject equal a plain
run's, and the drafter's forward against an independent NumPy reference."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from dspark_checkpoint import write_dspark_checkpoint
from dspark_oracle import BlockOracle
from dspark_reference import dspark_reference, params_of
from test_v4_mtp import LENGTHS, _assert_same, _plain

import mlxseek
from mlxseek.errors import CheckpointError, DrafterMissingError
from mlxseek.speculative import DraftStats, make_sampler, speculative_generate_step
from mlxseek.speculative.drafter import make_drafter
from mlxseek.speculative.dspark_drafter import DSparkDrafter


@pytest.fixture(scope="module")
def dspark_dir(tmp_path_factory):
    return write_dspark_checkpoint(tmp_path_factory.mktemp("dspark") / "v4_flash_0731")


@pytest.fixture(scope="module")
def ds(dspark_dir):
    model = mlxseek.load(dspark_dir, tokenizer=False, dtype="float32")[0]
    ids = np.load(FIXTURES / "v4_flash" / "golden.npz")["prompt"].astype(np.uint32)
    return model, [mx.array(ids[300 - n:]) for n in LENGTHS]


def test_stages_are_counted_from_the_checkpoint_not_num_nextn(ds, tmp_path):
    model, _ = ds
    assert model.config.num_nextn_predict_layers == 1 and model.config.dspark_stages == 3
    assert model.drafters == ("dspark",) and "mtp" not in model and len(model.dspark.stages) == 3
    two = mlxseek.load(write_dspark_checkpoint(tmp_path / "two", stages=2), tokenizer=False)[0]
    assert len(two.dspark.stages) == 2


@pytest.mark.parametrize("drop, needle", [
    (("mtp.1.attn.wkv.weight",), "dspark.stages.1.self_attn.kv_proj.weight"),
    (("mtp.2.markov_head.markov_w1.weight",), "dspark.markov_head.markov_w1.weight"),
    (("mtp.0.main_proj.weight",), "dspark.main_proj.weight"),
])
def test_partial_drafter_is_a_typed_error_naming_the_key(tmp_path, drop, needle):
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        mlxseek.load(write_dspark_checkpoint(tmp_path / "partial", drop=drop), tokenizer=False)


def test_a_missing_stage_is_named(tmp_path, dspark_dir):
    import json

    index = json.loads((dspark_dir / "model.safetensors.index.json").read_text())
    stage1 = tuple(k for k in index["weight_map"] if k.startswith("mtp.1."))
    with pytest.raises(CheckpointError, match=r"stage 1 \(mtp\.1\.\*\)"):
        mlxseek.load(write_dspark_checkpoint(tmp_path / "gap", drop=stage1), tokenizer=False)


def test_drafting_requests_name_the_missing_drafter(ds, dspark_dir):
    model, prompts = ds
    with pytest.raises(DrafterMissingError, match="pass draft='dspark'") as e:
        list(speculative_generate_step(prompts[0], model, max_tokens=4, draft="mtp"))
    assert e.value.field == "draft" and e.value.missing == ("mtp",)
    bare = mlxseek.load(dspark_dir, tokenizer=False, with_mtp=False)[0]
    assert bare.drafters == ()
    for draft, missing in (("dspark", ("dspark",)), ("auto", ("mtp", "dspark"))):
        with pytest.raises(DrafterMissingError, match="generate without draft") as e:
            list(speculative_generate_step(prompts[0], bare, max_tokens=4, draft=draft))
        assert e.value.missing == missing and "\n" not in str(e.value)
    plain = [t for t, _ in speculative_generate_step(prompts[0], bare, max_tokens=6, draft="none")]
    assert plain == _plain(bare, prompts[0], 6)


@pytest.fixture(scope="module")
def plain64(ds):
    model, prompts = ds
    return [_plain(model, p, 64) for p in prompts]


@pytest.mark.parametrize("block", [5, 2])
def test_greedy_with_dspark_is_plain_greedy(ds, plain64, block):
    model, prompts = ds
    for prompt, plain in zip(prompts, plain64):
        stats = DraftStats()
        spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=64, draft="dspark",
                                                        num_draft=block, stats=stats)]
        assert spec == plain
        assert 1 + stats.verify_steps + stats.accepted_tokens == 64 and stats.draft_tokens > 0


def test_auto_takes_the_checkpoints_drafter_and_the_confidence_cut_keeps_greedy(ds, plain64):
    model, prompts = ds
    stats = DraftStats()
    out = [t for t, _ in speculative_generate_step(prompts[1], model, max_tokens=64, draft="dspark", num_draft=5,
                                                   stats=stats, confidence_cut=0.99)]
    assert out == plain64[1] and stats.confidence_cuts > 0
    assert stats.draft_tokens < 5 * (stats.verify_steps - 1)  # cut blocks verified fewer rows
    cache = mlxseek.make_prompt_cache(model)
    from mlxseek.speculative.policy import DraftPolicy

    auto = [t for t, _ in speculative_generate_step(prompts[1], model, max_tokens=64, draft="auto", num_draft=5,
                                                    prompt_cache=cache, policy=DraftPolicy(mode="acceptance"))]
    assert auto == plain64[1] and type(cache[len(model.layers)]).__name__ == "DSparkCache"


@pytest.mark.parametrize("block, accept", [
    (5, lambda P: (-(P + 1)) % 4),  # every later block starts exactly on a ratio-4 compressor boundary
    (5, lambda P: 5),  # everything accepted: blocks cross the window (32) and ratio-128 at other alignments
    (2, lambda P: P % 3),  # accept 0, 1 or 2
])
def test_caches_after_accept_and_reject_equal_a_plain_runs(ds, monkeypatch, block, accept):
    model, prompts = ds
    prompt = prompts[6]  # 120 tokens: 48 generated cross the ratio-128 boundary
    plain_cache = model.make_cache()
    plain = _plain(model, prompt, 48, plain_cache)
    seq = prompt.tolist() + plain
    oracle = BlockOracle(DSparkDrafter.block_logits, seq, model.config.vocab_size, accept, by="position")
    monkeypatch.setattr(DSparkDrafter, "block_logits", lambda self, y, k: oracle(self, y, k))
    cache, stats = mlxseek.make_prompt_cache(model), DraftStats()
    spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=48, draft="dspark", num_draft=block,
                                                    prompt_cache=cache, stats=stats)]
    assert spec == plain and stats.accepted_tokens > 0
    if accept(1) == 2:  # the ratio-4-aligned run: every block after the first starts on a multiple of 4
        assert len(oracle.starts) > 5 and all(P % 4 == 0 for P in oracle.starts[1:])
    for a, b in zip(plain_cache, cache[: len(model.layers)]):
        assert a.offset == b.offset == prompt.size + 47
        _assert_same(a, b)
    # The ring equals one built by feeding the whole sequence at once.
    entry, fresh = cache[len(model.layers)], model.make_dspark_cache()
    monkeypatch.undo()
    drafter = make_drafter(model, "dspark", fresh)
    _, taps = drafter.target(mx.array(seq[: prompt.size + 47])[None], model.make_cache())
    drafter.observe(taps, None)
    assert entry.offset == fresh.offset and entry.main_offset == entry.offset
    for got, want in zip(entry.ring(), fresh.ring()):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-4)


def test_sampled_dspark_is_seeded_and_valid(ds):
    model, prompts = ds
    runs = []
    for _ in range(2):
        mx.random.seed(5)
        stats = DraftStats()
        runs.append([t for t, _ in speculative_generate_step(prompts[4], model, max_tokens=32, draft="dspark",
                                                             num_draft=5, sampler=make_sampler(temp=0.8),
                                                             stats=stats)])
    assert runs[0] == runs[1] and all(0 <= t < model.config.vocab_size for t in runs[0])
    assert stats.draft_tokens > 0 and 1 + stats.verify_steps + stats.accepted_tokens == 32


def test_target_hidden_is_the_layers_output(ds):
    """The last target layer is the last layer: its tap is the mean over hc streams of what hc_head reads."""
    model, prompts = ds
    streams, taps = model.trunk_taps(prompts[0][None])
    D = model.config.hidden_size
    np.testing.assert_allclose(np.array(taps[..., -D:]), np.array(streams.mean(axis=-2)), atol=1e-6)


@pytest.mark.parametrize("n, block", [(33, 5), (120, 2)])
def test_dspark_forward_matches_numpy_reference(ds, n, block):
    model, _ = ds
    ids = np.load(FIXTURES / "v4_flash" / "golden.npz")["prompt"].astype(np.uint32)[:n]
    cfg = model.config
    entry = model.make_dspark_cache()
    drafter = make_drafter(model, "dspark", entry)
    _, taps = drafter.target(mx.array(ids[:-1])[None], model.make_cache())
    drafter.observe(taps, None)
    y = int(ids[-1])
    raw, x = drafter.block_logits(y, block)
    drafts = drafter.propose(y, block, None)[0].tolist()
    prev = mx.array([y] + drafts[:-1], dtype=mx.uint32)
    bias, emb = model.dspark.markov_head(prev)
    conf = model.dspark.confidence_head(x, emb)
    ref = dspark_reference(params_of(model), cfg, np.array(taps[0]).astype(np.float64), y, block,
                           len(model.dspark.stages))
    assert drafts == ref["drafts"]
    for name, got in (("raw", raw), ("bias", bias), ("emb", emb), ("logits", raw + bias), ("confidence", conf)):
        diff = np.abs(np.array(got, dtype=np.float64) - ref[name]).max()
        print(f"{name}: max |mlx - numpy| = {diff:.2e}")
        assert diff < 1e-5 * max(1.0, np.abs(ref[name]).max()), name


def test_info_estimate_and_convert_show_the_drafter_apart(dspark_dir, ds, tmp_path):
    import json

    from click.testing import CliRunner

    from mlxseek.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["info", str(dspark_dir), "--json"])
    assert out.exit_code == 0, out.output
    i = json.loads(out.stdout)
    d = i["drafter"]
    assert d["kind"] == "dspark" and d["stages"] == 3 and i["layers"]["mtp"] == 0 and d["params"] > 0
    assert i["stored_params"] == i["total_params"] + d["params"]
    text = runner.invoke(main, ["info", str(dspark_dir)]).stdout
    assert "drafter        DSpark, 3 stages, block 5" in text and "MTP" not in text
    est = runner.invoke(main, ["estimate", "--config", str(dspark_dir / "config.json"), "--json"])
    e = json.loads(est.stdout)
    assert e["drafter"] == "DSpark" and e["mtp_params"] == d["params"]  # census from config = the stored drafter
    model, prompts = ds
    plain = _plain(model, prompts[3], 16)
    for flags, drafters in ((["-q", "--q-bits", "4", "--q-group-size", "32"], ("dspark",)), (["--drop-drafter"], ())):
        dst = tmp_path / ("q" if drafters else "dropped")
        out = runner.invoke(main, ["convert", "--hf-path", str(dspark_dir), "--mlx-path", str(dst), *flags])
        assert out.exit_code == 0, out.output
        conv = mlxseek.load(dst, tokenizer=False)[0]
        assert conv.drafters == drafters
        if drafters:  # stages quantized like the backbone, the Markov and confidence heads kept float32
            assert "scales" in conv.dspark.stages[0].self_attn.q_a_proj
            assert conv.dspark.markov_head.markov_w2.weight.dtype == mx.float32
            spec = [t for t, _ in speculative_generate_step(prompts[3], conv, max_tokens=16, draft="dspark",
                                                            num_draft=5)]
            assert spec == _plain(conv, prompts[3], 16)
        else:
            assert _plain(conv, prompts[3], 16) == plain


def test_stream_generate_records_count_dspark_drafts(ds):
    model, prompts = ds
    recs = list(mlxseek.stream_generate(model, None, prompts[2], max_tokens=20, draft="dspark", num_draft=5))
    plain = list(mlxseek.stream_generate(model, None, prompts[2], max_tokens=20))
    assert [r.token for r in recs] == [r.token for r in plain]
    last = recs[-1]
    assert last.drafting_steps > 0 and last.draft_tokens >= last.drafting_steps
    assert last.verify_steps + last.accepted_tokens + 1 == last.generation_tokens
    assert last.mean_accepted_length == last.accepted_tokens / last.drafting_steps


def test_cli_bench_drafts_with_dspark():
    import json

    from click.testing import CliRunner

    from mlxseek.cli import main

    out = CliRunner().invoke(main, ["bench", "--model", str(FIXTURES / "trained_dspark"), "--draft", "dspark",
                                    "--num-draft", "5", "--runs", "2", "--prompt-tokens", "12", "--gen-tokens", "16",
                                    "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["draft"] == "dspark" and row["identical_outputs"] == 2
    assert len(row["acceptance_by_position"]) == 5 and row["accepted_tokens"] <= row["draft_tokens"]

"""MTP self-speculative decoding on the trained tiny DeepSeek-V3 (tests/fixtures/trained_v3)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES

import mlxseek
from mlxseek.cli import main
from mlxseek.errors import GenerationError
from mlxseek.generation.steps import generate_step
from mlxseek.generation.stream import stream_generate
from mlxseek.speculative import (
    DraftPolicy,
    DraftStats,
    make_sampler,
    rejection_sample,
    speculative_generate_step,
)

TRAINED = FIXTURES / "trained_v3"
HELDOUT = FIXTURES / "trained_v3_heldout.txt"


@pytest.fixture(scope="module")
def prompts(trained):
    """Held-out text (never trained on) cut into 24-token prompts, bos first."""
    _, tok = trained
    ids = tok.encode(HELDOUT.read_text(), add_special_tokens=False)
    return [mx.array([tok.bos_token_id] + ids[i * 500: i * 500 + 23], dtype=mx.uint32) for i in range(4)]


def _plain(model, prompt, n, cache=None):
    return [t for t, _ in generate_step(prompt, model, max_tokens=n, prompt_cache=cache)]


@pytest.mark.parametrize("k", [1, 2])
def test_greedy_speculation_is_plain_greedy(trained, prompts, k):
    model, _ = trained
    for prompt in prompts:
        stats = DraftStats()
        spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=40, num_draft=k, stats=stats)]
        assert spec == _plain(model, prompt, 40)
        # Every token but the prefill's comes from a verify step: its own token plus the accepted drafts.
        assert 1 + stats.verify_steps + stats.accepted_tokens == 40
        assert 0 < stats.accepted_tokens <= stats.draft_tokens <= k * stats.verify_steps
        assert stats.first_accepted <= stats.first_drafts <= stats.verify_steps


def test_cache_after_speculation_equals_plain_decoding(trained, prompts):
    model, _ = trained
    plain_cache, spec_cache = model.make_cache(), model.make_cache()
    plain = _plain(model, prompts[0], 30, plain_cache)
    spec = [t for t, _ in speculative_generate_step(prompts[0], model, max_tokens=30, num_draft=2,
                                                    prompt_cache=spec_cache)]
    assert spec == plain
    for a, b in zip(plain_cache, spec_cache):
        assert a.offset == b.offset == prompts[0].size + 29  # the last token is not fed yet
        # Rolled-back slots must have been overwritten by the accepted tokens' latents.
        diff = mx.abs(a.keys[..., : a.offset, :] - b.keys[..., : b.offset, :]).max().item()
        assert diff < 1e-4, diff


def test_chunked_prefill_feeds_the_mtp_every_position(trained, prompts):
    model, _ = trained
    plain = [t for t, _ in generate_step(prompts[1], model, max_tokens=24, prefill_step_size=7)]
    stats = DraftStats()
    spec = [t for t, _ in speculative_generate_step(prompts[1], model, max_tokens=24, prefill_step_size=7,
                                                    stats=stats)]
    assert spec == plain and stats.accepted_tokens > 0


def test_second_turn_on_the_same_cache_matches_plain(trained, prompts):
    model, _ = trained
    plain_cache, spec_cache = model.make_cache(), model.make_cache()
    follow = prompts[1][1:9]
    plain = _plain(model, prompts[0], 12, plain_cache) + _plain(model, follow, 20, plain_cache)
    stats = DraftStats()
    spec = [t for t, _ in speculative_generate_step(prompts[0], model, max_tokens=12, prompt_cache=spec_cache)]
    spec += [t for t, _ in speculative_generate_step(follow, model, max_tokens=20, prompt_cache=spec_cache,
                                                     stats=stats)]
    assert spec == plain
    assert stats.accepted_tokens > 0


def test_stream_generate_records_count_drafts(trained, prompts):
    model, tok = trained
    plain = list(stream_generate(model, tok, prompts[2], max_tokens=32))
    spec = list(stream_generate(model, tok, prompts[2], max_tokens=32, draft="mtp", num_draft=2))
    assert [r.token for r in spec] == [r.token for r in plain]
    assert "".join(r.text for r in spec) == "".join(r.text for r in plain)
    last = spec[-1]
    assert last.verify_steps + last.accepted_tokens + 1 == last.generation_tokens
    assert last.acceptance_rate == pytest.approx(last.accepted_tokens / last.draft_tokens)
    counts = [(r.draft_tokens, r.accepted_tokens, r.verify_steps) for r in spec]
    assert counts == sorted(counts) and plain[-1].draft_tokens == 0


def test_auto_draft_keeps_greedy_output_and_measures_costs(trained, prompts):
    model, _ = trained
    stats, policy = DraftStats(), DraftPolicy()
    spec = [t for t, _ in speculative_generate_step(prompts[3], model, max_tokens=24, draft="auto", stats=stats,
                                                    policy=policy)]
    assert spec == _plain(model, prompts[3], 24)
    c = policy.costs
    assert c.step_s > 0 and c.verify_s > 0 and c.mtp_s > 0 and c.k == 1
    assert policy.expected_speedup is not None
    assert policy.drafting == (stats.draft_tokens > 0 and policy.expected_speedup > 1.05)


def test_auto_draft_stays_off_when_verify_steps_are_expensive(trained, prompts, monkeypatch):
    import mlxseek.speculative.costs as dc

    model, _ = trained
    # A device where a 2-token step costs twice a 1-token step (MLX CPU quantized matmul): no gain possible.
    costs = dc.DraftCosts(step_s=1.0, verify_s=2.0, mtp_s=0.2, cycle_s=2.4, k=1)
    monkeypatch.setattr(dc, "measure_draft_costs", lambda m, k: costs)
    stats, policy = DraftStats(), DraftPolicy()
    spec = [t for t, _ in speculative_generate_step(prompts[0], model, max_tokens=16, draft="auto", stats=stats,
                                                    policy=policy)]
    assert spec == _plain(model, prompts[0], 16)
    assert not policy.drafting and stats.draft_tokens == 0 and policy.expected_speedup < 1.05
    assert stats.verify_steps == 15 and stats.tokens_per_step == 1.0


def test_auto_draft_turns_off_mid_stream_when_steps_do_not_pay(trained, prompts, monkeypatch):
    import mlxseek.speculative.costs as dc
    import mlxseek.speculative.step as sp

    model, _ = trained
    # Calibration promises a lot, but a plain step "costs" 1 us, so measured drafting steps cannot pay.
    monkeypatch.setattr(dc, "measure_draft_costs", lambda m, k: dc.DraftCosts(1e-6, 1e-6, 1e-7, 1e-7, k))
    stats, policy = DraftStats(), DraftPolicy()
    spec = [t for t, _ in speculative_generate_step(prompts[2], model, max_tokens=30, draft="auto", stats=stats,
                                                    policy=policy)]
    assert spec == _plain(model, prompts[2], 30)
    assert not policy.drafting and stats.draft_tokens == sp.AUTO_WARMUP_STEPS  # one draft per warm-up step
    assert policy.expected_speedup < 0.01
    assert 1 + stats.verify_steps + stats.accepted_tokens == 30


def test_sampled_speculation_is_seeded_and_valid(trained, prompts):
    model, _ = trained
    sampler = make_sampler(temp=0.8, top_p=0.95)
    runs = []
    for _ in range(2):
        mx.random.seed(7)
        stats = DraftStats()
        runs.append([t for t, _ in speculative_generate_step(prompts[1], model, max_tokens=24, sampler=sampler,
                                                             num_draft=2, stats=stats)])
    assert runs[0] == runs[1] and len(runs[0]) == 24
    assert all(0 <= t < model.config.vocab_size for t in runs[0])
    assert stats.draft_tokens > 0


def test_rejection_sampling_preserves_the_target_distribution():
    """Toy 5-token vocabulary, k=2, 50,000 independent sequences. The first emitted token must follow p0
    and, when the first draft was accepted, the second must follow p1, although drafts come from q0/q1
    (which alone would give frequencies off by up to 0.4). Tolerance 0.015: the standard error of a
    frequency over >= 12,500 samples is <= 0.0045, so 0.015 is > 3 sigma (seeded, so not flaky)."""
    mx.random.seed(1234)
    p = mx.array([[0.5, 0.2, 0.2, 0.05, 0.05], [0.1, 0.6, 0.1, 0.1, 0.1], [0.2] * 5])
    q = mx.array([[0.1, 0.1, 0.2, 0.3, 0.3], [0.3, 0.1, 0.2, 0.2, 0.2]])
    N = 50_000
    drafts = mx.stack([mx.random.categorical(mx.log(q[i]), shape=(N,)) for i in range(2)], axis=1)
    a, nxt = rejection_sample(drafts, mx.broadcast_to(p, (N, 3, 5)), mx.broadcast_to(q, (N, 2, 5)))
    a, nxt, d = np.array(a), np.array(nxt), np.array(drafts)
    first = np.where(a >= 1, d[:, 0], nxt)
    np.testing.assert_allclose(np.bincount(first, minlength=5) / N, np.array(p[0]), atol=0.015)
    m = a >= 1
    second = np.where(a[m] >= 2, d[m, 1], nxt[m])
    np.testing.assert_allclose(np.bincount(second, minlength=5) / m.sum(), np.array(p[1]), atol=0.015)
    # Acceptance is sum_v min(p0, q0) = 0.1 + 0.1 + 0.2 + 0.05 + 0.05 = 0.5 for the first draft.
    assert m.mean() == pytest.approx(0.5, abs=0.015)


def test_bad_draft_arguments_fail_with_one_line_messages(trained, prompts):
    model, tok = trained
    from mlx_lm.sample_utils import make_sampler as mlx_lm_make_sampler

    cases = [
        (dict(draft="eagle"), "draft='eagle'"),
        (dict(draft="mtp", num_draft=0), "num_draft"),
        (dict(draft="mtp", sampler=mlx_lm_make_sampler(temp=0.7)), "mlxseek.speculative.make_sampler"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(GenerationError, match=needle) as e:
            list(stream_generate(model, tok, prompts[0], max_tokens=4, **kwargs))
        assert "\n" not in str(e.value)


def test_model_without_mtp_is_refused():
    model, tok = mlxseek.load(TRAINED, with_mtp=False)
    with pytest.raises(GenerationError, match="num_nextn_predict_layers"):
        list(stream_generate(model, tok, "def f(", max_tokens=4, draft="mtp"))


def test_cli_generate_and_bench_with_draft():
    runner = CliRunner()
    args = ["generate", "--model", str(TRAINED), "--prompt", "def __init__(self", "--raw", "--max-tokens", "24"]
    plain, spec = runner.invoke(main, args), runner.invoke(main, args + ["--draft", "mtp", "--num-draft", "2"])
    assert plain.exit_code == spec.exit_code == 0, spec.output
    assert spec.stdout == plain.stdout
    assert "MTP drafts accepted" in spec.stderr and "MTP drafts" not in plain.stderr
    out = runner.invoke(main, ["bench", "--model", str(TRAINED), "--draft", "mtp", "--runs", "2", "--prompt-tokens",
                               "12", "--gen-tokens", "16", "--prompt-file", str(HELDOUT), "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["identical_outputs"] == 2 and row["accepted_tokens"] <= row["draft_tokens"]
    assert row["tokens_per_step"] == pytest.approx(1 + row["accepted_tokens"] / (2 * 15 - row["accepted_tokens"]))

"""MTP self-speculative decoding on DeepSeek-V4 (tests/fixtures/v4_flash, v4_pro: random weights, sliding
window 32, compress ratios 4 and 128, hash-routed first layers): greedy output identical to plain
decoding, caches after a drafted run equal a plain run's, sampling valid."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES

import mlxseek
from mlxseek.errors import GenerationError
from mlxseek.generation.steps import generate_step
from mlxseek.speculative import DraftStats, make_sampler, speculative_generate_step
from mlxseek.speculative.step import check_draft_args

NAMES = ["v4_flash", "v4_pro"]
# 8 prompts cut from the fixture's golden prompt, of lengths around the window (32) and the ratio-128
# boundary, so 64 generated tokens cross window, CSA (4) and HCA (128) boundaries at drafted steps.
LENGTHS = [5, 17, 31, 33, 64, 97, 120, 127]


@pytest.fixture(scope="module", params=NAMES)
def v4(request):
    model = mlxseek.load(FIXTURES / request.param, tokenizer=False)[0]
    ids = np.load(FIXTURES / request.param / "golden.npz")["prompt"].astype(np.uint32)
    return model, [mx.array(ids[300 - n:]) for n in LENGTHS]


@pytest.fixture(scope="module")
def plain64(v4):
    """Plain greedy 64 tokens after each prompt, computed once for both k."""
    model, prompts = v4
    return [_plain(model, p, 64) for p in prompts]


def _plain(model, prompt, n, cache=None):
    return [t for t, _ in generate_step(prompt, model, max_tokens=n, prompt_cache=cache)]


def test_v4_fixtures_fit_the_test_context(v4):
    model, prompts = v4
    assert max(p.size for p in prompts) + 64 <= model.config.max_position_embeddings
    check_draft_args(model, "mtp", 2, None)  # V4 is accepted now


@pytest.mark.parametrize("k", [1, 2])
def test_v4_greedy_speculation_is_plain_greedy(v4, plain64, k):
    model, prompts = v4
    total = DraftStats()
    for prompt, plain in zip(prompts, plain64):
        stats = DraftStats()
        spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=64, num_draft=k, stats=stats)]
        assert spec == plain
        assert 1 + stats.verify_steps + stats.accepted_tokens == 64
        assert stats.draft_tokens >= stats.verify_steps - 1 and stats.accepted_tokens <= stats.draft_tokens
        for f in ("draft_tokens", "accepted_tokens", "verify_steps"):
            setattr(total, f, getattr(total, f) + getattr(stats, f))
    print(f"\nV4 k={k}: acceptance {total.acceptance_rate:.3f}, tokens/step {total.tokens_per_step:.3f}")


def _layer_state(c):
    """Everything a V4 layer cache's future outputs depend on, as numpy (positions included)."""
    parts = [("window", c.window.start, c.window.offset, c.window.rows)]
    for name in ("compressor", "indexer"):
        p = getattr(c, name)
        if p is not None:
            parts.append((name, p.start, p.offset, p.count, p.kv, p.gate, p.entries))
    return [tuple(np.array(x) if isinstance(x, mx.array) else x for x in part) for part in parts]


def _assert_same(a, b):
    for pa, pb in zip(_layer_state(a), _layer_state(b), strict=True):
        assert pa[0] == pb[0]
        for xa, xb in zip(pa[1:], pb[1:], strict=True):
            if isinstance(xa, np.ndarray):
                assert xa.shape == xb.shape and np.abs(xa - xb).max(initial=0) < 1e-4, pa[0]
            else:
                assert xa == xb, pa[0]


@pytest.mark.parametrize("k", [1, 3])
def test_v4_rollback_leaves_caches_equal_to_a_plain_run(v4, k):
    model, prompts = v4
    for prompt in (prompts[2], prompts[7]):
        plain_cache, spec_cache = model.make_cache(), mlxseek.make_prompt_cache(model)
        plain = _plain(model, prompt, 40, plain_cache)
        stats = DraftStats()
        spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=40, num_draft=k,
                                                        prompt_cache=spec_cache, stats=stats)]
        assert spec == plain and stats.draft_tokens > stats.accepted_tokens  # rejections were rolled back
        for a, b in zip(plain_cache, spec_cache[: len(model.layers)]):
            assert a.offset == b.offset == prompt.size + 39
            _assert_same(a, b)


def test_v4_second_turn_and_forced_acceptance_roll_back_exactly(v4, monkeypatch):
    """Random weights rarely accept a draft, so the accepted path is forced: an MTP that drafts the main
    model's own greedy tokens (known from a plain run) gets them accepted, and the caches still match."""
    model, prompts = v4
    prompt = prompts[5]
    plain_cache = model.make_cache()
    plain = _plain(model, prompt, 48, plain_cache)
    real = model.mtp_forward
    monkeypatch.setattr(model, "mtp_forward", _OracleMTP(model, real, prompt, plain))
    spec_cache = mlxseek.make_prompt_cache(model)
    stats = DraftStats()
    spec = [t for t, _ in speculative_generate_step(prompt, model, max_tokens=48, num_draft=2,
                                                    prompt_cache=spec_cache, stats=stats)]
    assert spec == plain and stats.accepted_tokens > stats.draft_tokens // 2
    for a, b in zip(plain_cache, spec_cache[: len(model.layers)]):
        _assert_same(a, b)


class _OracleMTP:
    """Runs the real MTP (so its cache moves as usual) but returns logits naming the plain run's next
    token for the position each pair predicts: position = the MTP cache offset before the call + i + 2."""

    def __init__(self, model, real, prompt, plain):
        self.real, self.V = real, model.config.vocab_size
        self.seq = prompt.tolist() + plain

    def __call__(self, streams, next_ids, cache=None):
        start = cache.offset if cache is not None else 0
        logits, h = self.real(streams, next_ids, cache)
        L = next_ids.shape[1]
        pos = [start + i + 2 for i in range(L)]
        best = [self.seq[p] if p < len(self.seq) else 0 for p in pos]
        return (mx.eye(self.V)[mx.array(best)] * 50.0)[None].astype(logits.dtype), h


def test_v4_sampled_speculation_is_seeded_and_valid(v4):
    model, prompts = v4
    sampler = make_sampler(temp=0.8, top_p=0.95)
    runs = []
    for _ in range(2):
        mx.random.seed(11)
        stats = DraftStats()
        runs.append([t for t, _ in speculative_generate_step(prompts[4], model, max_tokens=32, sampler=sampler,
                                                             num_draft=2, stats=stats)])
    assert runs[0] == runs[1] and len(runs[0]) == 32 and all(0 <= t < model.config.vocab_size for t in runs[0])
    assert stats.draft_tokens > 0 and 1 + stats.verify_steps + stats.accepted_tokens == 32


def test_v4_stream_generate_records_count_drafts(v4):
    model, prompts = v4
    recs = list(mlxseek.stream_generate(model, None, prompts[3], max_tokens=20, draft="mtp", num_draft=2))
    plain = list(mlxseek.stream_generate(model, None, prompts[3], max_tokens=20))
    assert [r.token for r in recs] == [r.token for r in plain]
    last = recs[-1]
    assert last.draft_tokens > 0 and last.verify_steps + last.accepted_tokens + 1 == last.generation_tokens


def test_v4_without_mtp_is_refused():
    model = mlxseek.load(FIXTURES / "v4_flash", with_mtp=False, tokenizer=False)[0]
    with pytest.raises(GenerationError, match="num_nextn_predict_layers"):
        list(speculative_generate_step(mx.array([0, 5, 7], dtype=mx.uint32), model, max_tokens=4))

"""Agent-like sessions through the engine for the families whose caches are not plain MLA latents:
V3.2 (DSA: cuttable snapshots) and V4 (exact snapshots at snapshot points). Each turn resends the whole
conversation (system block, earlier turns with their replies, a new user turn); from turn 2 most of the
prompt must come from the prefix cache, and every reply must equal a server with the cache off, also
through the disk tier after a restart."""

import asyncio
import random
from pathlib import Path

import pytest

import mlxseek
from mlxseek.serve.engine import Engine, SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"
USER, ASSISTANT = 5, 6  # stand-ins for <｜User｜> / <｜Assistant｜> (the fixtures have no tokenizer)
MARKS = {"user": USER, "assistant": ASSISTANT}
TURNS, SYSTEM, TURN_TOKENS, REPLY = 5, 200, 60, 8
_MODELS: dict = {}


def load(name):
    if name not in _MODELS:
        _MODELS[name] = mlxseek.load(FIXTURES / name, dtype="float32")
    return _MODELS[name]


def ask(engine, prompt, n=REPLY):
    async def go():
        return [e async for e in engine.generate(prompt, SamplingParams(max_tokens=n, top_logprobs=0))]

    return asyncio.run(asyncio.wait_for(go(), 120))


def make(model, tok, **kw):
    eng = Engine(model, tok, model_id="fixture", snapshot_marks=MARKS, **kw)
    eng.start()
    return eng


def session(engine, vocab: int, seed: int) -> list[list]:
    """Run TURNS turns; returns each turn's events. A turn appends the reply and a new user turn."""
    rng = random.Random(seed)
    words = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731 - never a mark token
    history, turns = words(SYSTEM), []
    for _ in range(TURNS):
        prompt = history + [USER] + words(TURN_TOKENS) + [ASSISTANT]
        events = ask(engine, prompt)
        turns.append(events)
        history = prompt + [e.token for e in events]
    return turns


def check(turns, reference) -> None:
    for t, (got, ref) in enumerate(zip(turns, reference)):
        assert [e.token for e in got] == [e.token for e in ref], f"turn {t + 1}"
        assert [e.logprob for e in got] == pytest.approx([e.logprob for e in ref], abs=1e-4), f"turn {t + 1}"
        if t > 0:
            share = got[-1].cached_tokens / got[-1].prompt_tokens
            assert share >= 0.75, f"turn {t + 1}: {got[-1].cached_tokens} of {got[-1].prompt_tokens} cached"


@pytest.mark.parametrize("name", ["v32", "v4_flash"])
def test_agent_session_is_cached_and_exact_also_from_disk(name, tmp_path):
    model, tok = load(name)
    vocab = model.config.vocab_size
    cold = make(model, tok, prompt_cache_bytes=0)
    reference = session(cold, vocab, seed=3)
    cold.stop()
    assert all(t[-1].cached_tokens == 0 for t in reference)
    warm = make(model, tok, prompt_cache_dir=str(tmp_path))
    check(session(warm, vocab, seed=3), reference)
    stats = warm.stats()
    warm.stop()
    kind = "exact" if name == "v4_flash" else "block"
    assert stats["prefix_cache_enabled"] and stats[f"hit_tokens_{kind}"] == stats["hit_tokens"] > 0
    assert stats["cache"]["cut"] == (name != "v4_flash")
    # exact snapshots are thinned (the system block's, the last turn's after <｜Assistant｜> and its end)
    # and share their compressed rows: the RAM tier counts them once
    assert name != "v4_flash" or (stats["entries"] <= 3 and stats["bytes"] < stats["bytes_unshared"])
    restarted = make(model, tok, prompt_cache_dir=str(tmp_path), prompt_cache_bytes=1)  # RAM holds nothing
    check(session(restarted, vocab, seed=3), reference)
    stats = restarted.stats()
    restarted.stop()
    assert stats["disk_hits"] >= TURNS - 1 and stats["disk_rejected"] == 0


def test_snapshot_points_and_which_are_kept():
    from mlxseek.serve.prefix_cache import SNAPSHOT_EVERY, keep_point, snapshot_points

    tokens = [9] * (2 * SNAPSHOT_EVERY + 100)
    tokens[10], tokens[50], tokens[3000], tokens[3010] = USER, ASSISTANT, USER, ASSISTANT
    # the end of the system block, after the last <｜Assistant｜>, every SNAPSHOT_EVERY tokens; never the last token
    assert snapshot_points(tokens, 0, MARKS) == [10, 3011, SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY]
    assert snapshot_points(tokens, 3011, MARKS) == [SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY]
    assert snapshot_points(tokens[:SNAPSHOT_EVERY], 0, {}) == []
    n = len(tokens)
    assert keep_point(tokens, 10, n, MARKS) and keep_point(tokens, 3011, n, MARKS)
    assert not keep_point(tokens, 51, n, MARKS)  # an earlier turn's point: the newer snapshot serves it
    assert keep_point(tokens, SNAPSHOT_EVERY, n, MARKS)
    assert not keep_point(tokens, SNAPSHOT_EVERY, 6 * SNAPSHOT_EVERY, MARKS)  # thinned further back
    assert keep_point(tokens, 4 * SNAPSHOT_EVERY, 20 * SNAPSHOT_EVERY, MARKS)


def test_metrics_report_hit_tokens_by_family_and_snapshot_kind():
    from mlxseek.serve.metrics import Metrics

    stats = {"model_family": "deepseek_v4", "hit_tokens_block": 0, "hit_tokens_exact": 1234}
    text = Metrics(engine_stats=lambda: stats).render().decode()
    assert 'mlxseek_prefix_cache_hit_tokens{family="deepseek_v4",kind="exact"} 1234.0' in text
    assert 'mlxseek_prefix_cache_hit_tokens{family="deepseek_v4",kind="block"} 0.0' in text

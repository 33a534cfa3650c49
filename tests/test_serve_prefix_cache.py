"""The engine's prefix cache on real checkpoints: warm requests give the cold tokens (and logprobs), the RAM
tier evicts by bytes, the disk tier survives a new Engine and rejects corrupt or foreign files, DSA works
and V4 is refused with a reason."""

import asyncio
import random
import struct
from pathlib import Path

import pytest

import mlxseek
from mlxseek.cache.mtp import MTPCache
from mlxseek.errors import ServeError
from mlxseek.serve import cache_state
from mlxseek.serve.engine import Engine, SamplingParams
from mlxseek.serve.prefix_cache import BLOCK_TOKENS

FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT = 120
N_NEW = 8


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def ask(engine, prompt, n=N_NEW):
    async def go():
        return [e async for e in engine.generate(prompt, SamplingParams(max_tokens=n, top_logprobs=0))]

    return run(go())


def make(model, tok, **kw):
    eng = Engine(model, tok, model_id=kw.pop("model_id", "fixture"), **kw)
    eng.start()
    return eng


def same(a, b):
    """Same tokens and the same log-probabilities (a wrong cache changes the logits long before the argmax)."""
    assert [e.token for e in a] == [e.token for e in b]
    assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-4)


@pytest.fixture(scope="module")
def cold(trained_heldout):
    """Cold (no prefix cache) answers, computed once per prompt."""
    model, tok, _ = trained_heldout
    eng = make(model, tok, prompt_cache_bytes=0)
    memo = {}

    def get(prompt):
        key = tuple(prompt)
        if key not in memo:
            memo[key] = ask(eng, prompt)
        return memo[key]

    yield get
    eng.stop()


def prompts(ids, start, n_shared=1000, tails=((0, 8), (40, 12))):
    """Prompts sharing their first n_shared tokens, each continued by a different stretch of the text."""
    shared = ids[start:start + n_shared]
    return [shared + ids[start + 2000 + a:start + 2000 + a + b] for a, b in tails]


def test_shared_prefix_is_reused_and_donor_intact(trained_heldout, cold):
    model, tok, ids = trained_heldout
    a, b = prompts(ids, 0)
    eng = make(model, tok)
    first = ask(eng, a)
    assert first[-1].cached_tokens == 0
    same(first, cold(a))
    second = ask(eng, b)
    assert second[-1].cached_tokens >= 960
    assert second[-1].cached_tokens % BLOCK_TOKENS == 0 and second[-1].cached_tokens < len(b)
    same(second, cold(b))
    again = ask(eng, a)  # from the entry b was restored from: still intact
    assert again[-1].cached_tokens >= 960
    same(again, cold(a))
    stats = eng.stats()
    eng.stop()
    assert stats["hits"] == 2 and stats["misses"] == 1 and stats["bytes"] > 0


def test_budget_for_one_prefix_evicts_and_stays_correct(trained_heldout, cold):
    model, tok, ids = trained_heldout
    p, q = prompts(ids, 0)[0], prompts(ids, 5000)[0]
    probe = make(model, tok)
    ask(probe, p)
    one = probe.stats()["bytes"]
    probe.stop()
    eng = make(model, tok, prompt_cache_bytes=int(one * 1.5))
    for prompt in [p, q, p, q]:
        out = ask(eng, prompt)
        same(out, cold(prompt))
        assert out[-1].cached_tokens == 0  # the other prefix evicted this one
        assert eng.stats()["bytes"] <= one * 1.5
    warm = ask(eng, q)
    stats = eng.stats()
    eng.stop()
    assert warm[-1].cached_tokens >= 960
    same(warm, cold(q))
    assert stats["evictions"] >= 3 and stats["entries"] == 1


def test_disk_tier_serves_a_new_engine(trained_heldout, cold, tmp_path):
    model, tok, ids = trained_heldout
    a, b = prompts(ids, 1000)
    first = make(model, tok, prompt_cache_dir=str(tmp_path))
    ask(first, a)
    first.stop()
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    second = make(model, tok, prompt_cache_dir=str(tmp_path))
    out = ask(second, b)
    stats = second.stats()
    second.stop()
    assert out[-1].cached_tokens >= 960 and stats["disk_hits"] == 1
    same(out, cold(b))


def _flip(path: Path, where: str) -> None:
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    i = 8 + n // 2 if where == "header" else 8 + n + (len(raw) - 8 - n) // 2
    raw[i:i + 8] = bytes(x ^ 0x5A for x in raw[i:i + 8])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "foreign"])
def test_corrupt_or_foreign_file_is_ignored_and_removed(trained_heldout, cold, tmp_path, damage):
    model, tok, ids = trained_heldout
    a, b = prompts(ids, 2000)
    writer = make(model, tok, prompt_cache_dir=str(tmp_path), model_id="other" if damage == "foreign" else "fixture")
    ask(writer, a)
    writer.stop()
    (path,) = tmp_path.glob("*.safetensors")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    elif damage.startswith("flip"):
        _flip(path, damage[5:])
    eng = make(model, tok, prompt_cache_dir=str(tmp_path))
    out = ask(eng, b)
    stats = eng.stats()
    eng.stop()
    assert out[-1].cached_tokens == 0 and stats["disk_rejected"] == 1 and stats["disk_hits"] == 0
    same(out, cold(b))
    # the bad file is gone; the one there now is the reply's own entry, written afresh, and it serves
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    check = make(model, tok, prompt_cache_dir=str(tmp_path))
    warm = ask(check, b)
    stats = check.stats()
    check.stop()
    assert warm[-1].cached_tokens >= 960 and stats["disk_rejected"] == 0
    same(warm, cold(b))


def test_snapshot_leaves_the_mtp_entry_and_drafting_stays_exact(trained_heldout):
    """The prompt cache's MTP entry (after the layers) is not snapshotted: a restored cache is cut to a
    block boundary, the MTP restarts its history there, and greedy drafting still gives the cold tokens."""
    model, tok, ids = trained_heldout
    cache = mlxseek.make_prompt_cache(model)
    assert isinstance(cache[len(model.layers)], MTPCache)
    list(mlxseek.stream_generate(model, tok, ids[:300], max_tokens=4, prompt_cache=cache, draft="mtp"))
    assert cache[len(model.layers)].offset > 0
    snap = cache_state.snapshot(cache, 256)
    assert [e.offset for e in snap.entries] == [256] * len(model.layers)
    assert (snap.entries[0].arrays["keys"] == cache[0].keys[:, :, :256]).all().item()
    restored = cache_state.restore(model, snap)
    warm = [r.token for r in mlxseek.stream_generate(model, tok, ids[256:300], max_tokens=8, prompt_cache=restored,
                                                     draft="mtp")]
    cold = [r.token for r in mlxseek.stream_generate(model, tok, ids[:300], max_tokens=8)]
    assert warm == cold


def _random_prompts(vocab, seed):
    rng = random.Random(seed)
    shared = [rng.randrange(2, vocab) for _ in range(1000)]
    return [shared + [rng.randrange(2, vocab) for _ in range(n)] for n in (8, 12)]


def test_dsa_prefix_matches_cold():
    model, tok = mlxseek.load(FIXTURES / "v32", dtype="float32")
    a, b = _random_prompts(model.config.vocab_size, 1)
    cold_eng = make(model, tok, prompt_cache_bytes=0)
    ref = ask(cold_eng, b)
    cold_eng.stop()
    eng = make(model, tok)
    ask(eng, a)
    out = ask(eng, b)
    stats = eng.stats()
    eng.stop()
    assert stats["prefix_cache_enabled"] and out[-1].cached_tokens >= 960
    same(out, ref)


def test_unusable_cache_dir_is_a_serve_error(trained_heldout, tmp_path):
    model, tok, _ = trained_heldout
    (tmp_path / "file").write_text("not a folder")
    eng = Engine(model, tok, model_id="fixture", prompt_cache_dir=str(tmp_path / "file" / "sub"))
    with pytest.raises(ServeError, match="prompt-cache-dir"):
        eng.start()

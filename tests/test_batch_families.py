"""Continuous batching for the families whose caches cannot share one buffer: V3.2 (DSA: per-row indexer
keys and top-k) and V4 (per-row window rings and compressor states). Each row must get exactly the
tokens it gets alone: staggered joins, rows leaving, a cancelled row, and four concurrent server requests."""

import asyncio
import random
from pathlib import Path

import pytest

import mlxseek
from mlxseek.cache.batch import make_batch_cache
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams
from mlxseek.serve.engine import Engine, SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["v32", "v4_flash"]
# Both run one forward per step: V3.2's rows share one buffer (cache/ragged.py); V4's keep their solo
# caches, which its attention reads row by row (the MoE, mHC and projections run once for all rows).
FUSED = {"v32": True, "v4_flash": True}
ROWS, N_TOKENS = 8, 64
_MODELS: dict = {}


def load(name):
    if name not in _MODELS:
        model = mlxseek.load(FIXTURES / name, dtype="float32", tokenizer=False)[0]
        rng = random.Random(7)
        # different lengths, some past V4's ratio-128 group and window, so rows hold different states
        prompts = [[rng.randrange(2, model.config.vocab_size) for _ in range(n)]
                   for n in (5, 40, 131, 17, 200, 64, 9, 150)]
        alone = [[r.token for r in mlxseek.stream_generate(model, None, p, max_tokens=N_TOKENS)] for p in prompts]
        _MODELS[name] = model, prompts, alone
    return _MODELS[name]


def run_staggered(dec: BatchDecoder, prompts, limit: int, cancel=None) -> dict[int, list]:
    """One waiting prompt joins per step while fewer than `limit` rows run; `cancel` = (prompt, after n tokens)."""
    waiting, index, out = list(range(len(prompts))), {}, {i: [] for i in range(len(prompts))}
    while waiting or dec.active or dec.pending:
        if waiting and dec.active < limit:
            i = waiting.pop(0)
            index[dec.add(prompts[i], RowParams(max_tokens=N_TOKENS))] = i
        for rid, rec in dec.step():
            out[index[rid]].append(rec)
            if cancel and index[rid] == cancel[0] and len(out[cancel[0]]) == cancel[1] and rec.finish_reason is None:
                dec.remove(rid)
    return out


def run_together(eng: Engine, prompts) -> list[list]:
    """Each prompt as its own request to the running engine, all at once: every request's events."""

    async def collect(p):
        return [e async for e in eng.generate(p, SamplingParams(max_tokens=N_TOKENS))]

    async def together():
        return await asyncio.gather(*(collect(p) for p in prompts))

    return asyncio.run(asyncio.wait_for(together(), 300))


@pytest.mark.parametrize("name", FAMILIES)
def test_eight_staggered_rows_equal_their_solo_runs(name):
    model, prompts, alone = load(name)
    assert make_batch_cache(model)[0].shared_forward == FUSED[name]
    out = run_staggered(BatchDecoder(model, None), prompts, ROWS)
    for i, recs in out.items():
        assert [r.token for r in recs] == alone[i], f"{name}: prompt {i}"
    assert max(r.batch_size for recs in out.values() for r in recs) == ROWS


@pytest.mark.parametrize("name", FAMILIES)
def test_a_batched_step_runs_one_forward_for_a_fused_family(name, monkeypatch):
    """V3.2's and V4's rows decode in one forward per step, not one per row."""
    model, prompts, alone = load(name)
    dec = BatchDecoder(model, None)
    for p in prompts[:4]:
        dec.add(p, RowParams(max_tokens=4))
    calls = []
    trunk = model.trunk
    monkeypatch.setattr(model, "trunk", lambda tokens, cache=None: calls.append(tokens.shape[0]) or trunk(tokens, cache))
    dec.step()
    assert calls == ([4] if FUSED[name] else [1] * 4)


@pytest.mark.parametrize("name", FAMILIES)
def test_rows_leave_and_join_and_a_cancelled_row_leaves_the_others_exact(name):
    model, prompts, alone = load(name)
    out = run_staggered(BatchDecoder(model, None), prompts, 3, cancel=(1, 10))  # at most 3: rows queue
    assert [r.token for r in out[1]] == alone[1][:10]
    for i in (0, *range(2, len(prompts))):
        assert [r.token for r in out[i]] == alone[i], f"{name}: prompt {i}"


@pytest.mark.parametrize("name", FAMILIES)
def test_four_concurrent_server_requests_equal_solo(name):
    model, prompts, alone = load(name)
    eng = Engine(model, None, model_id=name, max_batch=4, prompt_cache_bytes=0)
    eng.start()
    try:
        outs = run_together(eng, prompts[:4])
    finally:
        eng.stop()
    for i, events in enumerate(outs):
        assert [e.token for e in events] == alone[i], f"{name}: request {i}"
    assert max(e.batch_size for ev in outs for e in ev) > 1


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_rows_feed_the_prefix_cache_and_restore_exactly(name):
    """Batched rows leave as solo caches (V3.2: latent and indexer keys copied out of the shared buffer)
    that the prefix cache keeps; a second wave of the same prompts, batched again, restores them and
    keeps its solo tokens."""
    model, prompts, alone = load(name)
    eng = Engine(model, None, model_id=name, max_batch=4)
    eng.start()
    try:
        first = run_together(eng, prompts[:4])
        second = run_together(eng, prompts[:4])
    finally:
        eng.stop()
    for i, (a, b) in enumerate(zip(first, second)):
        assert [e.token for e in a] == [e.token for e in b] == alone[i], f"request {i}"
    # V4 keeps exact snapshots only at snapshot points (none inside these prompts without chat marks)
    assert name == "v4_flash" or any(ev[-1].cached_tokens > 0 for ev in second)
    assert max(e.batch_size for ev in second for e in ev) > 1


@pytest.mark.parametrize("name", FAMILIES)
def test_mtp_drafts_while_a_row_runs_alone_and_stays_exact(name):
    """A lone row drafts with the MTP module (its cache of the layers' kind: DSA on V3.2), stops while a
    second row runs, drafts again once alone; both rows keep their solo tokens."""
    model, prompts, alone = load(name)
    dec = BatchDecoder(model, None, draft="mtp")
    ids, out = {dec.add(prompts[0], RowParams(max_tokens=N_TOKENS)): 0}, {0: [], 1: []}
    for step in range(10 * N_TOKENS):
        if not (dec.active or dec.pending):
            break
        if step == 20:
            ids[dec.add(prompts[1], RowParams(max_tokens=16))] = 1
        for rid, rec in dec.step():
            out[ids[rid]].append(rec)
    assert [r.token for r in out[0]] == alone[0] and [r.token for r in out[1]] == alone[1][:16]
    flags = [r.drafting for r in out[0]]
    assert any(flags[:15]) and any(flags[-15:])
    assert not any(r.drafting and r.batch_size > 1 for r in out[0] + out[1])


def test_quantized_latent_rows_batch_and_equal_their_solo_runs():
    model = mlxseek.load(FIXTURES / "v3", dtype="float32", tokenizer=False)[0]
    rng = random.Random(3)
    prompts = [[rng.randrange(2, model.config.vocab_size) for _ in range(n)] for n in (12, 70, 33)]

    def quantized():
        return model.make_cache(kv_bits=8)

    alone = [[r.token for r in mlxseek.stream_generate(model, None, p, max_tokens=16, prompt_cache=quantized())]
             for p in prompts]
    dec = BatchDecoder(model, None)
    ids = {dec.add(p, RowParams(max_tokens=16), prompt_cache=quantized()): i for i, p in enumerate(prompts)}
    assert not dec.cache[0].shared_forward
    out = {i: [] for i in range(len(prompts))}
    while dec.active or dec.pending:
        for rid, rec in dec.step():
            out[ids[rid]].append(rec.token)
    assert [out[i] for i in range(len(prompts))] == alone

"""The server has one decode path (a request alone is a batch of one) and it agrees on drafting:
`TokenEvent.drafting` is true only for tokens of a forward that drafted, drafting goes off when a second
row joins and on again when the row is alone, and draft="auto" keeps its meaning when the engine batches."""

import asyncio
from pathlib import Path

import pytest

import mlxseek
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams
from mlxseek.serve.engine import Engine
from mlxseek.serve.params import SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def trained():
    model, tok = mlxseek.load(FIXTURES / "trained_v3")
    return model, tok, tok.encode("The quick brown fox jumps over the lazy dog. " * 3)


def alone(model, tok, prompt, n):
    return [r.token for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=n)]


def events(eng, prompt, **kw):
    async def go():
        return [e async for e in eng.generate(prompt, SamplingParams(**kw))]
    return asyncio.run(go())


def test_auto_drafting_survives_batching(trained):
    model, tok, _ = trained
    prompt = tok.encode("The quick brown fox")
    want = alone(model, tok, prompt, 12)
    dec = BatchDecoder(model, tok, draft="auto")
    assert dec.solo is not None and dec.solo.auto
    rid = dec.add(prompt, RowParams(max_tokens=12))
    out = []
    while dec.active or dec.pending:
        out += [rec.token for r, rec in dec.step() if r == rid]
    assert out == want


def test_a_lone_request_drafts_through_the_batch_path_and_can_opt_out(trained):
    """max_batch 1 is a batch of one: the engine's draft="mtp" drafts (greedy tokens unchanged), the
    prefill's token is not a drafted one, and a request's own draft="none" turns drafting off."""
    model, tok, ids = trained
    want = alone(model, tok, ids, 24)
    eng = Engine(model, tok, model_id="t", draft="mtp", max_batch=1, prompt_cache_bytes=0)
    eng.start()
    try:
        drafted = events(eng, ids, max_tokens=24)
        plain = events(eng, ids, max_tokens=24, draft="none")
    finally:
        eng.stop()
    assert [e.token for e in drafted] == want == [e.token for e in plain]
    assert not drafted[0].drafting and sum(e.drafting for e in drafted) >= 12
    assert not any(e.drafting for e in plain)
    assert all(e.batch_size == 1 for e in drafted + plain)


def test_drafting_stops_when_a_row_joins_and_resumes_when_it_leaves(trained):
    model, tok, ids = trained
    a, b = ids[:20], ids[5:30]
    dec = BatchDecoder(model, tok, draft="mtp")
    ra = dec.add(a, RowParams(max_tokens=40))
    got = {"flags": []}
    for _ in range(3):  # alone: drafting (after the prefill's token)
        got["flags"] += [(rec.drafting, rec.batch_size) for r, rec in dec.step() if r == ra]
    rb = dec.add(b, RowParams(max_tokens=4))
    while dec.active or dec.pending:
        for r, rec in dec.step():
            got.setdefault(r, []).append(rec.token)
            if r == ra:
                got["flags"].append((rec.drafting, rec.batch_size))
    flags = got["flags"]
    assert any(f[0] for f in flags[:4]), "a row alone drafts"
    assert not any(f[0] and f[1] > 1 for f in flags), "no drafted token shares its forward with another row"
    assert any(f[1] == 2 for f in flags), "the rows shared forwards while both ran"
    together = [i for i, f in enumerate(flags) if f[1] == 2]
    assert any(f[0] for f in flags[together[-1] + 1:]), "alone again, the row drafts again"

"""Continuous batching in the serving engine (Engine(max_batch=N)) on the trained tiny V3: concurrent
requests each get the tokens they get alone, a cancelled request frees its row for a waiting one, joiners
are fed by the prefix cache, and MTP drafts only while one request runs."""

import asyncio
from pathlib import Path

import pytest

import mlxseek
from mlxseek.errors import GenerationError
from mlxseek.serve.engine import Engine, SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT = 120  # seconds, for any one test's async body


@pytest.fixture(scope="module")
def trained():
    model, tok = mlxseek.load(FIXTURES / "trained_v3", dtype="float32")
    ids = tok.encode((FIXTURES / "trained_v3_heldout.txt").read_text())
    return model, tok, ids


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def together(*coros):
    return await asyncio.gather(*coros)


async def collect(engine, prompt, **kw):
    return [e async for e in engine.generate(prompt, SamplingParams(**kw))]


def alone(model, tok, prompt, n):
    return [r.token for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=n)]


def make_engine(model, tok, **kw) -> Engine:
    eng = Engine(model, tok, model_id="trained_v3", **kw)
    eng.start()
    return eng


def test_four_concurrent_requests_get_their_solo_tokens(trained):
    model, tok, ids = trained
    prompts = [ids[0:40], ids[1000:1300], ids[2000:2007], ids[3000:3100]]
    n = [40, 24, 48, 32]
    want = [alone(model, tok, p, k) for p, k in zip(prompts, n)]
    eng = make_engine(model, tok, max_batch=4, prompt_cache_bytes=0)
    try:
        got = run(together(*(collect(eng, p, max_tokens=k) for p, k in zip(prompts, n))))
    finally:
        eng.stop()
    assert [[e.token for e in g] for g in got] == want
    assert max(e.batch_size for g in got for e in g) == 4  # they did share forwards
    assert all(g[-1].finish_reason is not None and g[-1].prompt_tokens == len(p) for g, p in zip(got, prompts))
    assert eng.stats()["running"] == 0 and eng.stats()["finished"] == 4


def test_cancelled_request_frees_its_row(trained):
    model, tok, ids = trained
    long_p, cancel_p, wait_p = ids[0:30], ids[500:530], ids[900:930]
    want_long, want_wait = alone(model, tok, long_p, 120), alone(model, tok, wait_p, 8)
    eng = make_engine(model, tok, max_batch=2, prompt_cache_bytes=0)
    order = []

    async def cancelled():
        got = []
        async for e in eng.generate(cancel_p, SamplingParams(max_tokens=120)):
            got.append(e)
            if len(got) == 3:
                break  # the consumer goes away: the engine cancels the request
        return got

    async def tracked(name, prompt, k, delay=0.0):
        await asyncio.sleep(delay)
        got = await collect(eng, prompt, max_tokens=k)
        order.append(name)
        return got

    async def main():
        return await asyncio.gather(tracked("long", long_p, 120), cancelled(), tracked("wait", wait_p, 8, 0.05))

    try:
        got_long, got_cancel, got_wait = run(main())
        stats = eng.stats()
    finally:
        eng.stop()
    assert len(got_cancel) == 3
    assert [e.token for e in got_long] == want_long and [e.token for e in got_wait] == want_wait
    assert order == ["wait", "long"]  # the waiting request took the cancelled one's row, not the long one's
    assert stats["cancelled"] == 1 and stats["running"] == 0


def test_joiners_are_fed_by_the_prefix_cache(trained):
    model, tok, ids = trained
    shared = ids[4000:4096]  # three whole 32-token blocks
    first, second = shared + ids[100:110], shared + ids[200:205]
    eng = make_engine(model, tok, max_batch=4)
    try:
        a = run(collect(eng, first, max_tokens=8))
        b, c = run(together(collect(eng, second, max_tokens=16), collect(eng, ids[300:340], max_tokens=16)))
        stats = eng.stats()
    finally:
        eng.stop()
    assert [e.token for e in a] == alone(model, tok, first, 8)
    assert b[-1].cached_tokens == 96 and stats["hits"] >= 1
    assert [e.token for e in b] == alone(model, tok, second, 16)
    assert [e.token for e in c] == alone(model, tok, ids[300:340], 16)


def test_mtp_drafts_only_while_one_request_runs(trained):
    model, tok, ids = trained
    eng = make_engine(model, tok, max_batch=2, prompt_cache_bytes=0, draft="mtp")
    try:
        solo = run(collect(eng, ids[0:40], max_tokens=32))
        pair = run(together(collect(eng, ids[0:40], max_tokens=32), collect(eng, ids[50:90], max_tokens=32)))
    finally:
        eng.stop()
    assert [e.token for e in solo] == alone(model, tok, ids[0:40], 32)
    assert sum(e.drafting for e in solo) > 16
    for g, p in zip(pair, (ids[0:40], ids[50:90])):
        assert [e.token for e in g] == alone(model, tok, p, 32)
        assert not any(e.drafting and e.batch_size > 1 for e in g)


def test_bad_batch_sizes_are_refused(trained):
    model, tok, _ = trained
    with pytest.raises(GenerationError, match="max_batch"):
        Engine(model, tok, model_id="x", max_batch=0)


def test_openai_sdk_concurrent_streams_match_alone_and_cancel_frees_a_row(trained):
    """Through a live server (max_batch 4) and the official openai SDK: four concurrent streamed completions
    each get the text they get when sent alone; a fifth, cancelled after three chunks, frees its row."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from serve_helpers import deadline, running_server

    model, tok, _ = trained
    prompts = ["def parse_args(argv):\n    ", "import os\nimport sys\n\n", "class Config:\n    def",
               "for key, value in items():\n"]

    def streamed(client, prompt, n=24):
        stream = client.completions.create(model="trained_v3", prompt=prompt, max_tokens=n, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in stream if c.choices)

    def cancelled(client):
        stream = client.completions.create(model="trained_v3", prompt="while True:\n", max_tokens=200, temperature=0,
                                           stream=True)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()

    with deadline(300), running_server(model, tok, model_id="trained_v3", max_batch=4,
                                       prompt_cache_bytes=0) as (srv, engine):
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        alone_text = [streamed(client, p) for p in prompts]
        with ThreadPoolExecutor(5) as pool:
            gone = pool.submit(cancelled, client)
            futures = [pool.submit(streamed, client, p) for p in prompts]
            together_text = [f.result(timeout=TIMEOUT) for f in futures]
            gone.result(timeout=TIMEOUT)
        for _ in range(200):  # the worker notices the closed stream at its next step
            if engine.stats()["running"] == 0:
                break
            asyncio.run(asyncio.sleep(0.02))
        stats = engine.stats()
    assert together_text == alone_text and all(alone_text)
    assert alone_text[0] == mlxseek.generate(model, tok, prompts[0], max_tokens=24)
    assert stats["cancelled"] == 1 and stats["running"] == 0

"""The serving engine on the trained tiny V3: greedy parity with mlxseek.generate, sampling, stop strings,
logprobs, length checks, the bounded queue, cancellation and memory under 50 concurrent requests."""

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

import mlxseek
from mlxseek.errors import GenerationError, QueueFullError, ServeError
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


async def collect(engine, prompt, **kw):
    return [e async for e in engine.generate(prompt, SamplingParams(**kw))]


@pytest.fixture
def engine(trained):
    model, tok, _ = trained
    eng = Engine(model, tok, model_id="trained_v3", prompt_cache_bytes=0)
    eng.start()
    yield eng
    eng.stop()


def test_greedy_equals_generate(trained, engine):
    model, tok, ids = trained
    for start, n in [(0, 40), (3000, 200)]:
        prompt = ids[start:start + n]
        events = run(collect(engine, prompt, max_tokens=24))
        ref = list(mlxseek.stream_generate(model, tok, prompt, max_tokens=24))
        assert [e.token for e in events] == [r.token for r in ref]
        assert "".join(e.text for e in events) == mlxseek.generate(model, tok, prompt, max_tokens=24)
        assert events[-1].finish_reason == ref[-1].finish_reason
        assert events[-1].prompt_tokens == n and events[-1].generation_tokens == len(ref)
        assert all(e.finish_reason is None for e in events[:-1])


def test_sampling_seed_is_reproducible(trained, engine):
    _, _, ids = trained
    kw = {"max_tokens": 16, "temperature": 1.5, "top_p": 0.95}
    a = run(collect(engine, ids[500:560], seed=7, **kw))
    b = run(collect(engine, ids[500:560], seed=7, **kw))
    c = run(collect(engine, ids[500:560], seed=8, **kw))
    greedy = run(collect(engine, ids[500:560], max_tokens=16))
    assert [e.token for e in a] == [e.token for e in b]
    assert [e.token for e in a] != [e.token for e in c] or [e.token for e in a] != [e.token for e in greedy]


def test_stop_string_ends_and_is_not_returned(trained, engine):
    _, _, ids = trained
    prompt = ids[3000:3200]
    full = "".join(e.text for e in run(collect(engine, prompt, max_tokens=24)))
    stop = full.strip()[3:6]
    assert stop
    events = run(collect(engine, prompt, max_tokens=24, stop=(stop,)))
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop"
    assert stop not in text and full.startswith(text)


def test_logprobs_match_the_model(trained, engine):
    model, tok, ids = trained
    prompt = ids[100:180]
    events = run(collect(engine, prompt, max_tokens=4, top_logprobs=3))
    ref = list(mlxseek.stream_generate(model, tok, prompt, max_tokens=4))
    for e, r in zip(events, ref):
        lp = r.logprobs.astype(mx.float32)
        assert e.logprob == pytest.approx(lp[r.token].item(), abs=1e-5)
        ids3 = [t for t, _, _ in e.top_logprobs]
        assert ids3 == mx.argsort(-lp)[:3].tolist()
        assert e.top_logprobs[0][2] >= e.top_logprobs[1][2] >= e.top_logprobs[2][2]
        assert e.top_logprobs[0][1] == tok.decode([ids3[0]])
    plain = run(collect(engine, prompt, max_tokens=2))
    assert plain[0].logprob is None and plain[0].top_logprobs is None
    chosen = run(collect(engine, prompt, max_tokens=2, top_logprobs=0))
    assert chosen[0].logprob is not None and chosen[0].top_logprobs is None


def test_length_and_parameter_errors(trained, engine):
    _, _, ids = trained
    ctx = engine.context_length
    assert ctx == 1024
    for prompt, kw, field in [
        (ids[:ctx], {"max_tokens": 4}, "context"),
        ([], {"max_tokens": 4}, "empty"),
        ([5, 10**7], {"max_tokens": 4}, "vocabulary"),
        (ids[:10], {"max_tokens": ctx + 1}, "max_tokens"),
        (ids[:10], {"max_tokens": 0}, "max_tokens"),
        (ids[:10], {"max_tokens": 4, "top_p": 0.0}, "top_p"),
        (ids[:10], {"max_tokens": 4, "temperature": -1.0}, "temperature"),
        (ids[:10], {"max_tokens": 4, "top_logprobs": 99}, "top_logprobs"),
    ]:
        with pytest.raises(GenerationError, match=field):
            run(collect(engine, prompt, **kw))
    # a prompt that leaves less room than max_tokens is cut at the context: finish_reason "length"
    events = run(collect(engine, ids[: ctx - 3], max_tokens=50))
    assert len(events) <= 3 and events[-1].finish_reason in ("length", "stop")
    assert engine.stats()["errors"] == 0


class SlowModel:
    """The real model, 30 ms slower per forward pass, so a consumer is always ahead of the decoder."""

    def __init__(self, model):
        self._model, self.forwards = model, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _slow(self):
        self.forwards += 1
        time.sleep(0.03)

    def __call__(self, *a, **kw):
        self._slow()
        return self._model(*a, **kw)

    def hidden_states(self, *a, **kw):
        self._slow()
        return self._model.hidden_states(*a, **kw)


def test_queue_full_and_cancel_within_one_step(trained):
    model, tok, ids = trained
    slow = SlowModel(model)
    eng = Engine(slow, tok, model_id="slow", max_queue=1, prompt_cache_bytes=0)
    eng.start()

    async def body():
        first = eng.generate(ids[:20], SamplingParams(max_tokens=500))
        await first.__anext__()  # running now
        waiting = asyncio.ensure_future(collect(eng, ids[20:40], max_tokens=4))
        while eng.queue_depth < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="queue is full"):
            await collect(eng, ids[40:60], max_tokens=4)
        for _ in range(3):
            await first.__anext__()
        before = slow.forwards
        await first.aclose()
        got = await waiting  # runs only once the cancelled one has left the worker
        return before, got

    before, got = run(body())
    after = slow.forwards
    eng.stop()
    assert len(got) == 4
    # the cancelled request stopped within one decode step (+1 queued ahead); the next took <= 4 + 1
    assert after - before <= 2 + 5
    assert eng.stats()["cancelled"] == 1


def test_fifty_concurrent_with_cancellation_frees_memory(trained):
    model, tok, ids = trained
    eng = Engine(model, tok, model_id="trained_v3", max_queue=64, prompt_cache_bytes=4 << 20)
    eng.start()
    rng = random.Random(0)
    run(collect(eng, ids[:64], max_tokens=4))  # warm up kernels and buffers
    mx.clear_cache()
    base = mx.get_active_memory() - eng.stats()["bytes"]

    async def client(i: int):
        start, n = rng.randrange(0, 5000), rng.randrange(20, 200)
        cut = rng.choice([None, 0, 1, 3])
        params = SamplingParams(max_tokens=rng.randrange(4, 16), temperature=rng.choice([0.0, 0.8]), seed=i)
        gen = eng.generate(ids[start:start + n], params)
        got = 0
        try:
            async for _ in gen:
                got += 1
                if cut is not None and got > cut:
                    return "cancelled"
        finally:
            await gen.aclose()
        return "finished"

    async def body():
        tasks = [asyncio.ensure_future(client(i)) for i in range(50)]
        await asyncio.sleep(0.05)
        for t in rng.sample(tasks, 5):  # some clients vanish while still queued or running
            t.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(body())
    deadline = time.time() + 30
    while (eng.queue_depth or eng.stats()["running"]) and time.time() < deadline:
        time.sleep(0.05)
    stats = eng.stats()
    eng.stop()
    assert all(r in ("finished", "cancelled") or isinstance(r, asyncio.CancelledError) for r in results), results
    assert stats["queue_depth"] == 0 and stats["running"] == 0 and stats["errors"] == 0
    mx.clear_cache()
    assert mx.get_active_memory() - stats["bytes"] <= base * 1.10


def test_cancel_during_prefill_keeps_the_prefilled_part(trained):
    model, tok, ids = trained
    slow = SlowModel(model)
    eng = Engine(slow, tok, model_id="slow", prompt_cache_bytes=64 << 20)
    eng.start()

    async def body():
        task = asyncio.ensure_future(collect(eng, ids[:900], max_tokens=8))
        while slow.forwards == 0:  # the first 512-token prefill chunk is running
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    deadline = time.time() + 30
    while eng.stats()["running"] and time.time() < deadline:
        time.sleep(0.02)
    stats = eng.stats()
    warm = run(collect(eng, ids[:900], max_tokens=4))
    eng.stop()
    assert stats["cancelled"] == 1 and stats["generation_tokens"] == 0
    assert slow.forwards <= 1 + 4  # one prefill chunk, then the warm request's own steps
    assert warm[-1].cached_tokens == 512  # the chunk that was prefilled before the cancel


def test_stop_fails_queued_requests(trained):
    model, tok, ids = trained
    slow = SlowModel(model)
    eng = Engine(slow, tok, model_id="slow", max_queue=4, prompt_cache_bytes=0)
    eng.start()

    async def body():
        first = eng.generate(ids[:20], SamplingParams(max_tokens=500))
        await first.__anext__()
        queued = asyncio.ensure_future(collect(eng, ids[20:40], max_tokens=4))
        while eng.queue_depth < 1:
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, eng.stop)
        rest = [e async for e in first]
        with pytest.raises(ServeError, match="stopped"):
            await queued
        return rest

    rest = run(body())
    assert len(rest) < 499 and all(e.finish_reason is None for e in rest)


def test_mtp_drafting_in_the_worker_thread_is_exact_and_exits_cleanly():
    """draft="mtp" through the engine's worker thread gives plain greedy tokens, and the process exits 0
    (MLX aborts at exit when a thread that used it ends without clearing its streams)."""
    code = f"""
import asyncio, json, mlxseek
from mlxseek.serve.engine import Engine, SamplingParams
m, tok = mlxseek.load({str(FIXTURES / "trained_v3")!r}, dtype="float32")
ids = list(range(5, 100))
plain = [r.token for r in mlxseek.stream_generate(m, tok, ids, max_tokens=16)]
eng = Engine(m, tok, model_id="t", draft="mtp")
eng.start()
async def go():
    return [e.token async for e in eng.generate(ids, SamplingParams(max_tokens=16))]
print(json.dumps([asyncio.run(go()), plain]))
eng.stop()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    drafted, plain = json.loads(p.stdout.splitlines()[-1])
    assert drafted == plain and len(plain) == 16

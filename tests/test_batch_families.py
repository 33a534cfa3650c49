"""Continuous batching for the families whose caches cannot share one buffer: V3.2 (DSA: per-row indexer
keys and top-k) and V4 (per-row window rings and compressor states). Each row must get exactly the
tokens it gets alone: staggered joins, rows leaving, a cancelled row, and four concurrent server requests;
V4's fused step agrees with its row-by-row reference and runs one attention pass per layer."""

import asyncio
import random
from pathlib import Path

import mlx.core as mx
import pytest

import mlxseek
from mlxseek.cache.batch import make_batch_cache
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams
from mlxseek.layers.v4.attention import V4Attention
from mlxseek.layers.v4.indexer import complete_windows
from mlxseek.layers.v4.partial_rope import rope_for_layer
from mlxseek.serve.engine import Engine, SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["v32", "v4_flash"]
# Both run one forward per step with rows in shared buffers: V3.2's latent and indexer keys (cache/ragged.py),
# V4's window rings and compressor states (cache/v4_batch.py, one attention pass for all rows).
FUSED = {"v32": True, "v4_flash": True}
BATCH_KIND = {"v32": "batch_dsa", "v4_flash": "batch_v4"}
ROWS, N_TOKENS = 8, 64
_MODELS: dict = {}
_RUNS: dict = {}


def model_of(name):
    if name not in _MODELS:
        _MODELS[name] = mlxseek.load(FIXTURES / name, dtype="float32", tokenizer=False)[0]
    return _MODELS[name]


def load(name):
    """The model, 8 prompts of different lengths and their solo greedy runs."""
    if name not in _RUNS:
        model = model_of(name)
        rng = random.Random(7)
        # different lengths, some past V4's ratio-128 group and window, so rows hold different states
        prompts = [[rng.randrange(2, model.config.vocab_size) for _ in range(n)]
                   for n in (5, 40, 131, 17, 200, 64, 9, 150)]
        alone = [[r.token for r in mlxseek.stream_generate(model, None, p, max_tokens=N_TOKENS)] for p in prompts]
        _RUNS[name] = model, prompts, alone
    return _RUNS[name]


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
    assert make_batch_cache(model)[0].kind == BATCH_KIND[name]
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


# V4's fused batch (cache/v4_batch.py) against its slow reference (rows of solo caches attended one by one):
# rows shorter than the window (32), on and off ratio-4 and ratio-128 boundaries, about to cross them.
MIXED = (3, 4, 30, 127, 128, 131, 255, 64)


def _v4_rows(model, lengths):
    """Per prompt length, one solo prefill's caches; `copies()` gives fresh copies of all of them."""
    rng = random.Random(11)
    solos = []
    for n in lengths:
        c = model.make_cache()
        model(mx.array([[rng.randrange(2, model.config.vocab_size) for _ in range(n)]]), cache=c)
        solos.append(c)

    def copies():
        out = []
        for s in solos:
            fresh = model.make_cache()
            for f, c in zip(fresh, s):
                f.restore(c.snapshot())
            out.append(fresh)
        return out

    return copies


def _batch(model, rows, fused: bool):
    model.fuse_batch_rows = fused
    try:
        cache = make_batch_cache(model)
    finally:
        del model.fuse_batch_rows  # back to the class default
    for r in rows:
        for bc, c in zip(cache, r):
            bc.insert(c)
    return cache


def test_v4_fused_step_equals_the_row_by_row_reference_at_mixed_offsets():
    model = model_of("v4_flash")
    copies = _v4_rows(model, MIXED)
    fused, ref = _batch(model, copies(), True), _batch(model, copies(), False)
    assert fused[0].kind == "batch_v4" and ref[0].kind == "rows"
    assert fused[0].offset.tolist() == list(MIXED)
    tokens = mx.array([[7]] * len(MIXED), dtype=mx.uint32)
    for _ in range(6):  # crosses 4 -> 8, 127 -> 128 -> 132 and 255 -> 256 group ends
        want = model.head(model.trunk(tokens, ref)[:, -1])
        got = model.head(model.trunk(tokens, fused)[:, -1])
        diff = mx.abs(got - want).max().item()
        print(f"fused vs row-by-row logits: max diff {diff:.2e}")
        assert diff < 1e-5
        tokens = mx.argmax(want, axis=-1)[:, None].astype(mx.uint32)
    for layer, (bf, br) in enumerate(zip(fused, ref)):  # every row's state: what its own run holds
        for row in range(len(MIXED)):
            a, b = bf.extract(row).snapshot(), br.extract(row).snapshot()
            assert a.meta == b.meta and a.arrays.keys() == b.arrays.keys(), (layer, row)
            for k, v in b.arrays.items():
                assert v.shape == a.arrays[k].shape and mx.allclose(a.arrays[k], v, atol=1e-5).item(), (layer, row, k)


def test_a_v4_step_runs_one_attention_pass_per_layer_not_one_per_row(monkeypatch):
    model, prompts, _ = load("v4_flash")
    calls = []
    attend = V4Attention.attend
    monkeypatch.setattr(V4Attention, "attend", lambda self, q, *a: calls.append(q.shape[0]) or attend(self, q, *a))
    for fused, want in ((True, [4] * len(model.layers)), (False, [1] * 4 * len(model.layers))):
        model.fuse_batch_rows = fused
        dec = BatchDecoder(model, None)
        for p in prompts[:4]:
            dec.add(p, RowParams(max_tokens=4))
        calls.clear()
        dec.step()
        assert calls == want, fused
    del model.fuse_batch_rows


def test_a_v4_batch_refuses_several_tokens_per_row_and_a_row_of_another_layer_shape():
    model = model_of("v4_flash")
    rows = _v4_rows(model, (5, 9))()
    cache = _batch(model, rows, True)
    with pytest.raises(mlxseek.errors.BatchingError, match="tokens per row"):
        model.trunk(mx.array([[3, 4], [5, 6]], dtype=mx.uint32), cache)
    with pytest.raises(mlxseek.errors.BatchingError, match="another layer shape"):
        cache[0].insert(rows[0][1])  # layer 1 (ratio 4) into layer 0's (window only) batch


def test_per_row_offsets_rotate_and_mask_each_row_as_its_own_scalar_offset():
    rope = rope_for_layer(model_of("v4_flash").config, 4)
    offsets = [0, 3, 127, 300]
    for shape in ((4, 2, 16), (4, 3, 2, 16)):  # keys (B, L, d) and queries (B, H, L, d)
        x = mx.random.normal(shape, key=mx.random.key(1))
        for stride, inverse in ((1, False), (4, False), (1, True)):
            got = rope(x, mx.array(offsets), stride=stride, inverse=inverse)
            want = mx.concatenate([rope(x[b: b + 1], o, stride=stride, inverse=inverse) for b, o in enumerate(offsets)])
            assert mx.array_equal(got, want).item(), (shape, stride, inverse)
    got = complete_windows(mx.array(offsets), 1, 80, 4)
    assert got.shape == (4, 1, 80)
    assert mx.array_equal(got, mx.concatenate([complete_windows(o, 1, 80, 4) for o in offsets])).item()


def test_v4_fused_rows_rolled_back_stay_equal_to_the_reference():
    """A row trimmed inside the batch (a rollback: window slots and open groups are bookkeeping) decodes on
    exactly as its solo cache trimmed the same way."""
    model = model_of("v4_flash")
    copies = _v4_rows(model, (6, 129, 40))
    fused, ref = _batch(model, copies(), True), _batch(model, copies(), False)
    tokens = mx.array([[7], [8], [9]], dtype=mx.uint32)
    for step in range(6):
        if step == 3:
            for cache in (fused, ref):
                for bc in cache:
                    assert bc.trim_row(1, 3) == 3 and bc.trim_row(2, 2) == 2
        want = model.head(model.trunk(tokens, ref)[:, -1])
        got = model.head(model.trunk(tokens, fused)[:, -1])
        assert mx.abs(got - want).max().item() < 1e-5, step
        tokens = mx.argmax(want, axis=-1)[:, None].astype(mx.uint32)
    assert fused[0].offset.tolist() == [12, 132, 44]

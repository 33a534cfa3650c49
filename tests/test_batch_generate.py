"""Batched decoding on the trained tiny V3: every row's tokens are those `mlxseek.generate` gives it alone,
whatever the batch size, arrival order and lengths around it; per-row sampling parameters hold."""

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import make_sampler

import mlxseek
from mlxseek import BatchDecoder, RowParams
from mlxseek.errors import BatchingError, GenerationError

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = ["import os\n", "def main(", "class Foo:\n    def", "for i in range(", "# Copyright (c) 2001",
           "x = [", "if __name__ == ", "    return self."]
N_TOKENS = 64


@pytest.fixture(scope="module")
def trained():
    return mlxseek.load(FIXTURES / "trained_v3")


def alone_records(model, tok, prompt, **kw) -> list:
    return list(mlxseek.stream_generate(model, tok, prompt, **kw))


@pytest.fixture(scope="module")
def alone(trained):
    model, tok = trained
    return [[r.token for r in alone_records(model, tok, p, max_tokens=N_TOKENS)] for p in PROMPTS]


def run_staggered(dec: BatchDecoder, prompts, params, limit: int, cancel=None) -> dict[int, list]:
    """Admit at most one waiting prompt per step while fewer than `limit` rows run; returns prompt index ->
    records. `cancel` = (prompt index, after how many of its tokens) removes that row mid-way."""
    waiting, index, out = list(range(len(prompts))), {}, {i: [] for i in range(len(prompts))}
    while waiting or dec.active or dec.pending:
        if waiting and dec.active < limit:
            i = waiting.pop(0)
            index[dec.add(prompts[i], params[i])] = i
        for rid, rec in dec.step():
            out[index[rid]].append(rec)
            if cancel and index[rid] == cancel[0] and len(out[cancel[0]]) == cancel[1] and rec.finish_reason is None:
                dec.remove(rid)
    return out


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_rows_match_alone_at_every_batch_size(trained, alone, batch):
    model, tok = trained
    dec = BatchDecoder(model, tok)
    out = run_staggered(dec, PROMPTS, [RowParams(max_tokens=N_TOKENS)] * len(PROMPTS), batch)
    for i, recs in out.items():
        assert [r.token for r in recs] == alone[i], f"prompt {i} at batch {batch}"
    assert max(r.batch_size for recs in out.values() for r in recs) == batch
    assert mlxseek.generate(model, tok, PROMPTS[0], max_tokens=N_TOKENS) == "".join(r.text for r in out[0])


def test_cancelled_row_leaves_the_others_exact(trained, alone):
    model, tok = trained
    dec = BatchDecoder(model, tok)
    out = run_staggered(dec, PROMPTS, [RowParams(max_tokens=N_TOKENS)] * len(PROMPTS), 4, cancel=(1, 10))
    assert [r.token for r in out[1]] == alone[1][:10]
    for i in (0, *range(2, len(PROMPTS))):
        assert [r.token for r in out[i]] == alone[i]
    assert dec.active == 0
    with pytest.raises(BatchingError, match="not running"):
        dec.remove(1)


def test_long_prompt_among_short_ones(trained):
    model, tok = trained
    text = (Path(mlxseek.__file__).parent / "generation" / "stream.py").read_text()
    long = tok.encode(text)[:600]
    short = [tok.encode(p)[:5] for p in ("import numpy as np", "def f(x, y):", "class A(object):",
                                         "while True: pass", "print('hello')", "from typing import",
                                         "try:\n    x = 1")]
    assert len(long) == 600 and all(len(s) == 5 for s in short)
    prompts = [long, *short]
    want = [[r.token for r in alone_records(model, tok, p, max_tokens=N_TOKENS)] for p in prompts]
    got = {i: [] for i in range(len(prompts))}
    for i, rec in mlxseek.stream_batch_generate(model, tok, prompts, max_tokens=N_TOKENS):
        got[i].append(rec.token)
    assert [got[i] for i in range(len(prompts))] == want


def test_seeded_sampled_row_is_reproducible(trained):
    model, tok = trained
    sampled = RowParams(max_tokens=32, temperature=0.8, top_p=0.9, seed=7)
    want = [r.token for r in alone_records(model, tok, PROMPTS[0], max_tokens=32, seed=7,
                                           sampler=make_sampler(temp=0.8, top_p=0.9))]
    runs = []
    for companions in ([1, 2, 3], [5, 6]):
        params = [sampled] + [RowParams(max_tokens=20, temperature=1.0, seed=c) for c in companions]
        res = mlxseek.batch_generate(model, tok, [PROMPTS[0], *(PROMPTS[c] for c in companions)], params=params)
        runs.append(res[0].tokens)
    assert runs[0] == runs[1] == [t for t in want if t not in tok.eos_token_ids]
    greedy = mlxseek.batch_generate(model, tok, [PROMPTS[0]], max_tokens=32)[0].tokens
    assert runs[0] != greedy  # the temperature took effect


def test_stop_strings_and_max_tokens_per_row(trained, alone):
    model, tok = trained
    full = mlxseek.generate(model, tok, PROMPTS[3], max_tokens=N_TOKENS)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip() and full.find(stop) > 0
    params = [RowParams(max_tokens=5), RowParams(max_tokens=N_TOKENS, stop=(stop,)), RowParams(max_tokens=N_TOKENS)]
    res = mlxseek.batch_generate(model, tok, [PROMPTS[0], PROMPTS[3], PROMPTS[4]], params=params)
    assert res[0].tokens == alone[0][:5] and res[0].finish_reason == "length"
    assert res[1].text == mlxseek.generate(model, tok, PROMPTS[3], max_tokens=N_TOKENS, stop=[stop])
    assert res[1].text == full[: full.find(stop)] and res[1].finish_reason == "stop"
    assert res[2].tokens == [t for t in alone[4] if t not in tok.eos_token_ids]


def test_mtp_drafts_only_while_one_row_runs(trained, alone):
    model, tok = trained
    dec = BatchDecoder(model, tok, draft="mtp", num_draft=2)
    out = run_staggered(dec, PROMPTS[:3], [RowParams(max_tokens=N_TOKENS)] * 3, 2)
    for i in range(3):
        assert [r.token for r in out[i]] == alone[i]
        assert not any(r.drafting and r.batch_size > 1 for r in out[i])
    # Prompt 0 runs alone for one step (drafting at once: its prefill went through the drafter), then with
    # prompt 1, then 1 with 2; prompt 2 ends alone and drafts again.
    shared = next(j for j, r in enumerate(out[0]) if r.batch_size > 1)
    assert any(r.drafting for r in out[0][:shared]) and not any(r.drafting for r in out[0][shared:])
    assert any(r.drafting for r in out[2])
    solo = BatchDecoder(model, tok, draft="mtp")
    recs = run_staggered(solo, PROMPTS[:1], [RowParams(max_tokens=N_TOKENS)], 1)[0]
    assert [r.token for r in recs] == alone[0] and sum(r.drafting for r in recs) > N_TOKENS // 2


def test_bad_row_params_are_named(trained):
    model, tok = trained
    dec = BatchDecoder(model, tok)
    with pytest.raises(GenerationError, match="top_p"):
        dec.add(PROMPTS[0], RowParams(top_p=0))
    with pytest.raises(GenerationError, match="max_tokens"):
        dec.add(PROMPTS[0], RowParams(max_tokens=0))
    with pytest.raises(GenerationError, match="one per prompt"):
        mlxseek.batch_generate(model, tok, PROMPTS[:2], params=[RowParams()])


def test_batch_cache_rows_keep_their_own_lengths(trained):
    from mlxseek.cache.batch import make_batch_cache
    from mlxseek.cache.mla import LatentCache

    model, _ = trained
    layer = make_batch_cache(model)[0]
    solos = []
    for n in (3, 300):
        c = LatentCache()
        c.update_and_fetch(mx.random.normal((1, 1, n, 64)), mx.random.normal((1, 1, n, 16)))
        solos.append(c)
        layer.insert(c)
    assert layer.lengths == [3, 300] and layer.offset.tolist() == [3, 300]
    latent, _ = layer.update_and_fetch(mx.ones((2, 1, 1, 64)), mx.ones((2, 1, 1, 16)))
    assert latent.shape[2] == 301 and layer.lengths == [4, 301]
    assert mx.array_equal(latent[0, 0, :3], solos[0].keys[0, 0, :3]) and float(latent[0, 0, 3].sum()) == 64
    layer.trim_row(1, 101)
    assert layer.lengths == [4, 200]
    back = layer.extract(1)
    assert back.offset == 200 and mx.array_equal(back.keys, solos[1].keys[..., :200, :])
    layer.remove([0])
    assert layer.lengths == [200] and layer.latent.shape[0] == 1


def test_row_rollback_masks_its_stale_columns(trained):
    """Rolling one row back leaves its later columns stale; the mask hides them, so re-feeding the same
    token at the same position reproduces that row's logits while the other row moves on."""
    from mlxseek.cache.batch import make_batch_cache

    model, tok = trained
    cache = make_batch_cache(model)
    for p in ("import os\n", "class Foo(object):\n    def __init__(self):"):
        solo = mlxseek.make_prompt_cache(model)
        model(mx.array([tok.encode(p)]), cache=solo)
        for bc, c in zip(cache, solo):
            bc.insert(c)
    step = lambda toks: model(mx.array(toks), cache=cache)[:, -1]  # noqa: E731
    first = step([[10], [20]])
    step([[11], [21]])
    step([[12], [22]])
    for bc in cache:
        bc.trim_row(0, 2)  # row 0 back to before token 11
    again = step([[11], [23]])
    assert cache[0].lengths[0] < cache[0].lengths[1] - 1
    assert float(mx.abs(again[0] - step_solo(model, tok, "import os\n", [10, 11])).max()) < 1e-4
    assert float(mx.abs(first[0] - step_solo(model, tok, "import os\n", [10])).max()) < 1e-4


def step_solo(model, tok, prompt, fed):
    solo = mlxseek.make_prompt_cache(model)
    model(mx.array([tok.encode(prompt)]), cache=solo)
    for t in fed:
        out = model(mx.array([[t]]), cache=solo)[:, -1]
    return out[0]

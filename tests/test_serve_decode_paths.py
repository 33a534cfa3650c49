"""The server's decode paths agree on drafting: `TokenEvent.drafting` is true only for tokens of a
forward that drafted, and draft="auto" keeps its meaning when the engine batches."""

from pathlib import Path
from types import SimpleNamespace

import mlxseek
from mlxseek.generation.batch import BatchDecoder
from mlxseek.generation.rows import RowParams
from mlxseek.serve.engine import _DraftedSteps

FIXTURES = Path(__file__).parent / "fixtures"


def test_drafting_flag_follows_each_forward_not_the_running_totals():
    flags = _DraftedSteps()
    # (verify_steps, draft_tokens) per record: the prefill token, a drafted step emitting 2 tokens,
    # a drafted step emitting 1, then drafting stops (auto) and plain steps follow.
    records = [(0, 0), (1, 2), (1, 2), (2, 4), (3, 4), (4, 4)]
    got = [flags(SimpleNamespace(verify_steps=s, draft_tokens=d)) for s, d in records]
    assert got == [False, True, True, True, False, False]


def test_auto_drafting_survives_batching():
    model, tok = mlxseek.load(FIXTURES / "trained_v3")
    prompt = tok.encode("The quick brown fox")
    alone = [r.token for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=12)]
    dec = BatchDecoder(model, tok, draft="auto")
    assert dec.solo is not None and dec.solo.auto
    rid = dec.add(prompt, RowParams(max_tokens=12))
    out = []
    while dec.active or dec.pending:
        out += [rec.token for r, rec in dec.step() if r == rid]
    assert out == alone

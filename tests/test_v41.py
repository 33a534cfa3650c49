"""DeepSeek-V4.1 (CSA2, lagged mHC, fake quant) against mlx-lm 0.32.2's `deepseek_v41` on identical random
weights, and our own prefill against token-by-token decoding. Engram is in test_engram.py."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from v41_fixture import TINY, mlx_lm_model, ours_from

from mlxseek.config import ModelConfig
from mlxseek.errors import ConfigError

PROMPT = 40  # > 4 windows of 8, 20 ratio-2 groups, 10 candidate blocks of 4 (3 kept)
NOISE = 1e-4  # float32 operation-order differences: the bound for a comparison without fake quant


@pytest.fixture(scope="module")
def pair():
    ref = mlx_lm_model()
    ours = ours_from(ref)
    ours.set_fake_quant(True, activations=False)  # mlx-lm does not round matmul inputs (DeepSeek does)
    return ref, ours


def _prompt(n=PROMPT, seed=1):
    return mx.array(np.random.default_rng(seed).integers(0, TINY["vocab_size"], (1, n)))


def _no_fake_quant(monkeypatch):
    from mlx_lm.models import deepseek_v41 as ref

    monkeypatch.setattr(ref, "_fake_quant_fp8", lambda x, *a, **k: x)
    monkeypatch.setattr(ref, "_fake_quant_fp4", lambda x, *a, **k: x)


def _assert_mostly_tight(a: mx.array, b: mx.array, what: str) -> None:
    """Fake quant on: float32-order noise may flip an FP8/FP4 rounding step, and through it a top-k or routing
    choice, on some row; later rows see it through attention. Half the rows stay tight, 90% keep their argmax."""
    rows = mx.abs(a - b).max(axis=-1)[0]
    loose = [i for i, d in enumerate(rows.tolist()) if d >= NOISE]
    same = (mx.argmax(a, axis=-1) == mx.argmax(b, axis=-1)).mean().item()
    print(f"{what}, fake quant on: max |logit diff| {rows.max().item():.2e}, rows past {NOISE}: {loose}, "
          f"argmax agrees on {same:.0%}")
    assert len(loose) <= a.shape[1] // 2 and same >= 0.9


def _fake_quant_off(ours, monkeypatch):
    _no_fake_quant(monkeypatch)
    ours.set_fake_quant(False)


def test_logits_match_mlx_lm_with_fake_quant(pair, monkeypatch):
    """Statistically with fake quant on (float32-order noise: which BLAS runs the matmuls, see conftest.py),
    and the same prompt tight with it off: the rows that differ are the fake quant's rounding."""
    ref, ours = pair
    ids = _prompt()
    _assert_mostly_tight(ref(ids), ours(ids), "vs mlx-lm")
    try:
        _fake_quant_off(ours, monkeypatch)
        off = mx.abs(ref(ids) - ours(ids)).max().item()
    finally:
        ours.set_fake_quant(True, activations=False)
    assert off < NOISE, "the rows that differ are not the fake quant's rounding"


def test_logits_match_mlx_lm_without_fake_quant(pair, monkeypatch):
    ref, ours = pair
    try:
        _fake_quant_off(ours, monkeypatch)
        ids = _prompt(seed=2)
        off = ours(ids)
        diff = mx.abs(ref(ids) - off).max().item()
    finally:
        ours.set_fake_quant(True, activations=False)
    print(f"max |logit diff| vs mlx-lm, fake quant off: {diff:.2e}")
    assert diff < 1e-4
    assert mx.abs(off - ours(ids)).max().item() > 1e-3  # the switch does change the forward


def _greedy(model, ids, n):
    cache, out = model.make_cache(), []
    logits = model(ids, cache)
    for _ in range(n):
        tok = mx.argmax(logits[:, -1], axis=-1)
        out.append(tok.item())
        logits = model(tok[:, None], cache)
    return out


def test_16_greedy_tokens_match_mlx_lm_fake_quant_off(pair, monkeypatch):
    ref, ours = pair
    ids = _prompt(seed=3)
    try:
        _fake_quant_off(ours, monkeypatch)
        assert _greedy(ours, ids, 16) == _greedy(ref, ids, 16)
    finally:
        ours.set_fake_quant(True, activations=False)


def test_greedy_tokens_with_fake_quant_mostly_match_mlx_lm(pair):
    """mlx-lm's 16 greedy tokens fed to ours (fake quant on): ours picks the same first token and at least
    90% of the same next tokens; where it does not, the print shows how near a tie it was."""
    ref, ours = pair
    ids = _prompt(seed=3)
    tokens = _greedy(ref, ids, 16)
    logits = ours(mx.concatenate([ids, mx.array([tokens[:-1]])], axis=1))[0, PROMPT - 1:]
    best = mx.argmax(logits, axis=-1).tolist()
    gaps = (logits.max(axis=-1) - logits[mx.arange(16), mx.array(tokens)]).tolist()
    print("greedy steps where ours differs, with the logit gap:",
          [(i, f"{g:.1e}") for i, (b, t, g) in enumerate(zip(best, tokens, gaps)) if b != t])
    assert best[0] == tokens[0] and sum(b == t for b, t in zip(best, tokens)) >= 0.9 * 16


def _chunked(model, ids, chunks) -> mx.array:
    """The logits (1, 40, vocab) of a prefill of `ids` in `chunks`."""
    cache, parts, start = model.make_cache(), [], 0
    for n in chunks:
        parts.append(model(ids[:, start:start + n], cache))
        start += n
    return mx.concatenate(parts, axis=1)


@pytest.mark.parametrize("chunks", [[17, 23], [1] * PROMPT], ids=["two_chunks", "token_by_token"])
def test_prefill_equals_chunked_and_token_by_token(pair, chunks):
    """Tight with fake quant off; on, the chunks' matmul shapes may round differently with some BLAS builds
    (OpenBLAS, not MLX's bundled one: conftest.py), so statistically."""
    _, ours = pair
    ids = _prompt(seed=4)
    try:
        ours.set_fake_quant(False)
        off = mx.abs(_chunked(ours, ids, chunks) - ours(ids)).max().item()
    finally:
        ours.set_fake_quant(True, activations=False)
    print(f"chunks {chunks[:3]}...: max diff {off:.2e} with fake quant off")
    assert off < NOISE
    _assert_mostly_tight(_chunked(ours, ids, chunks), ours(ids), f"chunks {chunks[:3]}...")


def test_composite_config_round_trips():
    text = {k: v for k, v in TINY.items() if k != "model_type"}
    d = {"model_type": "deepseek_v41", "text_config": text, "vision_config": {"hidden_size": 8},
         "image_token_id": 129264}
    cfg = ModelConfig.from_dict(d)
    assert cfg.hidden_size == TINY["hidden_size"] and cfg.extra["image_token_id"] == 129264
    assert cfg.to_dict()["text_config"]["kv_source_layer_ids"] == TINY["kv_source_layer_ids"]
    assert cfg.to_dict()["vision_config"] == {"hidden_size": 8}


def test_candidate_source_defaults_to_the_last_kv_source():
    text = {k: v for k, v in TINY.items() if k != "candidate_source_layer_id"}
    assert ModelConfig.from_dict(text).candidate_source == 5  # transformers' default (mlx-lm: off)
    assert ModelConfig.from_dict({**TINY, "candidate_source_layer_id": -1}).candidate_source == -1


def test_first_compressed_layer_must_be_a_kv_source():
    from mlxseek.models.deepseek_v41 import V41Model

    cfg = ModelConfig.from_dict({**TINY, "kv_source_layer_ids": [5]})
    with pytest.raises(ConfigError, match="kv_source_layer_ids: layer 2"):
        V41Model(cfg)


def test_estimate_sizes_v41_flash_with_engram_apart():
    from pathlib import Path

    from mlxseek.tools.estimate import estimate

    # V4.1-Flash's text_config as the issue describes it (tests/data/configs/deepseek_v41_flash.json)
    e = estimate(Path(__file__).parent / "data" / "configs" / "deepseek_v41_flash.json", recipe="native")
    rows = 384006168 + 384016682
    assert e["engram"]["on_disk_bytes"] == round(rows * (256 + 8))  # ~203 GB: FP8 rows + E8M0 per 32
    assert e["engram"]["rows_per_token"] == 48 and e["engram"]["resident"] is False
    shipped = e["size_bytes"] + e["engram"]["on_disk_bytes"]
    # 510.3 GB published also holds the vision tower, which the census leaves out (the drafter is counted)
    assert 480e9 < shipped < 510.3e9
    assert e["resident_bytes"] < e["size_bytes"] + 20e9  # tables never counted as resident
    # CSA2: only the 4 KV sources cache compressed entries (3 at ratio 2, 1 at ratio 1; + index keys)
    assert e["kv_bytes_per_token"] == (3 * (512 + 128) / 2 + (512 + 128)) * 2


def test_estimate_cli_shows_engram_on_disk():
    from pathlib import Path

    from click.testing import CliRunner

    from mlxseek.cli import main

    config = Path(__file__).parent / "data" / "configs" / "deepseek_v41_flash.json"
    r = CliRunner().invoke(main, ["estimate", "--config", str(config), "--recipe", "native",
                                  "--machine", "m3-ultra-512"])
    assert r.exit_code == 0, r.output
    assert "Engram       202.76 GB in 2 tables on disk (layers [1, 14], 768,022,850 rows), never resident; " \
           "48 rows" in r.output
    assert "fits         with the Engram tables on SSD: m3-ultra-512" in r.output

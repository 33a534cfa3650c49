"""Engram reads overlapped with compute (DeepSeek-V4.1): every Engram layer's reads start before layer 0 and
each layer waits only for its own rows. Logits equal the synchronous path and resident tables bit for bit;
the LRU sees the same hits and misses."""

from __future__ import annotations

import threading
import time

import mlx.core as mx
import numpy as np
import pytest
from engram_fixture import engram_config, hasher, write_tables
from v41_fixture import TINY, mlx_lm_model, ours_from

from mlxseek.checkpoint.engram_rows import DiskRows, ResidentRows
from mlxseek.config import ModelConfig
from mlxseek.layers.v41.engram import Engram


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = ModelConfig.from_dict(engram_config(TINY))
    sources = write_tables(tmp_path_factory.mktemp("overlap"), cfg)
    return cfg, sources, mlx_lm_model()


def _model(setup, memory, overlap: bool):
    cfg, _, ref = setup
    model = ours_from(ref, engram_config(TINY))
    model.attach_engram(hasher(cfg), memory)
    model.engram_overlap = overlap
    return model


def _greedy(model, ids, steps=6):
    cache = model.make_cache()
    out = [np.array(model(ids[:, :13], cache)), np.array(model(ids[:, 13:], cache))]  # two prefill chunks
    for _ in range(steps):
        out.append(np.array(model(mx.argmax(mx.array(out[-1][:, -1:]), axis=-1), cache)))
    return out


def test_overlapped_reads_bit_identical_to_sync_and_resident(setup):
    _, sources, _ = setup
    ids = mx.array(np.random.default_rng(11).integers(0, TINY["vocab_size"], (2, 30)))
    overlapped = DiskRows(sources, budget_bytes=40 * 40)  # 40 rows: evictions happen
    synchronous = DiskRows(sources, budget_bytes=40 * 40)
    a = _greedy(_model(setup, overlapped, True), ids)
    b = _greedy(_model(setup, synchronous, False), ids)
    c = _greedy(_model(setup, ResidentRows.from_sources(sources), True), ids)
    assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(a, b, c))
    # the same sequence of fetches: the LRU hit and missed the same rows (the timings aside)
    counts = lambda m: {k: v for k, v in vars(m.stats).items() if not k.endswith("_s")}  # noqa: E731
    assert counts(overlapped) == counts(synchronous) and overlapped.stats.disk_rows > 0


class SlowRows:
    """Resident rows whose reads take `delay` seconds each on a background thread; logs submits and waits."""

    def __init__(self, sources, delay: float, log: list):
        self.inner, self.delay, self.log = ResidentRows.from_sources(sources), delay, log
        self.stats = self.inner.stats

    def fetch_async(self, table, rows, asked=0):
        from concurrent.futures import Future

        self.log.append(f"read {table}")
        out: Future = Future()

        def finish():
            time.sleep(self.delay)
            out.set_result(self.inner.fetch(table, rows, asked))

        threading.Thread(target=finish, daemon=True).start()
        return out


def test_reads_of_every_layer_start_before_layer_0(setup, monkeypatch):
    _, sources, _ = setup
    log: list = []
    model = _model(setup, SlowRows(sources, 0.2, log), True)
    call = Engram.__call__
    monkeypatch.setattr(Engram, "__call__", lambda self, *a, **k: (log.append("engram layer"), call(self, *a, **k))[1])
    ids = mx.array(np.random.default_rng(12).integers(0, TINY["vocab_size"], (1, 9)))
    got = np.array(model(ids))
    assert log == ["read 0", "read 1", "engram layer", "engram layer"]
    ref = _model(setup, ResidentRows.from_sources(sources), False)
    assert np.array_equal(got, np.array(ref(ids)))

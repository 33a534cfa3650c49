"""DeepSeek-V4.1 behind `mlxseek serve`: completions run with Engram read from disk; the prefix cache
restores V4.1 caches (snapshot points, as V4's) and a cached request answers as an uncached one; the chat
style is V4's."""

from __future__ import annotations

import httpx
import mlx.core as mx
import numpy as np
from engram_fixture import engram_config
from serve_helpers import running_server
from v41_checkpoint import write_official
from v41_fixture import TINY, mlx_lm_model, ours_from

import mlxseek
from mlxseek.formats.style import detect_style


def test_v41_serves_completions_with_its_caches_in_the_prefix_cache(tmp_path):
    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    model, tok = mlxseek.load(tmp_path / "v41", dtype="float32", engram_memory_gb=0.001)
    prompt = " ".join(f"w{i % 97}" for i in range(40))
    body = {"model": "v41-tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0}
    with running_server(model, tok, model_id="v41-tiny", chat_style="v4.1") as (server, engine):
        first = httpx.post(f"{server.url}/v1/completions", timeout=60, json=body)
        again = httpx.post(f"{server.url}/v1/completions", timeout=60, json=body)
        stats = engine.stats()
    assert first.status_code == 200 and again.status_code == 200, first.text + again.text
    assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    assert first.json()["usage"]["completion_tokens"] == 6
    # V4.1's caches follow the protocol: snapshots at the server's snapshot points, never cut
    assert stats["prefix_cache_enabled"] is True
    assert stats["cache"]["kinds"] == ["v41"] and stats["cache"]["cut"] is False
    assert model.engram_memory.stats.lookups > 0


def test_v41_server_snapshot_restores_exactly(tmp_path):
    from mlxseek.serve import cache_state

    model = ours_from(mlx_lm_model(), engram_config(TINY))
    model.attach_engram(*_resident_engram(model, tmp_path))
    ids = mx.array(np.random.default_rng(13).integers(0, 256, (1, 30)))
    cache = model.make_cache()
    model(ids[:, :21], cache)
    snap = cache_state.snapshot(cache, 21)
    expect = np.array(model(ids[:, 21:], cache))
    restored = cache_state.restore(model, snap)
    assert np.array_equal(np.array(model(ids[:, 21:], restored)), expect)


def _resident_engram(model, folder):
    from engram_fixture import hasher, write_tables

    from mlxseek.checkpoint.engram_rows import ResidentRows

    return hasher(model.config), ResidentRows.from_sources(write_tables(folder, model.config))


def test_v41_cache_snapshot_restores_exactly():
    model = ours_from(mlx_lm_model())
    ids = mx.array(np.random.default_rng(12).integers(0, 256, (1, 30)))
    cache = model.make_cache()
    model(ids[:, :21], cache)
    states = [c.snapshot() for c in cache]
    expect = np.array(model(ids[:, 21:], cache))
    fresh = model.make_cache()
    for c, s in zip(fresh, states):
        c.restore(s)
    assert np.array_equal(np.array(model(ids[:, 21:], fresh)), expect)


def test_v41_chat_style_is_its_own():
    assert detect_style(model_type="deepseek_v41") == "v4.1"


def test_v41_concurrent_requests_each_get_their_tokens(tmp_path):
    import concurrent.futures

    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    model, tok = mlxseek.load(tmp_path / "v41", dtype="float32")
    body = {"model": "v41-tiny", "max_tokens": 5, "temperature": 0}
    with running_server(model, tok, model_id="v41-tiny", chat_style="v4.1") as (server, _):
        def ask(prompt):
            r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={**body, "prompt": prompt})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = [ask(p) for p in ("w1 W2", "w7 w9 W3")]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            together = list(pool.map(ask, ("w1 W2", "w7 w9 W3")))
    assert together == alone

"""DeepSeek-V4.1 behind `mlxseek serve`: completions run with Engram read from disk; prefix caching is off
and /metrics says why (its caches cannot be snapshotted yet); the chat style is V4's."""

from __future__ import annotations

import httpx
from engram_fixture import engram_config
from serve_helpers import running_server
from v41_checkpoint import write_official
from v41_fixture import TINY, mlx_lm_model, ours_from

import mlxseek
from mlxseek.formats.style import detect_style


def test_v41_serves_completions_without_prefix_cache(tmp_path):
    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    model, tok = mlxseek.load(tmp_path / "v41", dtype="float32", engram_memory_gb=0.001)
    with running_server(model, tok, model_id="v41-tiny", chat_style="v4") as (server, engine):
        r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                       json={"model": "v41-tiny", "prompt": "w1 W2 w3", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        stats = engine.stats()
    assert stats["prefix_cache_enabled"] is False and "V41LayerCache" in stats["prefix_cache_reason"]
    assert model.engram_memory.stats.lookups > 0


def test_v41_chat_style_is_v4():
    assert detect_style(model_type="deepseek_v41") == "v4"


def test_v41_concurrent_requests_each_get_their_tokens(tmp_path):
    import concurrent.futures

    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    model, tok = mlxseek.load(tmp_path / "v41", dtype="float32")
    body = {"model": "v41-tiny", "max_tokens": 5, "temperature": 0}
    with running_server(model, tok, model_id="v41-tiny", chat_style="v4") as (server, _):
        def ask(prompt):
            r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={**body, "prompt": prompt})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = [ask(p) for p in ("w1 W2", "w7 w9 W3")]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            together = list(pool.map(ask, ("w1 W2", "w7 w9 W3")))
    assert together == alone

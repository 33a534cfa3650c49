"""Engram (DeepSeek-V4.1) rows from disk: a budgeted LRU against resident tables (bit-identical logits, reads
per token, a truncated shard), the official folder through `mlxseek.load` (FP8 32x32 / FP4 included),
`mlxseek convert` keeping the tables 8-bit, and `--engram-memory-gb`."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from engram_fixture import engram_config, hasher, write_tables
from v41_fixture import TINY, mlx_lm_model, ours_from

from mlxseek.checkpoint.engram_rows import DiskRows, ResidentRows
from mlxseek.config import ModelConfig
from mlxseek.errors import CheckpointError


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig.from_dict(engram_config(TINY))


@pytest.fixture(scope="module")
def engram_models(cfg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("engram")
    sources = write_tables(folder, cfg)
    ref = mlx_lm_model()
    resident = ours_from(ref, engram_config(TINY))
    resident.attach_engram(hasher(cfg), ResidentRows.from_sources(sources))
    disk = ours_from(ref, engram_config(TINY))
    disk.attach_engram(hasher(cfg), DiskRows(sources, budget_bytes=40 * 40))  # 40 rows: evictions happen
    return resident, disk, sources


def _run(model, ids, steps=6):
    cache = model.make_cache()
    out = [model(ids, cache)]
    for _ in range(steps):
        out.append(model(mx.argmax(out[-1][:, -1:], axis=-1), cache))
    return [np.array(o) for o in out]


def test_disk_rows_bit_identical_to_resident(engram_models):
    resident, disk, _ = engram_models
    ids = mx.array(np.random.default_rng(5).integers(0, TINY["vocab_size"], (1, 40)))
    a, b = _run(resident, ids), _run(disk, ids)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    stats = disk.engram_memory.stats
    assert stats.disk_rows > 0 and disk.engram_memory.resident_bytes <= 40 * 40
    # Engram changes the model: the same weights without tables differ
    plain = ours_from(mlx_lm_model())
    assert np.abs(np.array(plain(ids)) - a[0]).max() > 1e-3


def test_prefill_dedupes_reads(engram_models, cfg):
    _, disk, sources = engram_models
    fresh = DiskRows(sources, budget_bytes=0)
    disk.attach_engram(hasher(cfg), fresh)
    phrase = np.random.default_rng(6).integers(0, TINY["vocab_size"], 8)
    ids = mx.array(np.tile(phrase, 5)[None])  # a repeated phrase: the same n-grams come back
    disk(ids)
    per_token = fresh.stats.lookups / 40
    assert per_token == 2 * 6  # 2 Engram layers x (4 - 1) n-grams x 2 heads
    assert fresh.stats.disk_rows < fresh.stats.lookups / 3
    print(f"rows per prompt token: {per_token:.0f} looked up, {fresh.stats.disk_rows / 40:.2f} read")


def test_truncated_table_shard_is_named(cfg, tmp_path):
    sources = write_tables(tmp_path, cfg)
    data = sources[1].path.read_bytes()
    sources[1].path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="engram-1.safetensors"):
        DiskRows(sources, budget_bytes=1 << 20)


def test_missing_tables_are_a_typed_error(cfg):
    from mlxseek.errors import GenerationError

    model = ours_from(mlx_lm_model(), engram_config(TINY))
    with pytest.raises(GenerationError, match="Engram tables"):
        model(mx.array([[1, 2, 3]]))


def test_load_official_folder_reads_engram_from_disk(tmp_path):
    from v41_checkpoint import write_official

    import mlxseek
    from mlxseek.layers.v41.engram_hash import EngramHasher, EngramLayout

    base = engram_config(TINY)
    ours = ours_from(mlx_lm_model(), base)
    cfg = write_official(tmp_path / "v41", ours, TINY)
    model, _ = mlxseek.load(tmp_path / "v41", dtype="float32", tokenizer=False, engram_memory_gb=1e-6)
    assert model.engram_memory.capacity == 1000 // (32 + 1)  # 1 KB of 33-byte rows
    ours.attach_engram(EngramHasher(EngramLayout.from_config(cfg), np.arange(256) // 2, cfg.engram_pad_id),
                       ResidentRows.from_sources(model.engram_memory.sources))
    ids = mx.array(np.random.default_rng(8).integers(0, 256, (1, 30)))
    a, b = _run(model, ids, steps=4), _run(ours, ids, steps=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert model.engram_memory.stats.disk_rows > 0


def test_generate_cli_with_engram_memory_gb(tmp_path):
    from click.testing import CliRunner
    from v41_checkpoint import write_official

    from mlxseek.cli import main

    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    r = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "v41"), "--prompt", "w1", "--raw",
                                  "--max-tokens", "3", "--engram-memory-gb", "0.001"])
    assert r.exit_code == 0, r.output
    assert "generation: 3 tokens" in r.output
    bad = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "v41"), "--prompt", "w1", "--raw",
                                    "--engram-memory-gb", "-1"])
    assert bad.exit_code != 0 and "engram-memory-gb" in bad.output


def test_engram_prefill_equals_chunked_and_token_by_token(engram_models):
    resident, _, _ = engram_models
    ids = mx.array(np.random.default_rng(9).integers(0, TINY["vocab_size"], (1, 24)))
    full = np.array(resident(ids))
    for chunks in ([5, 19], [1] * 24):  # the look-back crosses chunk boundaries through the cache
        cache, parts, start = resident.make_cache(), [], 0
        for n in chunks:
            parts.append(np.array(resident(ids[:, start:start + n], cache)))
            start += n
        assert np.abs(np.concatenate(parts, axis=1) - full).max() < 1e-4


def test_load_official_fp8_32x32_and_fp4_experts(tmp_path):
    from v41_checkpoint import write_official

    import mlxseek
    from mlxseek.layers.v41.engram_hash import EngramHasher, EngramLayout

    ours = ours_from(mlx_lm_model(), engram_config(TINY))
    cfg = write_official(tmp_path / "v41", ours, TINY, quantized=True)  # `ours` now holds the exact values
    model, _ = mlxseek.load(tmp_path / "v41", dtype="float32", tokenizer=False)
    np.testing.assert_array_equal(np.array(model.layers[3].self_attn.q_b_proj.weight),
                                  np.array(ours.layers[3].self_attn.q_b_proj.weight))  # FP8 32x32: exact
    sw = model.layers[2].mlp.switch_mlp.up_proj
    assert (sw.mode, sw.group_size) == ("mxfp4", 32)  # FP4 experts kept as their bytes
    got = mx.dequantize(sw.weight, sw.scales, None, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)
    np.testing.assert_array_equal(np.array(got), np.array(ours.layers[2].mlp.switch_mlp.up_proj.weight))
    ours.attach_engram(EngramHasher(EngramLayout.from_config(cfg), np.arange(256) // 2, cfg.engram_pad_id),
                       ResidentRows.from_sources(model.engram_memory.sources))
    ids = mx.array(np.random.default_rng(10).integers(0, 256, (1, 30)))
    diff = np.abs(np.array(model(ids)) - np.array(ours(ids))).max()
    print(f"FP8 32x32 + FP4 official folder vs dequantized weights: max logit diff {diff:.2e}")
    assert diff < 1e-4


def test_convert_keeps_engram_tables_8bit_in_their_own_shards(tmp_path):
    from v41_checkpoint import write_official

    import mlxseek
    from mlxseek.convert.convert import convert

    write_official(tmp_path / "v41", ours_from(mlx_lm_model(), engram_config(TINY)), TINY)
    convert(hf_path=tmp_path / "v41", mlx_path=tmp_path / "q", quantize=True, quiet=True)
    shards = sorted(p.name for p in (tmp_path / "q").glob("engram-*.safetensors"))
    assert shards == ["engram-00001-of-00002.safetensors", "engram-00002-of-00002.safetensors"]
    src, _ = mlxseek.load(tmp_path / "v41", dtype="float32", tokenizer=False)
    out, _ = mlxseek.load(tmp_path / "q", dtype="float32", tokenizer=False)
    for a, b in zip(src.engram_memory.sources, out.engram_memory.sources):
        rows = np.arange(0, 50)
        for x, y in zip(ResidentRows.from_sources([a]).fetch(0, rows), ResidentRows.from_sources([b]).fetch(0, rows)):
            assert x.dtype == np.uint8 and np.array_equal(x, y)  # the same bytes, still 8-bit
    ids = mx.array(np.random.default_rng(11).integers(0, 256, (1, 20)))
    assert np.isfinite(np.array(out(ids))).all()
    # Unquantized, the converted folder is the source exactly (a random tiny V4.1 is too chaotic for a
    # 4-bit bound: FP8 rounding and top-k flips amplify any weight change).
    convert(hf_path=tmp_path / "v41", mlx_path=tmp_path / "f32", dtype="float32", quiet=True)
    same, _ = mlxseek.load(tmp_path / "f32", dtype="float32", tokenizer=False)
    assert np.array_equal(np.array(src(ids)), np.array(same(ids)))

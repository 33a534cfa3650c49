"""The cache protocol (`mlxseek.cache.protocol`): every cache class implements it, `serve/` never asks
which class a cache is, and V4 snapshots round-trip at each kind of snapshot point."""

import ast
import inspect
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, golden

import mlxseek
from mlxseek import cache as cache_pkg
from mlxseek.cache.batch import BatchDSACache, BatchLatentCache, BatchV4Cache, RowBatchCache
from mlxseek.cache.dspark import DSparkCache
from mlxseek.cache.mla import DSACache, LatentCache, QuantizedLatentCache
from mlxseek.cache.mtp import MTPCache
from mlxseek.cache.protocol import Capabilities, CacheStateError, implements
from mlxseek.cache.v4 import V4LayerCache
from mlxseek.cache.v41 import V41LayerCache
from mlxseek.serve import cache_state

CACHE_CLASSES = [LatentCache, QuantizedLatentCache, DSACache, V4LayerCache, V41LayerCache, MTPCache, DSparkCache,
                 BatchLatentCache, BatchDSACache, BatchV4Cache, RowBatchCache]
_MODELS: dict = {}


def load(name):
    if name not in _MODELS:
        _MODELS[name] = mlxseek.load(FIXTURES / name, dtype="float32", tokenizer=False)[0]
    return _MODELS[name]


def _classes_defined_in_cache() -> set[type]:
    """Every class in cache/ that is a cache (has update_and_fetch, offset or a block cache)."""
    out = set()
    for path in sorted(Path(cache_pkg.__file__).parent.glob("*.py")):
        mod = __import__(f"mlxseek.cache.{path.stem}", fromlist=["_"])
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ == mod.__name__ and hasattr(obj, "trim") and hasattr(obj, "is_trimmable"):
                out.add(obj)
    return out


def test_every_cache_class_implements_the_protocol():
    found = _classes_defined_in_cache()
    assert found == set(CACHE_CLASSES), f"cache classes changed: {sorted(c.__name__ for c in found)}"
    for cls in CACHE_CLASSES:
        assert implements(cls) == [], f"{cls.__name__} lacks {implements(cls)}"
        assert isinstance(cls.capabilities, Capabilities)


def test_dspark_ring_restores_where_taken():
    c = DSparkCache(stages=2, ring_size=4, trim_slack=2)
    for L in (3, 5):
        c.write([mx.random.normal((1, L, 8)) for _ in range(2)])
    c.main_offset = c.offset
    state = c.snapshot()
    fresh = DSparkCache(stages=2, ring_size=4, trim_slack=2)
    fresh.restore(state)
    assert (fresh.offset, fresh.start, fresh.main_offset) == (c.offset, c.start, 8)
    assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(fresh.ring(), c.ring()))
    c.write([mx.ones((1, 1, 8)) for _ in range(2)])  # the donor moves on; the state stays as taken
    assert state.offset == 8 and state.arrays["s0"].shape[1] == fresh.rows[0].shape[1]
    with pytest.raises(CacheStateError):
        c.cut_state(state, 7)  # a ring is valid only where it was taken
    with pytest.raises(CacheStateError):
        DSparkCache(stages=3, ring_size=4).restore(state)  # another drafter's ring


def test_serve_holds_no_cache_class_checks():
    serve = Path(cache_state.__file__).parent
    names = {c.__name__ for c in CACHE_CLASSES} | {"KVCache"}
    for path in serve.glob("*.py"):
        tree = ast.parse(path.read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not (used & names), f"{path.name} names cache classes {used & names}"
        assert not any(name in s for s in strings for name in names), f"{path.name} matches a class name string"


@pytest.mark.parametrize("make", [LatentCache, DSACache, lambda: QuantizedLatentCache(bits=8)])
def test_append_only_state_cuts_and_restores(make):
    c = make()
    B, L, R, Dr = 1, 40, 64, 8
    lat, rope = mx.random.normal((B, 1, L, R)), mx.random.normal((B, 1, L, Dr))
    c.update_and_fetch(lat, rope)
    if isinstance(c, DSACache):
        c.update_index_keys(mx.random.normal((B, 1, L, 16)))
    state = type(c).cut_state(c.snapshot(), 25)
    fresh = make()
    fresh.restore(state)
    assert fresh.offset == 25 and fresh.kind == c.kind
    full = c.snapshot()
    for name, a in fresh.snapshot().arrays.items():
        assert a.shape[2] == 25 and mx.array_equal(a, full.arrays[name][:, :, :25]).item(), name
    with pytest.raises(CacheStateError, match="cannot be restored into"):
        V4LayerCache(8, 0, False, False).restore(state)


# ---- V4: exact snapshots ---------------------------------------------------------------------------


def _v4_snapshot_then_continue(model, ids: mx.array, at: int) -> np.ndarray:
    """Prefill ids[:at], snapshot, restore into a fresh cache, feed the rest: the rest's logits."""
    cache = mlxseek.make_prompt_cache(model)
    model(ids[:, :at], cache=cache)
    snap = cache_state.snapshot(cache, at)
    assert snap.exact and snap.tokens == at
    restored = cache_state.restore(model, snap)
    assert restored is not None and restored[0].offset == at
    model(ids[:, at:], cache=cache)  # the donor keeps working and never touches the snapshot
    return np.array(model(ids[:, at:], cache=restored)[0])


@pytest.mark.parametrize("at", [100, 128, 131, 256, 299])  # inside a ratio-128 group, on boundaries, past
def test_v4_restored_cache_gives_the_cold_logits(at):
    g, model = golden("v4_pro"), load("v4_pro")
    ids = mx.array(g["prompt"])[None]  # 300 tokens
    cold = np.array(model(ids)[0, at:])
    warm = _v4_snapshot_then_continue(model, ids, at)
    diff = float(np.abs(warm - cold).max())
    print(f"v4_pro snapshot at {at}: max |restored - cold| = {diff:.3g}")
    assert diff < 1e-4


def test_v4_state_is_only_valid_where_it_was_taken():
    model = load("v4_flash")
    cache = model.make_cache()
    model(mx.array([list(range(2, 70))]), cache=cache)
    state = cache[1].snapshot()
    assert type(cache[1]).cut_state(state, 68) is state
    with pytest.raises(CacheStateError, match="cannot be cut to 64"):
        type(cache[1]).cut_state(state, 64)
    snap = cache_state.snapshot(cache, 68)
    with pytest.raises(CacheStateError, match="not append-only"):
        cache_state.cut(snap, 64)
    wrong = model.make_cache()[0]  # a layer without a compressor cannot take a compressed layer's state
    with pytest.raises(CacheStateError, match="lacks"):
        wrong.restore(state)


def test_v4_snapshot_packs_its_arrays_into_a_few_buffers():
    model = load("v4_pro")
    cache = model.make_cache()
    model(mx.array(golden("v4_pro")["prompt"])[None], cache=cache)
    snap = cache_state.snapshot(cache, cache[0].offset)
    arrays = snap.arrays()
    assert len(arrays) > 10
    assert len({a.dtype for a in arrays}) <= 2
    assert snap.nbytes == sum(a.nbytes for a in arrays)


@pytest.mark.parametrize("name", ["v4_flash", "v32"])
def test_batch_cache_state_round_trips(name):
    """V4's rows of solo caches and V3.2's shared DSA buffer (latent, rope key, indexer keys) alike."""
    model = load(name)
    from mlxseek.cache.batch import make_batch_cache

    batch = make_batch_cache(model)
    for n in (3, 70):
        solo = model.make_cache()
        model(mx.array([list(range(10, 10 + n))]), cache=solo)
        for bc, c in zip(batch, solo):
            bc.insert(c)
    fresh = make_batch_cache(model)
    for bc, f in zip(batch, fresh):
        f.restore(bc.snapshot())
        assert f.offset.tolist() == bc.offset.tolist() == [3, 70]
        for a, b in zip(f.snapshot().arrays.values(), bc.snapshot().arrays.values()):
            assert mx.array_equal(a, b).item()


def test_a_dsa_row_extracted_from_the_batch_equals_its_solo_cache():
    model = load("v32")
    from mlxseek.cache.batch import make_batch_cache

    batch, solos = make_batch_cache(model), []
    for n in (3, 70, 20):
        solo = model.make_cache()
        model(mx.array([list(range(10, 10 + n))]), cache=solo)
        solos.append(solo)
        for bc, c in zip(batch, solo):
            bc.insert(c)
    for bc in batch:
        bc.remove([0])
    for bc, c in zip(batch, solos[2]):
        row = bc.extract(1)
        assert row.kind == "dsa" and row.offset == c.offset == 20
        for k, a in c.snapshot().arrays.items():
            assert mx.array_equal(row.snapshot().arrays[k], a).item(), k
    with pytest.raises(mlxseek.errors.BatchingError, match="'latent' row cannot join"):
        batch[0].insert(load("v3").make_cache()[0])


def test_v4_snapshots_of_one_conversation_share_their_compressed_rows():
    g, model = golden("v4_pro"), load("v4_pro")
    ids = mx.array(g["prompt"])[None]  # 300 tokens
    cache = mlxseek.make_prompt_cache(model)
    model(ids[:, :150], cache=cache)
    first = cache_state.snapshot(cache, 150)
    model(ids[:, 150:290], cache=cache)
    alone = cache_state.snapshot(cache, 290)
    shared = cache_state.snapshot(cache, 290, like=first)
    assert any(shared.heads) and sum(a.nbytes for a in shared.own_arrays()) < alone.nbytes
    whole = cache_state.materialize(shared)
    for a, b in zip(whole.entries, alone.entries):
        assert sorted(a.arrays) == sorted(b.arrays)
        assert all(mx.array_equal(a.arrays[k], b.arrays[k]).item() for k in a.arrays)
    cold = np.array(model(ids)[0, 290:])
    warm = np.array(model(ids[:, 290:], cache=cache_state.restore(model, shared))[0])
    assert float(np.abs(warm - cold).max()) < 1e-4

"""Per-expert loop (slow reference) vs gather_mm / gather_qmm (fast path), sorted and unsorted."""

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxseek.layers import experts as experts_mod
from mlxseek.layers.experts import RoutedExperts


def make(quantized: bool, D=128, I=64, E=8):
    mx.random.seed(0)
    ex = RoutedExperts(D, I, E)
    if quantized:
        nn.quantize(ex, group_size=64, bits=4)
    return ex


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("tokens", [1, 5, 40])  # 40 tokens x 4 = 160 rows takes the sorted path
def test_gather_matches_per_expert_loop(quantized, tokens):
    ex = make(quantized)
    x = mx.random.normal((1, tokens, 128))
    inds = mx.random.randint(0, 8, (1, tokens, 4)).astype(mx.uint32)
    fast, slow = ex(x, inds), ex.reference(x, inds)
    assert fast.shape == (1, tokens, 4, 128)
    assert float(mx.abs(fast - slow).max()) < 1e-4


def test_sorted_and_unsorted_paths_agree(monkeypatch):
    ex = make(True)
    x = mx.random.normal((2, 20, 128))
    inds = mx.random.randint(0, 8, (2, 20, 4)).astype(mx.uint32)
    monkeypatch.setattr(experts_mod, "SORT_THRESHOLD", 10**9)
    unsorted = ex(x, inds)
    monkeypatch.setattr(experts_mod, "SORT_THRESHOLD", 1)
    assert float(mx.abs(ex(x, inds) - unsorted).max()) < 1e-5


@pytest.mark.parametrize("tokens", [5, 40])  # unsorted and sorted paths
def test_route_weights_go_before_the_rounded_down_projection(tokens):
    """V4.1 with rounded matmul inputs (DeepSeek's FP8 GEMMs): the route weight scales the activation before
    down_proj's input is rounded. Fast path = per-expert loop; without rounding, weighting before = after."""
    from functools import partial

    from mlxseek.layers.v41.fake_quant import fake_fp8

    ex = make(False)
    x = mx.random.normal((1, tokens, 128))
    inds = mx.argsort(mx.random.uniform(shape=(1, tokens, 8)), axis=-1)[..., :4].astype(mx.uint32)  # distinct
    w = mx.random.uniform(shape=(1, tokens, 4))
    after = ex(x, inds) * w[..., None]
    assert float(mx.abs(ex(x, inds, w) - after).max()) < 1e-4
    ex.input_rounding = partial(fake_fp8, block=32)
    fast, slow = ex(x, inds, w), ex.reference(x, inds, w)
    assert float(mx.abs(fast - slow).max()) < 1e-4
    assert float(mx.abs(fast - after).max()) > 1e-3  # the rounding is applied


def test_moe_layer_reference_path(tmp_path):
    from conftest import FIXTURES

    import mlxseek

    model, _ = mlxseek.load(FIXTURES / "v3")
    moe = model.layers[1].mlp
    x = mx.random.normal((1, 7, model.config.hidden_size))
    assert float(mx.abs(moe(x) - moe(x, reference=True)).max()) < 1e-4

"""Calibration's cost, counted rather than timed: one decoder layer resident at a time, a layer read without a
second copy of its weights (raw source bytes, float32 temporaries, an expert stack's parts), and routed experts
run as one matmul per expert (the recorder's grouped matmul equals SwitchLinear's gather_mm)."""

from __future__ import annotations

import gc
import sysconfig
import weakref
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.switch_layers import SwitchLinear
from mlx.utils import tree_flatten

from mlxseek.checkpoint.keymap import build_plan
from mlxseek.config import ModelConfig
from mlxseek.convert import resident
from mlxseek.convert.calibrate import ModuleStats, _SwitchRecorder, collect, read_calibration
from mlxseek.convert.reader import SourceReader
from mlxseek.convert.stream import Source
from mlxseek.models import build_model

FP8 = Path(__file__).parent / "fixtures" / "trained_v3_fp8"  # official FP8 layout: per-expert keys, block scales


def _source() -> Source:
    cfg = ModelConfig.from_file(FP8)
    reader = SourceReader(FP8)
    return Source(reader, cfg, build_plan(reader.keys(), cfg), mx.float32)


def _nbytes(module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def test_each_layer_is_dropped_before_the_next_is_read(tmp_path):
    src = _source()
    text = tmp_path / "calibration.txt"
    text.write_text((Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text())
    batches = read_calibration(text, FP8, ctx=32, limit=64, vocab_size=src.cfg.vocab_size)
    seen: list[weakref.ref] = []

    def on_layer(prefix, module, stats):
        gc.collect()
        alive = [r for r in seen if r() is not None]
        assert not alive, f"{len(alive)} earlier layer(s) still resident while {prefix!r} is"
        if prefix.startswith("model.layers."):
            seen.append(weakref.ref(module))

    collect(src, batches, on_layer=on_layer)
    assert len(seen) == src.cfg.num_hidden_layers


def test_reading_a_moe_layer_holds_it_once_plus_one_expert():
    src = _source()
    i = next(i for i in range(src.cfg.num_hidden_layers) if src.cfg.is_moe_layer(i))
    layer = build_model(src.cfg, with_mtp=False).model.layers[i]
    mx.synchronize()
    gc.collect()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    resident.load_resident(layer, src, f"model.layers.{i}.")
    held = _nbytes(layer)
    extra = mx.get_peak_memory() - base - held
    # What a few source tensors cost while one is read and dequantized (its raw bytes, block scales and float32
    # temporaries; an expert matrix is the largest here) and the allocator's slack: about 5 here. Before, the
    # layer's raw bytes, float32 temporaries and every expert stack's parts were alive at once: about 25.
    expert = 4 * src.cfg.moe_intermediate_size * src.cfg.hidden_size
    assert held > 24 * expert
    assert extra <= 8 * expert, (extra, held, expert)


@pytest.mark.parametrize("sort", [False, True], ids=["broadcast", "sorted"])
def test_switch_recorder_output_equals_gather_mm(sort):
    """Both call shapes of RoutedExperts: x (T, 1, 1, I) with indices (T, K), or sorted rows (T*K, 1, I)."""
    mx.random.seed(3)
    lin = SwitchLinear(64, 48, 8, bias=True)
    lin.bias = mx.random.normal(lin.bias.shape)
    T, K = 40, 2
    inds = mx.random.randint(0, 6, (T, K))  # experts 6 and 7 get no row
    x = mx.random.normal((T, 1, 1, 64))
    if sort:
        x, inds = mx.random.normal((T * K, 1, 64)), mx.sort(inds.reshape(-1))
    stats = ModuleStats(np.zeros(8, np.int64), np.zeros((8, 64)))
    got = _SwitchRecorder(lin, stats)(x, inds, sorted_indices=sort)
    want = lin(x, inds, sorted_indices=sort)
    assert got.shape == want.shape
    assert mx.abs(got - want).max().item() <= 1e-5 * mx.abs(want).max().item()
    assert stats.count.sum() == T * K and stats.count[6:].sum() == 0

"""convert/export.py, the inverse of the key map: mlxseek parameters -> the official HF DeepSeek layout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import FIXTURES

import mlxseek
from mlxseek.checkpoint.store import WeightStore
from mlxseek.config import ModelConfig
from mlxseek.convert.export import (
    to_bf16_official,
    to_fp8_official,
    to_official,
    write_official,
)
from mlxseek.errors import ConversionError


@pytest.mark.parametrize("name", ["v3", "trained_v3"])
def test_export_reproduces_the_official_checkpoint_bit_for_bit(name):
    """Load (stack experts, split kv_b, move MTP) then export: every key, shape and bf16 value comes back."""
    folder = FIXTURES / name
    cfg = ModelConfig.from_file(folder)
    model = mlxseek.load_model(folder)
    exported = to_bf16_official(to_official(model, cfg))
    store = WeightStore(folder)
    assert sorted(exported) == sorted(store.keys())
    for key, value in exported.items():
        src = store.get(key)
        assert value.dtype == src.dtype, key
        assert mx.array_equal(value, src).item(), key


def test_fp8_export_round_trips_through_the_loader(tmp_path):
    folder = FIXTURES / "trained_v3"
    cfg = ModelConfig.from_file(folder)
    model = mlxseek.load_model(folder)
    raw = ModelConfig.from_file(folder).to_dict()
    raw["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    write_official(tmp_path / "fp8", to_fp8_official(to_official(model, cfg), (128, 128)), raw)
    store = WeightStore(tmp_path / "fp8")
    assert store.dtype("model.layers.1.mlp.experts.3.up_proj.weight") == "F8_E4M3"
    assert store.dtype("model.layers.1.mlp.experts.3.up_proj.weight_scale_inv") == "F32"
    assert store.dtype("model.embed_tokens.weight") == "BF16"
    back = mlxseek.load_model(tmp_path / "fp8")
    w, w8 = model.model.layers[1].mlp.switch_mlp.up_proj.weight, back.model.layers[1].mlp.switch_mlp.up_proj.weight
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 per element (plus subnormals near 0)
    err = mx.abs(w - w8) / (mx.abs(w) + mx.abs(w).max() * 2**-9)
    assert err.max().item() <= 2**-4 + 1e-6


def test_quantized_models_are_refused():
    cfg = ModelConfig.from_file(FIXTURES / "trained_v3")
    model = mlxseek.load_model(FIXTURES / "trained_v3")
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda p, m: isinstance(m, nn.Linear) and p == "lm_head")
    with pytest.raises(ConversionError, match="cannot export a quantized model"):
        to_official(model, cfg)


@pytest.mark.parametrize("name", ["v4_flash", "v4_pro"])
def test_v4_export_reproduces_the_official_checkpoint_bit_for_bit(name):
    """V4 (April layout, MTP head): every official key, dtype (mHC/sinks/ape/bias float32, tid2eid int32)
    and value comes back from the loaded model."""
    from mlxseek.convert.export_v4 import to_official_v4

    store = WeightStore(FIXTURES / name)
    exported = to_official_v4(mlxseek.load_model(FIXTURES / name, dtype="float32"))
    assert sorted(exported) == sorted(store.keys())
    for key, value in exported.items():
        src = store.get(key)
        assert value.dtype == src.dtype and mx.array_equal(value, src).item(), key


def test_shard_groups_split_where_asked_and_must_cover_every_key(tmp_path):
    tensors = {"a": mx.ones((2,)), "b": mx.zeros((3,)), "c": mx.ones((1,))}
    write_official(tmp_path / "g", tensors, {"model_type": "x"}, groups=[["a", "c"], ["b"]])
    assert sorted(WeightStore(tmp_path / "g").keys()) == ["a", "b", "c"]
    import json

    weight_map = json.loads((tmp_path / "g" / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map == {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                          "c": "model-00001-of-00002.safetensors"}
    with pytest.raises(ConversionError, match="every tensor exactly once"):
        write_official(tmp_path / "h", tensors, {"model_type": "x"}, groups=[["a"], ["b"]])


def test_v4_export_names_every_parameter_or_refuses():
    from mlxseek.convert.export_v4 import official_v4_name

    assert official_v4_name("model.layers.2.mlp.switch_mlp.down_proj.weight") == "layers.2.ffn.experts.{e}.w2.weight"
    assert official_v4_name("mtp.block.attn_hc.fn") == "mtp.0.hc_attn_fn"
    with pytest.raises(ConversionError, match="dspark.main_proj.weight"):
        official_v4_name("dspark.main_proj.weight")

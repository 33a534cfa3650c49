"""Loading real checkpoint layouts strictly, and failing with named, typed errors on bad input."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, golden
from mlx.utils import tree_map
from st_io import edit_index, read_float32, rewrite

import mlxseek
from mlxseek.errors import (
    CheckpointError,
    ConfigError,
    MlxseekError,
    WeightMismatchError,
)
from mlxseek.layers.mtp import MultiTokenPrediction


def copy_fixture(name: str, dst: Path) -> Path:
    shutil.copytree(FIXTURES / name, dst)
    return dst


def test_mtp_layer_is_loaded_as_mtp_module():
    model, tok = mlxseek.load(FIXTURES / "v3")
    assert tok is None  # the fixtures ship no tokenizer files
    assert isinstance(model.mtp, MultiTokenPrediction)
    n = model.config.num_hidden_layers
    assert len(model.layers) == n  # not mistaken for a decoder layer
    # The MTP block's weights are the checkpoint's model.layers.{n}.* tensors, exactly.
    idx = json.loads((FIXTURES / "v3" / "model.safetensors.index.json").read_text())["weight_map"]
    key = f"model.layers.{n}.eh_proj.weight"
    ref = read_float32(FIXTURES / "v3" / idx[key])[key]
    np.testing.assert_array_equal(np.array(model.mtp.eh_proj.weight), ref)


def test_mtp_logits_match_reference_if_recorded():
    g = golden("v3")
    if "mtp_logits" not in g:
        pytest.skip("fixture has no recorded MTP reference")
    model, _ = mlxseek.load(FIXTURES / "v3")
    x = mx.array(g["prompt"])[None]
    h = model.trunk(x)
    logits, _ = model.mtp_forward(h[:, :-1], x[:, 1:])
    assert float(np.abs(np.array(logits[0]) - g["mtp_logits"]).max()) < 1e-4


def test_mlx_community_folder_loads_unchanged(mlx_community_v3):
    """A 4-bit folder written by mlx_lm.convert loads and matches mlx_lm.load on it (both float32)."""
    from mlx_lm import load as mlx_lm_load

    out = mlx_community_v3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4
    ours, _ = mlxseek.load(out, dtype="float32", cpu_layout=False)
    ref, _ = mlx_lm_load(str(out))
    ref.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                        ref.parameters()))
    x = mx.array(golden("v3")["prompt"])[None]
    diff = float(mx.abs(ours(x) - ref(x)).max())
    print(f"mlx-community 4-bit folder: max |mlxseek - mlx_lm.load| = {diff:.2e}")
    assert diff < 1e-4
    assert "mtp" not in ours  # mlx-lm dropped it, so the model is built without it


def test_missing_shard_named(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: missing shard"):
        mlxseek.load(d)


def test_truncated_shard_named(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    f = d / "model-00001-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: truncated"):
        mlxseek.load(d)


def test_bad_header_json_named(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    f = d / "model-00001-of-00002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8] = ord("#")  # first header byte is no longer '{'
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: safetensors header is not valid JSON"):
        mlxseek.load(d)


def test_shape_not_matching_config_named(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["kv_lora_rank"] = cfg["kv_lora_rank"] * 2
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightMismatchError, match=r"shape mismatch.*kv_a_proj_with_mqa\.weight"):
        mlxseek.load(d)


def test_unknown_model_type_named(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: unsupported model_type 'qwen2'"):
        mlxseek.load(d)


def test_missing_weight_scale_inv_named(tmp_path):
    d = copy_fixture("v3_fp8", tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"
    rewrite(d / index["weight_map"][victim], drop=[victim])
    edit_index(d, drop=[victim])
    with pytest.raises(CheckpointError, match=r"q_a_proj\.weight is float8 but .*q_a_proj\.weight_scale_inv is missing"):
        mlxseek.load(d)


def test_unused_and_missing_keys_listed(tmp_path):
    d = copy_fixture("v3", tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    rename = {"lm_head.weight": "model.layers.0.self_attn.extra_thing.weight"}
    rewrite(d / index["weight_map"]["lm_head.weight"], rename=rename)
    edit_index(d, rename=rename)
    with pytest.raises(WeightMismatchError) as e:
        mlxseek.load(d)
    assert "missing from the checkpoint (1): lm_head.weight" in str(e.value)
    assert "not used by the model (1): model.layers.0.self_attn.extra_thing.weight" in str(e.value)


def test_not_a_folder():
    with pytest.raises(MlxseekError, match="not a folder"):
        mlxseek.load("/nonexistent/deepseek")


def test_dtype_choice():
    model, _ = mlxseek.load(FIXTURES / "v3", dtype="bfloat16")
    assert model.lm_head.weight.dtype == mx.bfloat16
    assert model.layers[1].mlp.gate.weight.dtype == mx.float32  # the router stays float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        mlxseek.load(FIXTURES / "v3", dtype="int8")

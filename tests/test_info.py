"""`mlxseek info DIR`: counts from safetensors headers, checked against an independent count of the stored
tensors, against `estimate` (which never sees the tensors), and on quantized folders."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from mlxseek.cli import main
from mlxseek.convert.convert import convert
from mlxseek.errors import CheckpointError, ConfigError
from mlxseek.tools.estimate import estimate
from mlxseek.tools.info import info

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["v3", "v3_fp8", "v2_lite"]
BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def count(folder: Path) -> dict:
    """Element counts straight from the shards: main model, MTP layer (model.layers.{N}), and bytes."""
    n_layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    out = {"main": 0, "mtp": 0, "bytes": 0}
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "np") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                n = math.prod(sl.get_shape())
                out["bytes"] += n * BYTES[sl.get_dtype()]
                if not k.endswith("_scale_inv"):
                    out["mtp" if k.startswith(f"model.layers.{n_layers}.") else "main"] += n
    return out


@pytest.mark.parametrize("name", NAMES)
def test_counts_equal_the_stored_tensors(name):
    folder = FIXTURES / name
    i, ref = info(folder), count(folder)
    assert i["total_params"] == ref["main"]
    assert i["stored_params"] == ref["main"] + ref["mtp"]
    assert i["tensor_bytes"] == ref["bytes"]
    assert i["bytes_on_disk"] == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert i["layers"]["total"] == 2 and i["layers"]["mtp_in_checkpoint"] == (ref["mtp"] > 0)


@pytest.mark.parametrize("name", NAMES)
def test_agrees_with_estimate_from_config_alone(name):
    i, e = info(FIXTURES / name), estimate(FIXTURES / name, recipe="native")
    for key in ("total_params", "active_params", "mtp_params"):
        assert i[key] == e[key], key
    assert i["bytes_per_token"] == e["weight_bytes_per_token"]
    assert i["active_params"] < i["total_params"]


def _mlx_community_folder(src: Path, dst: Path, overrides: dict) -> None:
    """An mlx-lm style 4-bit folder: experts stacked into switch_mlp, linear weights packed with mx.quantize."""
    weights = {k: v.astype(mx.float32) for shard in src.glob("*.safetensors") for k, v in mx.load(str(shard)).items()}
    stacked = {}
    for k in sorted(weights):
        if ".mlp.experts." in k:
            pre, rest = k.split(".mlp.experts.")
            proj = rest.split(".", 1)[1]
            stacked.setdefault(f"{pre}.mlp.switch_mlp.{proj}", []).append(weights.pop(k))
    weights.update({k: mx.stack(v) for k, v in stacked.items()})
    out = {}
    for k, w in weights.items():
        module = k[: -len(".weight")]
        bits = overrides.get(module, {}).get("bits", 4)
        # kv_b_proj stays float: at this fixture's width (qk_nope_head_dim 32) the loader cannot requantize
        # its split halves at group 64, and info checks what load checks.
        if (k.endswith(".weight") and w.ndim >= 2 and ".mlp.gate." not in k and w.shape[-1] % 64 == 0
                and "kv_b_proj" not in k):
            out[k], out[f"{module}.scales"], out[f"{module}.biases"] = mx.quantize(w, group_size=64, bits=bits)
        else:
            out[k] = w.astype(mx.bfloat16)
    dst.mkdir()
    mx.save_safetensors(str(dst / "model.safetensors"), out)
    config = json.loads((src / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4, **overrides}
    (dst / "config.json").write_text(json.dumps(config))


def test_quantized_folder_counts_packed_values(tmp_path):
    override = {"model.layers.0.mlp.gate_proj": {"group_size": 64, "bits": 8}}
    _mlx_community_folder(FIXTURES / "v2_lite", tmp_path / "q4", override)
    q, ref = info(tmp_path / "q4"), info(FIXTURES / "v2_lite")
    assert q["total_params"] == ref["total_params"] and q["active_params"] == ref["active_params"]
    assert q["bytes_per_token"] < ref["bytes_per_token"] / 2
    assert q["quantization"] == {"format": "mlx", "mode": "affine", "bits": 4, "group_size": 64, "recipe": None,
                                 "overrides": {"8-bit": 1}, "layout": "transposed", "calibrated": False,
                                 "target_bpw": None}


def test_converted_folder_matches_estimate(tmp_path):
    convert(hf_path=FIXTURES / "v3_fp8", mlx_path=tmp_path / "out", quantize=True, q_bits=4, q_group_size=64,
            recipe="mixed", dtype="bfloat16", quiet=True)
    i, e = info(tmp_path / "out"), estimate(FIXTURES / "v3_fp8", recipe="mixed", q_bits=4, q_group_size=64)
    for key in ("total_params", "active_params", "mtp_params"):
        assert i[key] == e[key], key
    assert i["tensor_bytes"] == e["size_bytes"]
    assert i["bytes_per_token"] == e["weight_bytes_per_token"]
    assert i["quantization"]["recipe"] == "mixed"


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.json: not found"):
        info(tmp_path)
    shutil.copy(FIXTURES / "v3" / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no \\*.safetensors files"):
        info(tmp_path)
    mx.save_safetensors(str(tmp_path / "model.safetensors"),
                        {"lm_head.weight": mx.zeros((4, 2), dtype=mx.uint32), "lm_head.scales": mx.zeros((4, 1))})
    with pytest.raises(CheckpointError, match="lm_head.weight is packed .* no quantization bits"):
        info(tmp_path)


def test_cli():
    runner = CliRunner()
    r = runner.invoke(main, ["info", str(FIXTURES / "v3_fp8"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == info(FIXTURES / "v3_fp8")
    r = runner.invoke(main, ["info", str(FIXTURES / "v3_fp8")])
    assert r.exit_code == 0 and "1 dense, 1 MoE), MTP 1" in r.output and "FP8 e4m3" in r.output
    r = runner.invoke(main, ["info", "no/such/dir"])
    assert r.exit_code == 1 and "no/such/dir: not found" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_subprocess():
    script = Path(sys.executable).with_name("mlxseek")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from mlxseek.cli import main; main()"]
    out = subprocess.run(cmd + ["info", str(FIXTURES / "v2_lite")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "DeepseekV2ForCausalLM" in out.stdout and "none (bfloat16)" in out.stdout

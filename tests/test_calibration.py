"""Calibrated conversion: streaming statistics, importance-weighted quantization, bit allocation to a target."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import mlxseek
from mlxseek.checkpoint.keymap import build_plan
from mlxseek.cli import main
from mlxseek.config import ModelConfig
from mlxseek.convert.calibrate import collect, collect_in_memory, read_calibration
from mlxseek.convert.reader import SourceReader
from mlxseek.convert.stream import Source
from mlxseek.convert import weighted
from mlxseek.convert.weighted import pack, pack_mx, quantize_weighted, quantize_weighted_reference
from mlxseek.errors import ConversionError

FIX = Path(__file__).parent / "fixtures"
TRAINED, TRAINED_FP8 = FIX / "trained_v3", FIX / "trained_v3_fp8"
# Standard-library sources the trained fixture's held-out text does not include (training.json lists those).
CALIBRATION_FILES = ("textwrap.py", "string.py", "json/decoder.py", "shlex.py", "fnmatch.py", "heapq.py")


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory) -> Path:
    std = Path(sysconfig.get_paths()["stdlib"])
    heldout = set(json.loads((TRAINED / "training.json").read_text())["heldout_files"])
    assert not heldout & set(CALIBRATION_FILES)
    path = tmp_path_factory.mktemp("calib") / "calibration.txt"
    path.write_text("".join((std / f).read_text() for f in CALIBRATION_FILES))
    return path


def _source(folder: Path) -> Source:
    cfg = ModelConfig.from_file(folder)
    reader = SourceReader(folder)
    return Source(reader, cfg, build_plan(reader.keys(), cfg), mx.float32)


def _convert(out: Path, **kw):
    return mlxseek.convert(hf_path=kw.pop("hf_path", TRAINED), mlx_path=out, quantize=True, quiet=True, force=True, **kw)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_matches_mlx_layout(bits):
    w = mx.random.normal((8, 128), key=mx.random.key(bits))
    packed, s, b = mx.quantize(w, group_size=32, bits=bits)
    codes = mx.dequantize(packed, mx.ones_like(s), mx.zeros_like(b), group_size=32, bits=bits)
    assert np.array_equal(pack(np.array(codes).astype(np.uint32), bits), np.array(packed))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_in_mlx_equals_numpy_pack(bits):
    codes = mx.random.randint(0, 2**bits, (5, 96), key=mx.random.key(bits)).astype(mx.uint32)
    assert np.array_equal(np.array(pack_mx(codes, bits)), pack(np.array(codes), bits))


@pytest.mark.parametrize("bits,group,dtype", [(2, 32, mx.float16), (3, 64, mx.bfloat16), (4, 64, mx.bfloat16),
                                              (5, 64, mx.bfloat16), (6, 128, mx.float32), (8, 64, mx.bfloat16)])
def test_blocked_weighted_search_equals_reference_bit_for_bit(monkeypatch, bits, group, dtype):
    # A block size that splits the 37 rows into full blocks and a ragged last one.
    monkeypatch.setattr(weighted, "BLOCK_ELEMENTS", 8 * 256)
    w = (0.02 * mx.random.normal((37, 256), key=mx.random.key(bits))).astype(dtype)
    imp = mx.random.uniform(shape=(256,), key=mx.random.key(7)) ** 4 * 10
    fast = quantize_weighted(w, imp, group_size=group, bits=bits, dtype=dtype)
    ref = quantize_weighted_reference(w, imp, group_size=group, bits=bits, dtype=dtype)
    for a, b in zip(fast, ref):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        assert mx.array_equal(a, b).item()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weighted_quantization_lowers_weighted_error_at_same_size(bits):
    w = (0.02 * mx.random.normal((64, 256), key=mx.random.key(1))).astype(mx.bfloat16)
    imp = mx.random.uniform(shape=(256,), key=mx.random.key(2)) ** 4 * 10
    ours = quantize_weighted(w, imp, group_size=64, bits=bits, dtype=mx.bfloat16)
    mlx = mx.quantize(w, group_size=64, bits=bits)
    assert [(a.shape, a.dtype) for a in ours] == [(a.shape, a.dtype) for a in mlx]

    def err(packed):
        d = mx.dequantize(*packed, group_size=64, bits=bits).astype(mx.float32) - w.astype(mx.float32)
        return float((imp * d * d).sum())

    assert err(ours) < 0.9 * err(mlx)


def test_calibrated_3bit_same_bytes_as_uniform_and_loads(tmp_path, calib_text):
    uni = _convert(tmp_path / "u3", q_bits=3, drop_mtp=True)
    cal = _convert(tmp_path / "c3", q_bits=3, drop_mtp=True, calibration=calib_text, calibration_tokens=2048)
    assert cal.output_bytes == uni.output_bytes
    shapes = lambda d: {k: (str(v.dtype), v.shape) for k, v in mx.load(str(next(d.glob("*.safetensors")))).items()}
    assert shapes(cal.path) == shapes(uni.path)
    assert json.loads((cal.path / "config.json").read_text())["quantization"] == \
        json.loads((uni.path / "config.json").read_text())["quantization"]
    report = json.loads((cal.path / "convert_report.json").read_text())
    assert report["calibration"]["tokens"] <= 2048 and report["calibration"]["cold_experts"] >= 0
    assert any("weighted_rel_rms_err" in t for t in report["tensors"].values())
    prompt = mx.array([[0, 5, 9, 77, 301]])
    ours, _ = mlxseek.load(cal.path)
    from mlx_lm import load as mlx_lm_load

    theirs, _ = mlx_lm_load(str(cal.path))
    a, b = ours(prompt).astype(mx.float32), theirs(prompt).astype(mx.float32)
    assert bool(mx.all(mx.isfinite(a))) and mx.abs(a - b).max().item() < 0.1 * mx.abs(a).max().item()


def test_expert_counts_sum_to_tokens_times_top_k(calib_text):
    src = _source(TRAINED)
    batches = read_calibration(calib_text, TRAINED, ctx=128, limit=1024, vocab_size=src.cfg.vocab_size)
    stats = collect(src, batches)
    tokens = sum(b.size for b in batches)
    moe = [i for i in range(src.cfg.num_hidden_layers) if src.cfg.is_moe_layer(i)]
    assert moe and stats.tokens == tokens
    for i in moe:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            counts = stats.modules[f"model.layers.{i}.mlp.switch_mlp.{proj}"].count
            assert counts.shape == (src.cfg.n_routed_experts,)
            assert counts.sum() == tokens * src.cfg.num_experts_per_tok
        assert stats.modules[f"model.layers.{i}.mlp.shared_experts.gate_proj"].count[0] == tokens
    assert stats.modules["lm_head"].count[0] == tokens


def test_streaming_statistics_equal_in_memory(calib_text):
    src = _source(TRAINED_FP8)  # FP8 blocks dequantized by the same key map in both runs
    batches = read_calibration(calib_text, TRAINED_FP8, ctx=64, limit=512, vocab_size=src.cfg.vocab_size,
                               batch_tokens=128)
    assert len(batches) > 1
    spilled = collect(src, batches, ram_bytes=0)  # activations between layers on disk
    in_ram = collect(src, batches)
    whole = collect_in_memory(src, batches)
    assert set(spilled.modules) == set(whole.modules) == set(in_ram.modules)
    for path, s in whole.modules.items():
        for other in (spilled, in_ram):
            assert np.array_equal(other.modules[path].count, s.count), path
            np.testing.assert_allclose(other.modules[path].sumsq, s.sumsq, rtol=1e-6, err_msg=path)


def test_cold_experts_fall_back_to_weight_only(tmp_path, calib_text):
    res = _convert(tmp_path / "few", q_bits=4, calibration=calib_text, calibration_tokens=4)
    cal = json.loads((res.path / "convert_report.json").read_text())["calibration"]
    assert cal["tokens"] <= 4 and cal["cold_experts"] > 0
    assert "model.embed_tokens" in cal["weight_only_modules"]
    mlxseek.load(res.path)


@pytest.mark.parametrize("folder,target", [(TRAINED, 2.5), (TRAINED, 3.0), (TRAINED_FP8, 3.5)])
def test_target_bpw_lands_within_005(tmp_path, calib_text, folder, target):
    res = _convert(tmp_path / "t", hf_path=folder, calibration=calib_text, calibration_tokens=1024, target_bpw=target)
    assert target - 0.05 <= res.bits_per_weight <= target
    from mlxseek.tools.info import info as info_of

    info = info_of(res.path)
    assert abs(info["bits_per_weight"] - res.bits_per_weight) < 0.05
    assert info["quantization"]["calibrated"] and info["quantization"]["target_bpw"] == target
    assert len(info["quantization"]["overrides"]) > 1  # the mix `mlxseek info` prints
    q = json.loads((res.path / "config.json").read_text())["quantization"]
    report = json.loads((res.path / "convert_report.json").read_text())["allocation"]
    for path, choice in report["modules"].items():  # every module's choice recorded in config.json
        params = q.get(path, {"bits": q["bits"], "group_size": q["group_size"]})
        assert (params["bits"], params["group_size"]) == (choice["bits"], choice["group_size"])
    assert len({(m["bits"], m["group_size"]) for m in report["modules"].values()}) > 1
    mlxseek.load(res.path)


def test_target_bpw_below_smallest_mix_names_the_range(tmp_path, calib_text):
    with pytest.raises(ConversionError, match=r"--target-bpw 1.5: below the smallest mix .* choose between"):
        _convert(tmp_path / "x", calibration=calib_text, calibration_tokens=64, target_bpw=1.5)


def test_cli_calibration_options(tmp_path, calib_text):
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["convert", "--hf-path", str(TRAINED), "--mlx-path", str(out), "-q",
                                  "--calibration", str(calib_text), "--calibration-tokens", "256",
                                  "--target-bpw", "3.0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "allocation" in json.loads((out / "convert_report.json").read_text())
    r = CliRunner().invoke(main, ["convert", "--hf-path", str(TRAINED), "--mlx-path", str(tmp_path / "y"), "-q",
                                  "--target-bpw", "3.0"])
    assert r.exit_code != 0 and "--target-bpw: allocating bits needs measured importance" in r.output
    r = CliRunner().invoke(main, ["convert", "--hf-path", str(TRAINED), "--mlx-path", str(tmp_path / "z"), "-q",
                                  "--calibration", str(tmp_path / "missing.txt")])
    assert r.exit_code != 0 and "missing.txt: not a file" in r.output


def test_fit_fills_the_machine_and_estimate_agrees(tmp_path, calib_text):
    from mlxseek.tools.estimate import estimate
    from mlxseek.tools.fit import estimate_auto
    from mlxseek.tools.machines import machine

    m = machine("m4-16")
    e4 = estimate(TRAINED, q_bits=4, machine=m.name, context=1 << 20)
    per_token = e4["kv_bytes_at_context"] / (1 << 20)  # the MTP layer's cache included
    # A context whose cache leaves the tiny model ~3.2 bits/weight of the wired limit.
    weights = 3.2 * e4["size_bytes"] / e4["bits_per_weight"]
    context = int((m.wired_limit_bytes - weights) // per_token)
    auto = estimate_auto(TRAINED, machine=m.name, context=context)
    assert 3.1 < auto["bits_per_weight"] < 3.3 and auto["fits"]
    out = tmp_path / "fit"
    r = CliRunner().invoke(main, ["convert", "--hf-path", str(TRAINED), "--mlx-path", str(out), "-q",
                                  "--calibration", str(calib_text), "--calibration-tokens", "512",
                                  "--fit", m.name, "--context", str(context)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "convert_report.json").read_text())
    assert report["allocation"]["target_bpw"] == pytest.approx(auto["bits_per_weight"])
    assert report["output_bytes"] + auto["kv_bytes_at_context"] <= m.wired_limit_bytes
    assert report["bits_per_weight"] == pytest.approx(auto["bits_per_weight"], abs=0.05)


def test_cli_subprocess_prints_calibration_and_allocation(tmp_path, calib_text):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "mlxseek"
    proc = subprocess.run([str(exe), "convert", "--hf-path", str(TRAINED), "--mlx-path", str(tmp_path / "o"), "-q",
                           "--calibration", str(calib_text), "--calibration-tokens", "256", "--target-bpw", "3.5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    import re

    assert "calibrated on 256 tokens" in text and "weighted" in text
    assert re.search(r"--target-bpw 3\.5: 3\.(4[5-9]|50)\d bits/weight", text), text


def test_calibration_refuses_what_it_cannot_weight(tmp_path, calib_text):
    with pytest.raises(ConversionError, match="--calibration with --layout kmajor: importance is per input column"):
        _convert(tmp_path / "k", calibration=calib_text, layout="kmajor")
    with pytest.raises(ConversionError, match="--calibration: only quantized weights are calibrated; add -q"):
        mlxseek.convert(hf_path=TRAINED, mlx_path=tmp_path / "f", calibration=calib_text)
    assert not (tmp_path / "k").exists() and not (tmp_path / "f").exists()


def test_estimate_q_bits_auto_cli():
    r = CliRunner().invoke(main, ["estimate", "--config", str(TRAINED), "--q-bits", "auto", "--machine", "m4-16",
                                  "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["q_bits"] == "auto" and e["fits"] and e["bits_per_weight"] > 8  # a tiny model: the largest option
    r = CliRunner().invoke(main, ["estimate", "--config", str(TRAINED), "--q-bits", "auto"])
    assert r.exit_code != 0 and "--q-bits auto: sizes the model to a machine; add --machine NAME" in r.output

"""Calibrated conversion of DeepSeek-V4 (mHC streams between layers, compressors, indexer, hash- and
score-routed MoE): official FP4 experts (`v4_fp4`) dequantized and requantized below 4 bits, bf16 (`v4_flash`)."""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from v4_calibration_kit import FIX, statistics, tensors, unpacked_source, weighted_errors, with_tokenizer

import mlxseek
from mlxseek.config import ModelConfig
from mlxseek.convert.calibrate import CALIBRATION_CTX, Statistics, attach, collect, read_calibration
from mlxseek.convert.calibrate_mhc import build_stored, collect_mhc
from mlxseek.convert.requantize import requantizes_fp4
from mlxseek.convert.resident import load_resident
from mlxseek.convert.stream import Source
from mlxseek.errors import ConversionError

TOKENS = 512  # one chunk: enough to route tokens to every expert of the 8-expert fixtures
GROUP = 32  # divides every input dim of the tiny V4s (64 hidden, 32 expert width), so nothing stays float


@pytest.fixture(scope="module", params=["v4_fp4", "v4_flash"])
def converted(request, tmp_path_factory):
    """(source folder, calibration text, uniform 3-bit folder, calibrated 3-bit folder)."""
    tmp = tmp_path_factory.mktemp(request.param)
    src = with_tokenizer(request.param, tmp / "hf")
    std = Path(sysconfig.get_paths()["stdlib"])
    text = tmp / "calibration.txt"
    text.write_text("".join((std / f).read_text() for f in ("textwrap.py", "string.py")))
    outs = []
    for name, cal in (("uniform", None), ("calibrated", text)):
        outs.append(mlxseek.convert(hf_path=src, mlx_path=tmp / name, quantize=True, q_bits=3, q_group_size=GROUP,
                                    quiet=True, calibration=cal, calibration_tokens=TOKENS).path)
    return src, text, *outs


def test_calibrated_3bit_is_uniform_3bit_byte_for_byte_in_size_and_loads(converted):
    src, _, uniform, calibrated = converted
    assert sum(f.stat().st_size for f in uniform.glob("*.safetensors")) == \
        sum(f.stat().st_size for f in calibrated.glob("*.safetensors"))
    u, c = tensors(uniform), tensors(calibrated)
    assert {k: (v.shape, v.dtype) for k, v in u.items()} == {k: (v.shape, v.dtype) for k, v in c.items()}
    qu = json.loads((uniform / "config.json").read_text())["quantization"]
    assert qu == json.loads((calibrated / "config.json").read_text())["quantization"]
    assert not [k for k, v in qu.items() if v is False], "every module quantized at group 32"
    # FP4 experts (v4_fp4) are requantized to 3-bit affine like the rest: no mxfp4 entry is left.
    assert all(v.get("mode", "affine") == "affine" for v in qu.values() if isinstance(v, dict))
    assert not any(k.endswith("switch_mlp.gate_proj") for k in qu)  # at the global 3 bits
    report = json.loads((calibrated / "convert_report.json").read_text())
    assert report["calibration"]["tokens"] == TOKENS
    ids = mx.array([[5, 17, 99, 3, 250, 7, 41, 8]])
    for folder in (uniform, calibrated):
        model, _ = mlxseek.load(folder, tokenizer=False)
        logits = model(ids)
        assert logits.shape == (1, 8, model.config.vocab_size) and mx.isfinite(logits).all().item()


def test_expert_token_counts_add_up_to_tokens_times_top_k(converted):
    src, text, _, _ = converted
    source, stats = statistics(src, text, TOKENS)
    cfg = source.cfg
    moe = [p for p in stats.modules if p.endswith("switch_mlp.gate_proj")]
    assert len(moe) == cfg.num_hidden_layers  # hash-routed layers and score-routed layers alike
    for path in moe:
        for proj in ("gate_proj", "up_proj"):
            counts = stats.modules[path.replace("gate_proj", proj)].count
            assert counts.sum() == stats.tokens * cfg.num_experts_per_tok, path
    # down_proj reads the experts' activations: the same routing, so the same counts
    for path in moe:
        assert np.array_equal(stats.modules[path].count, stats.modules[path.replace("gate_proj", "down_proj")].count)
    assert stats.modules["lm_head"].count[0] == stats.tokens


def test_weighted_error_is_never_above_uniform(converted):
    """Per tensor (and per expert of a stack), the importance-weighted error of the calibrated output is at most
    that of plain rounding: MLX's own scale and bias are among the search's candidates for every group."""
    src, text, uniform, calibrated = converted
    source, stats = statistics(src, text, TOKENS)
    errors = weighted_errors(source, stats, [uniform, calibrated])
    for (name, e), (plain, weighted) in errors.items():
        assert weighted <= plain * (1 + 1e-5), (name, e, plain, weighted)
    assert len(errors) > 100 and sum(w < p * 0.999 for p, w in errors.values()) > len(errors) // 2  # most improve


def test_fp4_experts_are_requantized_only_below_4_bits():
    assert requantizes_fp4(recipe="uniform", bits=3, target_bpw=None)
    assert not requantizes_fp4(recipe="uniform", bits=4, target_bpw=None)
    assert not requantizes_fp4(recipe=None, bits=None, target_bpw=None)
    assert requantizes_fp4(recipe="uniform", bits=4, target_bpw=3.0)
    assert not requantizes_fp4(recipe="uniform", bits=4, target_bpw=4.5)
    plan = unpacked_source(FIX / "v4_fp4").plan
    assert not plan.quantization and all(t.op != "stack_experts_mxfp4" for t in plan.targets)


def test_v41_is_refused_by_name_and_v4_is_not_run_as_mla():
    from v41_fixture import TINY

    cfg = ModelConfig.from_dict(TINY)
    with pytest.raises(ConversionError, match=r"--calibration: deepseek_v41 \(CSA2 layers reuse") as e:
        collect_mhc(Source(None, cfg, None, mx.float32), [np.zeros((1, 4), dtype=np.int32)])
    assert e.value.field == "calibration"
    v4 = ModelConfig.from_file(FIX / "v4_flash")
    with pytest.raises(ConversionError, match="calibrates with the 'mhc' layer runner, not 'mla'"):
        collect(Source(None, v4, None, mx.float32), [np.zeros((1, 4), dtype=np.int32)])


def test_target_bpw_on_v4_fp4_lands_on_target_and_loads(tmp_path):
    # The tiny V4's float parts (mHC, norms, sinks) leave ~7 bits/weight as its smallest mix. A target at or
    # above mxfp4's 4.25 keeps the FP4 experts as they are and allocates the other modules around them.
    src = with_tokenizer("v4_fp4", tmp_path / "hf")
    text = tmp_path / "calibration.txt"
    text.write_text((Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text())
    res = mlxseek.convert(hf_path=src, mlx_path=tmp_path / "o", quantize=True, q_group_size=GROUP, quiet=True,
                          calibration=text, calibration_tokens=TOKENS, target_bpw=8.0)
    assert 7.95 <= res.bits_per_weight <= 8.0
    report = json.loads((res.path / "convert_report.json").read_text())
    assert not any("switch_mlp" in p for p in report["allocation"]["modules"])
    quant = json.loads((res.path / "config.json").read_text())["quantization"]
    assert quant["model.layers.0.mlp.switch_mlp.gate_proj"]["mode"] == "mxfp4"
    assert len({(v["bits"], v["group_size"]) for v in quant.values() if isinstance(v, dict)}) > 2  # a real mix
    model, _ = mlxseek.load(res.path, tokenizer=False)
    assert mx.isfinite(model(mx.array([[1, 2, 3, 4]]))).all().item()


def test_streaming_statistics_equal_a_whole_model_forward(converted):
    """The layer-by-layer pass (streams carried between layers) records what one full V4 forward records."""
    src, text, _, _ = converted
    source, streamed = statistics(src, text, TOKENS)
    source = dataclasses.replace(source, dtype=mx.float32)  # the pass's compute dtype on the CPU backend
    model = build_stored(source)
    load_resident(model, source, "model.", relative=False)
    load_resident(model, source, "lm_head.", relative=False)
    whole = Statistics()
    for i, layer in enumerate(model.model.layers):
        attach(layer, f"model.layers.{i}.", whole)
    for b in read_calibration(text, src, ctx=CALIBRATION_CTX, limit=TOKENS, vocab_size=source.cfg.vocab_size):
        mx.eval(model(mx.array(b)))
    assert set(whole.modules) == {p for p in streamed.modules if p != "lm_head"}
    for p, s in whole.modules.items():
        assert np.array_equal(s.count, streamed.modules[p].count), p
        assert np.allclose(s.sumsq, streamed.modules[p].sumsq, rtol=1e-4, atol=1e-6), p


def test_v4_with_a_dspark_drafter_calibrates_and_loads(tmp_path):
    # V4-0731-style: the drafter is `dspark.*` (no MTP); it sees no recorded input, so it is weight-only.
    src = with_tokenizer("trained_dspark", tmp_path / "hf")
    text = tmp_path / "calibration.txt"
    text.write_text((Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text())
    res = mlxseek.convert(hf_path=src, mlx_path=tmp_path / "o", quantize=True, q_bits=3, q_group_size=GROUP,
                          quiet=True, calibration=text, calibration_tokens=TOKENS)
    cal = json.loads((res.path / "convert_report.json").read_text())["calibration"]
    assert "dspark.main_proj" in cal["weight_only_modules"] and cal["cold_experts"] == 0
    model, _ = mlxseek.load(res.path, tokenizer=False)
    assert hasattr(model, "dspark") and mx.isfinite(model(mx.array([[1, 2, 3, 4]]))).all().item()

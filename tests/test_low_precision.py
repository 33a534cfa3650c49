"""DeepSeek's low-precision checkpoint formats, read bit-exactly: FP8 e4m3 in 128x128 blocks with float32
or power-of-two (ue8m0) scales (V3, V3.1, V3.2), V4's e8m0 block scales, and V4's FP4 e2m1 experts,
imported as MLX mxfp4. Each weight is checked against a NumPy decoding of the raw shard bytes."""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from st_io import E4M3, read_raw

from mlxseek.checkpoint.fp4 import dequant_fp4
from mlxseek.errors import CheckpointError


def raw_tensors(folder):
    """{key: (safetensors dtype, shape, raw bytes)} for every shard, read without MLX or torch."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        header, body = read_raw(f)
        for k, i in header.items():
            a, b = i["data_offsets"]
            out[k] = (i["dtype"], i["shape"], body[a:b])
    return out


def decode_e8m0(raw: bytes) -> np.ndarray:
    return np.ldexp(np.float32(1), np.frombuffer(raw, np.uint8).astype(np.int32) - 127).astype(np.float32)


def test_fp8_ue8m0_scales_dequantize_exactly(fixture_model):
    """V3.2's FP8 release: e4m3 blocks with power-of-two (ue8m0) float32 scales, the indexer's wq_b/wk
    included. The loaded weight must equal fp8 value x scale exactly (decoded here with NumPy)."""
    folder = FIXTURES / "v32_fp8"
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["scale_fmt"] == "ue8m0"
    key = "model.layers.1.self_attn.indexer.wq_b.weight"
    raw = {}
    for f in folder.glob("*.safetensors"):
        header, body = read_raw(f)
        for k in (key, key + "_scale_inv"):
            if k in header:
                a, b = header[k]["data_offsets"]
                raw[k] = (header[k], body[a:b])
    (wh, wb), (sh, sb) = raw[key], raw[key + "_scale_inv"]
    assert (wh["dtype"], sh["dtype"]) == ("F8_E4M3", "F32")
    scale = np.frombuffer(sb, np.float32).reshape(sh["shape"])
    assert np.array_equal(np.exp2(np.round(np.log2(scale))), scale), "ue8m0 scales are powers of two"
    w = E4M3[np.frombuffer(wb, np.uint8)].reshape(wh["shape"])
    expected = w * np.repeat(np.repeat(scale, 128, 0), 128, 1)[: w.shape[0], : w.shape[1]]
    got = np.array(fixture_model("v32_fp8").layers[1].self_attn.indexer.wq_b.weight)
    assert np.array_equal(got, expected)


def test_v4_fp4_experts_import_as_bit_exact_mxfp4(fixture_model):
    model = fixture_model("v4_fp4")
    raw = raw_tensors(FIXTURES / "v4_fp4")
    cfg = model.config
    for i, layer in enumerate(model.layers):
        sw = layer.mlp.switch_mlp
        for proj, official in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            q = getattr(sw, proj)
            assert (q.mode, q.group_size, q.bits) == ("mxfp4", 32, 4)
            assert cfg.quantization[f"model.layers.{i}.mlp.switch_mlp.{proj}"]["mode"] == "mxfp4"
            got = mx.dequantize(q.weight, q.scales, None, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)
            got = np.array(got)
            for e in (0, cfg.n_routed_experts - 1):
                wdt, wshape, wraw = raw[f"layers.{i}.ffn.experts.{e}.{official}.weight"]
                sdt, _, sraw = raw[f"layers.{i}.ffn.experts.{e}.{official}.scale"]
                assert (wdt, sdt) == ("I8", "F8_E8M0")
                b = np.frombuffer(wraw, np.uint8)
                codes = np.stack([b & 0xF, b >> 4], -1).reshape(wshape[0], -1)  # low nibble first
                mag = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)[codes & 7] * np.where(codes & 8, -1, 1)
                ref = mag.reshape(wshape[0], -1, 32) * decode_e8m0(sraw).reshape(wshape[0], -1, 1)
                np.testing.assert_array_equal(got[e], ref.reshape(wshape[0], -1).astype(np.float32))


def test_v4_fp8_ue8m0_blocks_dequantize_exactly(fixture_model):
    model = fixture_model("v4_fp4")
    raw = raw_tensors(FIXTURES / "v4_fp4")
    wdt, (m, n), wraw = raw["layers.1.attn.wq_b.weight"]
    sdt, sshape, sraw = raw["layers.1.attn.wq_b.scale"]
    assert (wdt, sdt) == ("F8_E4M3", "F8_E8M0")
    s = decode_e8m0(sraw).reshape(sshape)
    ref = E4M3[np.frombuffer(wraw, np.uint8)].reshape(m, n) * np.repeat(np.repeat(s, 128, 0), 128, 1)[:m, :n]
    np.testing.assert_array_equal(np.array(model.layers[1].self_attn.q_b_proj.weight), ref)


def test_dequant_fp4_rejects_a_mismatched_scale():
    with pytest.raises(CheckpointError, match=r"experts\.0\.w1\.weight: FP4 weight \(4, 32\).*\(4, 2\)"):
        dequant_fp4(mx.zeros((4, 32), mx.int8), mx.zeros((4, 3), mx.uint8), key="experts.0.w1.weight")

"""`mlxseek estimate`: sizing from config.json alone, checked against DeepSeek's published figures
(REFERENCES.md; configs and provenance in tests/data/configs/) and against real tensors and the converter."""

import json
import math
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from mlxseek import Model, ModelConfig
from mlxseek.cli import main
from mlxseek.convert.quantize import plan_quantization, size_summary
from mlxseek.errors import ConfigError
from mlxseek.tools.census import census
from mlxseek.tools.estimate import bytes_fn, estimate
from mlxseek.tools.machines import MACHINES, machine

CONFIGS = Path(__file__).parent / "data" / "configs"
FIXTURES = Path(__file__).parent / "fixtures"


def cfg_path(name: str) -> str:
    return str(CONFIGS / f"{name}.json")


def close(value: float, published: float, tol: float) -> bool:
    return abs(value - published) <= tol * published


# (config, quantity, published figure, relative tolerance, source). Two activated counts are published to two
# significant digits and our count lands 2.1% from them; their tolerance says so instead of hiding it.
PUBLISHED = [
    ("deepseek_v3", "total_params", 671e9, 0.02, "V3 report: 671B main model"),
    ("deepseek_v3", "active_params", 36.7e9, 0.02, "V3 README_WEIGHTS: 36.7B activated"),
    ("deepseek_v3", "active_params", 37e9, 0.02, "V3 report: 37B activated"),
    ("deepseek_v3", "mtp_params", 11.5e9, 0.02, "V3 README_WEIGHTS: MTP 11.5B unique parameters"),
    ("deepseek_v3", "hf_params", 685e9, 0.02, "Hugging Face: 685B = 671B main + 14B MTP"),
    ("deepseek_v32", "hf_params", 685e9, 0.02, "V3.2-Exp keeps V3.1's 685B checkpoint plus the DSA indexer"),
    ("deepseek_v2_lite", "total_params", 15.7e9, 0.02, "V2 paper: V2-Lite 15.7B"),
    ("deepseek_v2_lite", "active_params", 2.4e9, 0.025, "V2 paper: 2.4B activated (two significant digits)"),
    ("deepseek_v4_flash", "total_params", 284e9, 0.02, "V4 release: Flash 284B"),
    ("deepseek_v4_flash", "active_params", 13e9, 0.025, "V4 release: 13B activated (two significant digits)"),
    ("deepseek_v4_pro", "total_params", 1.6e12, 0.02, "V4 release: Pro 1.6T"),
    ("deepseek_v4_pro", "active_params", 49e9, 0.02, "V4 release: 49B activated"),
]


@pytest.mark.parametrize("name,key,published,tol,source", PUBLISHED, ids=[f"{p[0]}-{p[1]}-{p[2]:g}" for p in PUBLISHED])
def test_reproduces_published_parameter_counts(name, key, published, tol, source):
    e = estimate(cfg_path(name))
    assert close(e[key], published, tol), f"{name} {key} = {e[key] / 1e9:.2f}B vs {published / 1e9:g}B ({source})"


def test_published_sizes():
    # REFERENCES.md: 4-bit g64 is ~4.5 bits/weight, so 671B is ~377 GB (mlx-community V3-0324 4-bit: 352 GiB).
    v3 = estimate(cfg_path("deepseek_v3"), recipe="uniform", q_bits=4, q_group_size=64, drop_mtp=True)
    assert close(v3["size_bytes"], 377e9, 0.03) and close(v3["size_bytes"], 352 * 2**30, 0.03)
    assert v3["bits_per_weight"] == pytest.approx(4.5, abs=0.01)
    assert close(estimate(cfg_path("deepseek_v2_lite"))["size_bytes"], 8.84e9, 0.02)  # mlx-community 4-bit
    # As DeepSeek ships V4 (FP8 blocks with e8m0 scales, FP4 routed experts), MTP included.
    assert close(estimate(cfg_path("deepseek_v4_flash"), recipe="native")["size_bytes"], 159.6e9, 0.01)
    assert close(estimate(cfg_path("deepseek_v4_pro"), recipe="native")["size_bytes"], 864.7e9, 0.01)


def test_v4_flash_census_matches_the_official_tensor_list():
    # The official DeepSeek-V4-Flash shards hold 158,069,433,298 stored elements (tests/data/configs/README.md):
    # FP8 weights plus one e8m0 scale per 128x128 block, FP4 experts packed two per int8 plus one scale per 32.
    c = ModelConfig.from_file(cfg_path("deepseek_v4_flash"))

    def stored(t):
        if t.native == "fp8":
            return t.numel + math.prod(t.shape[:-2]) * math.ceil(t.shape[-2] / 128) * math.ceil(t.shape[-1] / 128)
        return t.numel // 2 + t.numel // 32 if t.native == "fp4" else t.numel

    assert sum(stored(t) for t in census(c)) == 158_069_433_298


@pytest.mark.parametrize("name", ["v3", "v3_fp8", "v2_lite"])
def test_census_matches_fixture_tensors(name):
    """Parameters and as-shipped bytes from config.json alone equal what the fixture's shards hold."""
    folder = FIXTURES / name
    c = ModelConfig.from_file(folder)
    numel, nbytes = 0, 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "np") as f:
            for k in f.keys():
                shape = f.get_slice(k).get_shape()
                nbytes += math.prod(shape) * {"BF16": 2, "F32": 4, "F8_E4M3": 1}[f.get_slice(k).get_dtype()]
                numel += 0 if k.endswith("_scale_inv") else math.prod(shape)
    native = bytes_fn(c, "native", 4, 64)
    assert estimate(str(folder))["hf_params"] == numel
    assert estimate(ModelConfig.from_file(folder))["hf_params"] == numel  # a ModelConfig works as well
    assert sum(native(t) for t in census(c)) == nbytes


@pytest.mark.parametrize("name", ["v3", "v2_lite"])
@pytest.mark.parametrize("recipe,bits,group", [("uniform", 4, 64), ("experts", 2, 32), ("mixed", 4, 128)])
def test_sizes_agree_with_the_converter(name, recipe, bits, group):
    cfg = ModelConfig.from_file(FIXTURES / name)
    model = Model(cfg, with_mtp=True)
    plan = plan_quantization(model, cfg, recipe=recipe, bits=bits, group_size=group)
    expected = size_summary(model, plan, mx.bfloat16)["bits"] / 8
    assert estimate(str(FIXTURES / name), recipe=recipe, q_bits=bits, q_group_size=group)["size_bytes"] == expected


def test_latent_kv_cache():
    # REFERENCES.md: V3 caches (512 + 64) values per token per layer; 61 layers at 2 bytes ~ 70 KB, 9.2 GB at 128K.
    v3 = estimate(cfg_path("deepseek_v3"), context=128 * 1024, drop_mtp=True)
    assert v3["kv_bytes_per_token"] == 61 * (512 + 64) * 2
    assert close(v3["kv_bytes_at_context"], 9.2e9, 0.01)
    assert v3["kv_full_bytes_per_token"] == 61 * 128 * (128 + 64 + 128) * 2  # K (nope+rope) and V per head
    # V4 report: at 1M tokens V4-Pro needs ~10% of V3.2's KV cache (compressed CSA/HCA entries + windows).
    ctx = 1 << 20
    pro, v32 = (estimate(cfg_path(n), context=ctx, drop_mtp=True) for n in ("deepseek_v4_pro", "deepseek_v32"))
    assert 0.05 < pro["kv_bytes_at_context"] / v32["kv_bytes_at_context"] < 0.15


def test_roofline_and_fit_on_m3_ultra():
    # REFERENCES.md: 819 GB/s / (36.7B x 4.5 bits / 8) ~ 40 tok/s; mlx-lm runs V3 4-bit there in 383 GB at 4K.
    e = estimate(cfg_path("deepseek_v3"), machine="m3-ultra-512", context=0)
    assert close(e["roofline_tps"], 819e9 / (36.7e9 * 4.5 / 8), 0.03)
    assert e["fits"] is True and e["machine"]["bandwidth_gbs"] == 819
    assert estimate(cfg_path("deepseek_v3"), context=4096)["resident_bytes"] < 383e9 * 1.03
    small = estimate(cfg_path("deepseek_v3"), machine="m2-ultra-192")
    assert small["fits"] is False and small["machine"]["fits_raised_limit"] is False
    assert estimate(cfg_path("deepseek_v2_lite"), machine="m4-16")["fits"] is True
    # Longer context reads more cache per token: slower roofline.
    assert estimate(cfg_path("deepseek_v3"), machine="m3-ultra-512", context=65536)["roofline_tps"] < e["roofline_tps"]


def test_wired_limit():
    assert machine("m3-ultra-512").wired_limit_bytes == 384 * 2**30  # 3/4 above 36 GB
    assert machine("m4-16").wired_limit_bytes == int(16 * 2**30 * 2 / 3)
    assert machine("m4-16").raised_limit_bytes == 8 * 2**30
    assert all(m.bandwidth_gbs > 0 and m.ram_gb > 0 for m in MACHINES.values())


def test_pipeline_parallel_splits_layers():
    one = estimate(cfg_path("deepseek_v3"), machine="m3-ultra-256", drop_mtp=True)
    two = estimate(cfg_path("deepseek_v3"), machine="m3-ultra-256", machines=2, parallel="pipeline", drop_mtp=True)
    ranks = two["parallel"]["ranks"]
    assert [r["layers"] for r in ranks] == [[0, ranks[0]["layers"][1]], [ranks[0]["layers"][1], 61]]
    assert sum(r["weight_bytes"] for r in ranks) == pytest.approx(one["size_bytes"], abs=2)
    assert max(r["weight_bytes"] for r in ranks) < 0.55 * one["size_bytes"]
    assert one["fits"] is False and two["fits"] is True
    # At batch 1 the stages run one after another: no faster than one machine.
    assert two["roofline_tps"] == pytest.approx(one["roofline_tps"], rel=1e-6)


def test_expert_parallel_shards_routed_experts():
    one = estimate(cfg_path("deepseek_v3"), machine="m2-ultra-192", drop_mtp=True)
    four = estimate(cfg_path("deepseek_v3"), machine="m2-ultra-192", machines=4, parallel="expert", drop_mtp=True)
    routed = one["by_component"]["routed_experts"]
    for r in four["parallel"]["ranks"]:
        assert r["weight_bytes"] == pytest.approx(one["size_bytes"] - routed["bytes"] * 3 / 4, abs=2)
        assert r["bytes_per_token"] == pytest.approx(one["bytes_per_token"] - routed["bytes_per_token"] * 3 / 4, abs=2)
    assert four["fits"] is True and four["roofline_tps"] > one["roofline_tps"]


def test_recipes():
    u, x = (estimate(cfg_path("deepseek_v3"), recipe=r, drop_mtp=True)["by_component"] for r in ("uniform", "experts"))
    assert u["routed_experts"]["bytes"] == x["routed_experts"]["bytes"]
    assert x["attention"]["bytes"] == pytest.approx(x["attention"]["params"] * 8.5 / 8, rel=1e-9)  # 8-bit g64
    assert u["router"]["bytes"] == x["router"]["bytes"] == u["router"]["params"] * 4  # router stays float32
    assert estimate(cfg_path("deepseek_v3"), recipe="bf16", drop_mtp=True)["bits_per_weight"] == 16


@pytest.mark.parametrize("kwargs,needle", [
    (dict(config="no/such/config.json"), "no/such/config.json: not found"),
    (dict(config=cfg_path("deepseek_v3"), machine="m9-giga"), "--machine 'm9-giga'"),
    (dict(config=cfg_path("deepseek_v3"), recipe="fancy"), "--recipe 'fancy'"),
    (dict(config=cfg_path("deepseek_v3"), q_bits=7), "--q-bits 7"),
    (dict(config=cfg_path("deepseek_v3"), machines=3, parallel="expert"), "--machines 3"),
    (dict(config=cfg_path("deepseek_v3"), machines=62), "--machines 62"),
])
def test_bad_input_names_the_culprit(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        estimate(kwargs.pop("config"), **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"config.json: unsupported model_type 'llama'"):
        estimate(tmp_path)
    v4 = json.loads(Path(cfg_path("deepseek_v4_flash")).read_text())
    del v4["compress_ratios"]
    with pytest.raises(ConfigError, match="missing required key.*compress_ratios"):
        estimate(v4)


def test_cli_json_and_text():
    runner = CliRunner()
    r = runner.invoke(main, ["estimate", "--config", cfg_path("deepseek_v3"), "--machine", "m3-ultra-512", "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    for key in ("total_params", "active_params", "size_bytes", "kv_bytes_per_token", "fits", "roofline_tps"):
        assert e[key] is not None
    assert e == estimate(cfg_path("deepseek_v3"), machine="m3-ultra-512")
    r = runner.invoke(main, ["estimate", "--config", cfg_path("deepseek_v4_flash"), "--recipe", "native"])
    total = estimate(cfg_path("deepseek_v4_flash"))["total_params"]
    assert r.exit_code == 0 and f"{total / 1e9:.2f}B total" in r.output
    assert "m4-16" in r.output and "iogpu.wired_limit_mb" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--config", "missing.json"], "missing.json: not found"),
    (["--config", cfg_path("deepseek_v3"), "--machine", "m9"], "--machine 'm9'"),
])
def test_cli_errors_are_one_line(args, needle):
    r = CliRunner().invoke(main, ["estimate", *args])
    assert r.exit_code == 1 and needle in r.output and len(r.output.strip().splitlines()) == 1


def mlxseek_cmd() -> list[str]:
    script = Path(sys.executable).with_name("mlxseek")  # the installed entry point
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mlxseek.cli import main; main()"]


def test_cli_subprocess():
    out = subprocess.run(mlxseek_cmd() + ["estimate", "--config", cfg_path("deepseek_v2_lite"), "--machine",
                                          "m4-pro-24", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_type"] == "deepseek_v2"

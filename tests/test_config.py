import json
from pathlib import Path

import pytest
from mlx.utils import tree_flatten

from mlxseek.config import ModelConfig
from mlxseek.errors import ConfigError
from mlxseek.models import build_model

FIXTURES = Path(__file__).parent / "fixtures"

# DeepSeek-V3's published config.json values (REFERENCES.md), trimmed to what the model reads.
V3 = {
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
    "first_k_dense_replace": 3, "norm_topk_prob": True, "scoring_func": "sigmoid", "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "num_nextn_predict_layers": 1, "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}
V2_LITE = {
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "num_experts_per_tok": 6, "kv_lora_rank": 512, "q_lora_rank": None,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "greedy",
    "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "norm_topk_prob": False,
    "scoring_func": "softmax", "routed_scaling_factor": 1.0,
}


def test_v3_derived_values():
    cfg = ModelConfig.from_dict(V3)
    assert cfg.q_head_dim == 192
    assert cfg.mtp_layer_index == 61  # derived from num_hidden_layers, not a literal
    assert cfg.fp8_block_size == (128, 128)
    assert [cfg.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize("name", ["v2_lite", "v3", "v32", "v4_flash", "v4_pro"])
def test_derived_layer_schedule_matches_the_built_model(name):
    """What the sizing tools read from ModelConfig (MoE layers, router bias, hash tables) is what the model builds."""
    cfg = ModelConfig.from_file(FIXTURES / name)
    keys = {k for k, _ in tree_flatten(build_model(cfg, with_mtp=True).parameters())}
    for i in range(cfg.mtp_layer_index + cfg.num_nextn_predict_layers):
        gate = ("mtp.block" if i == cfg.mtp_layer_index else f"model.layers.{i}") + ".mlp.gate."
        assert (gate + "weight" in keys) == cfg.is_moe_layer(i), (i, gate)
        assert (gate + "e_score_correction_bias" in keys) == (cfg.is_moe_layer(i) and cfg.has_correction_bias(i))
        assert (gate + "tid2eid" in keys) == cfg.is_hash_layer(i)
    assert cfg.is_v4 == name.startswith("v4")


def test_expert_dtype_and_fraction():
    assert ModelConfig.from_file(FIXTURES / "v4_fp4").expert_dtype == "fp4"
    assert ModelConfig.from_file(FIXTURES / "v4_flash").expert_dtype is None
    nested = {**V3, "quantization_config": {**V3["quantization_config"], "expert_dtype": "fp4"}}
    assert ModelConfig.from_dict(nested).expert_dtype == "fp4"
    assert ModelConfig.from_dict(V2_LITE).routed_expert_fraction == 6 / 64


def test_unknown_keys_round_trip():
    cfg = ModelConfig.from_dict(V3)
    assert cfg.extra["auto_map"] == V3["auto_map"]
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_v2_lite_direct_q_proj_and_family_defaults():
    cfg = ModelConfig.from_dict(V2_LITE)
    assert cfg.q_lora_rank is None
    d = {k: v for k, v in V2_LITE.items() if k not in ("scoring_func", "topk_method", "norm_topk_prob")}
    cfg2 = ModelConfig.from_dict(d)
    assert (cfg2.scoring_func, cfg2.topk_method, cfg2.norm_topk_prob) == ("softmax", "greedy", False)


def test_v31_scale_fmt_kept():
    d = json.loads(json.dumps(V3))
    d["quantization_config"]["scale_fmt"] = "ue8m0"
    assert ModelConfig.from_dict(d).quantization_config["scale_fmt"] == "ue8m0"


@pytest.mark.parametrize(
    "change, key",
    [
        ({"model_type": "llama"}, "model_type"),
        ({"kv_lora_rank": None}, "kv_lora_rank"),
        ({"topk_method": "best"}, "topk_method"),
        ({"n_group": 7}, "n_group"),
        ({"topk_group": 9}, "topk_group"),
        ({"num_experts_per_tok": 300}, "num_experts_per_tok"),
        ({"n_group": 256}, "n_group"),  # noaux_tc needs >= 2 experts per group
        ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
    ],
)
def test_validation_names_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig.from_dict({**V3, **change}, source="x/config.json")


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json: not found"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        ModelConfig.from_file(tmp_path)


def test_v4_config_requires_compress_ratios():
    d = json.loads((FIXTURES / "v4_flash" / "config.json").read_text())
    del d["compress_ratios"]
    with pytest.raises(ConfigError, match="missing required key.*compress_ratios"):
        ModelConfig.from_dict(d)
    with pytest.raises(ConfigError, match="transformers-saved V4 config .* use the official config.json"):
        ModelConfig.from_dict(dict(d, layer_types=["sliding_attention"] * 4))
    cfg = ModelConfig.from_dict(json.loads((FIXTURES / "v4_flash" / "config.json").read_text()))
    assert cfg.kv_lora_rank is None and "kv_lora_rank" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="compress_ratios has 5 entries; layer 5"):
        cfg.compress_ratio(5)


def test_config_names_the_missing_dsa_key():
    d = json.loads((FIXTURES / "v32" / "config.json").read_text())
    with pytest.raises(ConfigError, match="q_lora_rank.*V3.2 needs q_lora_rank"):
        ModelConfig.from_dict(dict(d, q_lora_rank=None))
    with pytest.raises(ConfigError, match="index_head_dim"):
        ModelConfig.from_dict(dict(d, index_head_dim=8))
    cfg = ModelConfig.from_dict({k: v for k, v in d.items() if not k.startswith("index_")})
    assert (cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk) == (64, 128, 2048)  # V3.2 release values

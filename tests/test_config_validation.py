"""Config validation in one place: every key the model reads has its type and range checked, relations
between keys hold (top-k within reach, heads that divide, positive FP8 blocks), and each failure is a
ConfigError naming the key. Configs are the committed fixtures' own, edited one key at a time."""

import json
from pathlib import Path

import pytest

from mlxseek.config import ModelConfig
from mlxseek.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def _cfg(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def _refused(name: str, key_words: str, **edits):
    d = {**_cfg(name), **edits}
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(d, source=f"{name}/config.json")
    assert str(e.value).startswith(f"{name}/config.json: ") and key_words in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("name", sorted(p.parent.name for p in FIXTURES.glob("*/config.json")))
def test_every_fixture_config_is_valid(name):
    cfg = ModelConfig.from_file(FIXTURES / name)
    assert cfg.vocab_size > 0 and cfg.num_hidden_layers > 0


@pytest.mark.parametrize("key,value,words", [
    ("num_hidden_layers", "2", "key 'num_hidden_layers' = '2': must be a positive integer"),
    ("num_hidden_layers", 2.0, "key 'num_hidden_layers' = 2.0: must be a positive integer"),
    ("num_hidden_layers", True, "key 'num_hidden_layers' = True: must be a positive integer"),
    ("hidden_size", 0, "key 'hidden_size' = 0: must be a positive integer"),
    ("moe_intermediate_size", -32, "key 'moe_intermediate_size' = -32: must be a non-negative integer"),
    ("n_shared_experts", -1, "key 'n_shared_experts' = -1: must be a non-negative integer"),
    ("first_k_dense_replace", "1", "key 'first_k_dense_replace'"),
    ("max_position_embeddings", 0, "key 'max_position_embeddings'"),
    ("num_nextn_predict_layers", -1, "key 'num_nextn_predict_layers'"),
    ("vocab_size", 2**31, "key 'vocab_size' = 2147483648: must be below 2**31"),
    ("rms_norm_eps", -1e-6, "key 'rms_norm_eps' = -1e-06: must be a positive number"),
    ("rope_theta", "10000", "key 'rope_theta' = '10000': must be a positive number"),
    ("routed_scaling_factor", float("nan"), "key 'routed_scaling_factor'"),
    ("norm_topk_prob", "yes", "key 'norm_topk_prob' = 'yes': must be true or false"),
    ("eos_token_id", "</s>", "key 'eos_token_id' = '</s>': must be a token id"),
    ("eos_token_id", [1, "2"], "key 'eos_token_id'"),
    ("eos_token_id", -1, "key 'eos_token_id'"),
    ("bos_token_id", "0", "key 'bos_token_id'"),
    ("rope_scaling", {"type": "yarn", "factor": "forty"}, "rope_scaling.factor = 'forty' must be a positive number"),
    ("rope_scaling", {"type": "yarn", "factor": 40, "original_max_position_embeddings": -4096}, "rope_scaling.original_max_position_embeddings"),
    ("rope_scaling", [40], "key 'rope_scaling' = [40]: must be an object or null"),
    ("quantization", "4bit", "key 'quantization' = '4bit': must be an object or null"),
], ids=lambda v: str(v)[:24])
def test_wrong_type_or_range_names_the_key(key, value, words):
    _refused("v3", words, **{key: value})


@pytest.mark.parametrize("edits,words", [
    ({"num_experts_per_tok": 99}, "key 'num_experts_per_tok' = 99: must be in 1..n_routed_experts (16)"),
    ({"num_experts_per_tok": 12, "topk_group": 2}, "key 'num_experts_per_tok' = 12: must be <= topk_group x experts per group (8)"),
    ({"n_group": 3}, "key 'n_group' = 3: must divide n_routed_experts (16)"),
    ({"topk_group": 5}, "key 'topk_group' = 5: must be in 1..n_group (4)"),
    ({"num_key_value_heads": 3}, "key 'num_key_value_heads' = 3: must divide num_attention_heads (4)"),
    ({"qk_rope_head_dim": 15}, "key 'qk_rope_head_dim' = 15: must be even"),
    ({"moe_intermediate_size": 0}, "key 'moe_intermediate_size' = 0: MoE layers need a positive moe_intermediate_size"),
    ({"n_routed_experts": None, "intermediate_size": 0}, "key 'intermediate_size' = 0: a model without routed experts"),
], ids=lambda v: str(v)[:30])
def test_keys_that_contradict_each_other_name_the_key(edits, words):
    _refused("v3", words, **edits)


@pytest.mark.parametrize("block", [[0, 0], [128], [128, -1], ["128", 128], 128, None])
def test_fp8_block_size_must_be_two_positive_ints(block):
    qc = {**_cfg("v3_fp8")["quantization_config"], "weight_block_size": block}
    _refused("v3_fp8", f"weight_block_size {block!r} must be two positive integers", quantization_config=qc)


def test_quantization_config_must_be_an_object():
    _refused("v3_fp8", "key 'quantization_config' = 'fp8': must be an object or null", quantization_config="fp8")


def test_v4_keys_are_checked_too():
    _refused("v4_fp4", "key 'o_groups' = 3: must divide", o_groups=3)
    _refused("v4_fp4", "key 'hc_mult' = 0: must be a positive integer", hc_mult=0)
    _refused("v4_fp4", "key 'compress_ratios'", compress_ratios=[0, "4"])
    _refused("v4_fp4", "key 'swiglu_limit' = -1: must be a non-negative number", swiglu_limit=-1)
    _refused("v4_fp4", "key 'head_dim' = 2147483648: must be below 2**31", head_dim=2**31)


def test_valid_variants_are_accepted():
    """eos as a list, mscale 0 (no scaling), null q_lora_rank (V2-Lite's direct q_proj), float rope_theta."""
    base = _cfg("v3")
    cfg = ModelConfig.from_dict({**base, "eos_token_id": [1, 2], "rope_theta": 1e4,
                                 "rope_scaling": {**base["rope_scaling"], "mscale_all_dim": 0}})
    assert cfg.eos_token_ids == [1, 2]
    assert ModelConfig.from_dict(_cfg("v2_lite")).q_lora_rank is None

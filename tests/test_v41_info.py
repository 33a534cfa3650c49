"""`mlxseek info` and `mlxseek estimate` on DeepSeek-V4.1: the Engram tables, the DSpark drafter and what the
text model never loads are shown apart from the backbone, on an official-layout folder and a converted one;
the estimate of V4.1-Flash's config counts the drafter and says which Macs hold it with Engram on SSD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from engram_fixture import engram_config
from mlx.utils import tree_flatten
from v41_checkpoint import write_official
from v41_fixture import DSPARK, TINY, mlx_lm_model, ours_from

from mlxseek.cli import main
from mlxseek.config import ModelConfig
from mlxseek.errors import ConfigError
from mlxseek.tools.estimate import estimate
from mlxseek.tools.info import info

BASE = {**TINY, **DSPARK}
FLASH = Path(__file__).parent / "data" / "configs" / "deepseek_v41_flash.json"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from mlxseek.convert.convert import convert

    root = tmp_path_factory.mktemp("v41_info")
    source = ours_from(mlx_lm_model(), engram_config(BASE), stages=3)
    cfg = write_official(root / "official", source, BASE, quantized=True)
    convert(hf_path=root / "official", mlx_path=root / "mlx", quiet=True)
    return cfg, source, root


@pytest.mark.parametrize("which", ["official", "mlx"])
def test_info_shows_engram_and_the_drafter_apart(folders, which):
    cfg, source, root = folders
    i = info(root / which)
    g = i["engram"]
    assert g["layers"] == cfg.engram_layer_ids and g["tables"] == 2
    assert g["rows"] == sum(cfg.engram_num_embeddings)
    assert g["bytes"] == g["rows"] * (cfg.engram_head_dim + cfg.engram_head_dim // 32)  # FP8 + E8M0 per 32
    assert g["rows_per_token"] == 2 * (cfg.engram_max_ngram_size - 1) * cfg.engram_n_heads and not g["resident"]
    # the backbone's parameters are the model's own (FP4 experts count two values a byte), tables left out
    backbone = sum(v.size for k, v in tree_flatten(source.parameters()) if not k.startswith("dspark."))
    assert i["total_params"] == backbone
    drafter = sum(v.size for k, v in tree_flatten(source.dspark.parameters()))
    assert i["drafter"]["kind"] == "dspark" and i["drafter"]["params"] == drafter
    parts = i["backbone_bytes"] + i["drafter"]["bytes"] + g["bytes"] + i["unused_bytes"]
    assert parts == i["tensor_bytes"]  # every stored byte is in exactly one of them
    assert (i["unused_bytes"] > 0) == (which == "official")  # the vision stand-in is not converted


def test_info_cli_prints_the_engram_lines(folders):
    _, _, root = folders
    r = CliRunner().invoke(main, ["info", str(root / "official")])
    assert r.exit_code == 0, r.output
    assert "Engram         2 tables at layers [1, 6]: 766 rows" in r.output
    assert "never resident; 12 rows (396 B) read per token" in r.output  # 2 tables x 6 rows x 33 B
    assert "backbone " in r.output and "drafter        DSpark, 3 stages" in r.output


def test_estimate_counts_the_v41_drafter_and_leaves_only_the_vision_tower_out():
    e = estimate(FLASH, recipe="native")
    # transformers' DeepseekV41TextConfig: "~196B of the released checkpoint's 763B parameters" are Engram's
    assert abs(e["hf_params"] - 763e9) < 0.005 * 763e9
    assert abs(e["by_component"]["engram_table"]["params"] - 196e9) < 0.01 * 196e9
    # the drafter: 3 stages of 128 FP4 experts (top-3) + attention + heads, counted apart from the backbone
    assert e["drafter"] == "DSpark" and 5e9 < e["drafter_bytes"] < 12e9
    # published: 510,313,353,565 bytes in 48 shards; what is left is the vision tower (not run, not sized)
    assert 0 < 510_313_353_565 - e["shipped_bytes"] < 1.5e9
    assert e["not_counted"] == ["vision tower (vision_config)"]
    assert e["engram"]["fits_with_tables_on_ssd"] == [
        f["machine"] for f in e["machines_table"] if f["ram_bytes"] * 0.75 > e["resident_bytes"]]
    bare = estimate(FLASH, recipe="native", drop_mtp=True)
    assert bare["size_bytes"] == e["size_bytes"] - e["drafter_bytes"]


def test_engram_pad_id_is_read_under_both_names():
    base = engram_config(TINY)
    pad = {k: v for k, v in base.items() if k != "engram_pad_id"}
    assert ModelConfig.from_dict({**pad, "engram_pad_token_id": 5}).engram_pad_id == 5  # the released name
    assert ModelConfig.from_dict({**pad, "engram_pad_id": 5}).engram_pad_id == 5  # transformers' port
    cfg = ModelConfig.from_dict({**pad, "engram_pad_token_id": 5})
    assert cfg.to_dict()["engram_pad_token_id"] == 5  # round-trips as written
    with pytest.raises(ConfigError, match="engram_pad_token_id = 5 and engram_pad_id = 2"):
        ModelConfig.from_dict({**pad, "engram_pad_token_id": 5, "engram_pad_id": 2})


def test_v41_flash_config_reads_the_released_drafter_keys():
    cfg = ModelConfig.from_file(FLASH)
    assert (cfg.dspark_n_routed_experts, cfg.dspark_num_experts_per_tok) == (128, 3)
    assert cfg.engram_pad_id == 2 and np.array_equal(cfg.dspark_target_layer_ids, [37, 38, 39])

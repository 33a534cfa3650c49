"""The v4-0731 chat style (DeepSeek-V4-Flash-0731, V4-Pro-0813): what sets it apart from April's v4 format,
and how a checkpoint folder selects it. Byte/token identity with the goldens is in test_chat_formats.py."""

import json

import pytest

from mlxseek.errors import ChatFormatError
from mlxseek.formats import render_chat
from mlxseek.formats.style import style_of_checkpoint
from mlxseek.serve.responses.convert import thinking_controls
from test_chat_formats import golden

USER = [{"role": "user", "content": "Prove that √2 is irrational."}]


def test_goldens_differ_from_v4_only_where_an_effort_is_given():
    april = {c["name"]: c["text"] for c in golden("v4")["conversations"]}
    shared = [c for c in golden("v4-0731")["conversations"] if c["name"] in april and not c.get("reasoning_effort")]
    assert len(shared) >= 20
    for case in shared:
        assert case["text"] == april[case["name"]], case["name"]


def test_effort_tiers_move_one_step_up():
    bare = render_chat(USER, style="v4-0731", thinking=True)
    assert render_chat(USER, style="v4-0731", thinking=True, reasoning_effort="low") == bare
    assert render_chat(USER, style="v4-0731", thinking=True, reasoning_effort="high") == \
        render_chat(USER, style="v4", thinking=True, reasoning_effort="max")
    top = render_chat(USER, style="v4-0731", thinking=True, reasoning_effort="max")
    assert "Beyond maximum \u2014 exhaustive" in top and top.endswith(bare.removeprefix("<｜begin▁of▁sentence｜>"))
    for effort in ("low", "high", "max"):  # chat mode never carries the paragraph
        assert render_chat(USER, style="v4-0731", thinking=False, reasoning_effort=effort) == \
            render_chat(USER, style="v4-0731", thinking=False)


@pytest.mark.parametrize("style,effort", [("v4-0731", "xhigh"), ("v4-0731", "medium"), ("v4", "low")])
def test_effort_outside_the_format_is_refused(style, effort):
    with pytest.raises(ChatFormatError) as e:
        render_chat(USER, style=style, thinking=True, reasoning_effort=effort)
    assert e.value.field == "reasoning_effort"


def _mk(root, name):
    (root / name).mkdir()
    return root / name


def _folder(tmp_path, config: dict, encoder: str | None = None):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v4", **config}))
    if encoder is not None:
        (tmp_path / "encoding").mkdir()
        (tmp_path / "encoding" / "encoding_dsv4.py").write_text(encoder)
    return tmp_path


def test_checkpoint_selects_v4_0731_by_its_dspark_config(tmp_path):
    assert style_of_checkpoint(_folder(_mk(tmp_path, "a"), {}), chat_template=None) == "v4"
    dspark = {"dspark_block_size": 5, "dspark_noise_token_id": 128799}
    assert style_of_checkpoint(_folder(_mk(tmp_path, "b"), dspark), chat_template=None) == "v4-0731"


def test_shipped_encoder_outranks_the_config(tmp_path):
    april = "REASONING_EFFORT_MAX = ('...')\n"
    new = "REASONING_EFFORT_PROMPTS = {'low': ''}\nDEFAULT_REASONING_EFFORT = 'low'\n"
    assert style_of_checkpoint(_folder(_mk(tmp_path, "a"), {"dspark_block_size": 5}, april), chat_template=None) == "v4"
    assert style_of_checkpoint(_folder(_mk(tmp_path, "b"), {}, new), chat_template=None) == "v4-0731"


@pytest.mark.parametrize("effort,expected", [("low", (True, "low")), ("medium", (True, "high")),
                                             ("high", (True, "high")), ("xhigh", (True, "high")),
                                             ("max", (True, "max")), ("none", (False, None))])
def test_responses_effort_maps_as_deepseeks_0731_table(effort, expected):
    assert thinking_controls(effort, "v4-0731") == expected


def test_model_family_names_the_0731_style_for_a_dspark_config():
    from mlxseek.models.families import FAMILIES

    v4 = next(f for f in FAMILIES if f.name == "deepseek_v4")
    assert v4.chat_style("deepseek_v4") == "v4"
    assert v4.chat_style("deepseek_v4", dspark=True) == "v4-0731"
    v41 = next(f for f in FAMILIES if f.name == "deepseek_v41")
    assert v41.chat_style("deepseek_v41", dspark=True) == "v4.1"  # V4.1 ships its own encoder, drafter or not


def test_v41_checkpoint_speaks_its_own_style(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v41", "dspark_block_size": 5}))
    assert style_of_checkpoint(tmp_path, chat_template=None) == "v4.1"

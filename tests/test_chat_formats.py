"""render_chat against goldens made by DeepSeek's official templates/encoders (tests/fixtures/make_chat_goldens.py),
plus the errors it raises for input it cannot render."""

import json
from pathlib import Path

import pytest

from mlxseek.errors import ChatFormatError
from mlxseek.formats import STYLES, detect_style, prompt_opens_thinking, render_chat

GOLDENS = Path(__file__).parent / "data" / "chat_goldens"


def golden(style: str) -> dict:
    return json.loads((GOLDENS / f"{style}.json").read_text(encoding="utf-8"))


CASES = [(s, c) for s in STYLES for c in golden(s)["conversations"]]
IDS = [f"{s}:{c['name']}" for s, c in CASES]


def render_case(style: str, case: dict) -> str:
    return render_chat(case["messages"], style=style, tools=case.get("tools"), thinking=case.get("thinking"),
                       reasoning_effort=case.get("reasoning_effort"),
                       add_generation_prompt=case.get("add_generation_prompt", True))


@pytest.mark.parametrize("style", STYLES)
def test_goldens_cover_the_required_cases(style):
    g = golden(style)
    assert g["style"] == style and {"repo", "path", "commit"} <= set(g["source"])
    convs = g["conversations"]
    assert len(convs) >= 12
    msgs = [m for c in convs for m in c["messages"]]
    assert any(len(m.get("tool_calls") or []) >= 2 for m in msgs)
    assert any(m["role"] == "tool" for m in msgs)
    assert any(m.get("reasoning_content") for m in msgs)
    assert any(m.get("content") == "" for m in msgs)
    if style in ("v3.1", "v3.2", "v4"):
        assert {c.get("thinking") for c in convs} >= {True, False}


@pytest.mark.parametrize("style,case", CASES, ids=IDS)
def test_render_is_byte_identical_to_official(style, case):
    assert render_case(style, case) == case["text"]


@pytest.mark.parametrize("style", STYLES)
def test_token_ids_identical_through_real_tokenizer(style, tokenizer):
    for case in golden(style)["conversations"]:
        assert tokenizer.encode(render_case(style, case), add_special_tokens=False) == case["token_ids"], case["name"]


def test_earlier_reasoning_is_dropped_and_latest_kept():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "reasoning_content": "OLD", "content": "x"},
            {"role": "user", "content": "b"}, {"role": "assistant", "reasoning_content": "NEW", "content": "y"}]
    for style in ("r1", "v3.1"):
        assert "OLD" not in render_chat(msgs, style=style, add_generation_prompt=False)
    for style in ("v3.2", "v4"):
        text = render_chat(msgs, style=style, thinking=True)
        assert "OLD" not in text and "NEW</think>y" in text


@pytest.mark.parametrize("messages,where", [
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], "messages[1].role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "content": "r"}], "messages[1].role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c9", "content": "r"}], "messages[2].tool_call_id"),
    ([{"role": "user"}], "messages[0].content"),
])
def test_bad_messages_name_index_and_field(messages, where):
    for style in STYLES:
        with pytest.raises(ChatFormatError, match=where.replace("[", r"\[").replace("]", r"\]")):
            render_chat(messages, style=style)


def test_thinking_on_a_family_without_a_toggle():
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatFormatError, match="thinking=True.*v3"):
        render_chat(msgs, style="v3", thinking=True)
    with pytest.raises(ChatFormatError, match="thinking=False.*r1"):
        render_chat(msgs, style="r1", thinking=False)
    with pytest.raises(ChatFormatError, match="reasoning_effort"):
        render_chat(msgs, style="v3.2", thinking=True, reasoning_effort="max")
    with pytest.raises(ChatFormatError, match="style="):
        render_chat(msgs, style="v5")


def test_v3_refuses_content_beside_tool_calls():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "sure", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    with pytest.raises(ChatFormatError, match=r"messages\[1\]\.content"):
        render_chat(msgs, style="v3")


def test_detect_style_from_model_type_and_template():
    official = {s: golden(s) for s in ("v3", "r1", "v3.1")}
    assert detect_style(model_type="deepseek_v4") == "v4"
    assert detect_style(model_type="deepseek_v32", chat_template="anything") == "v3.2"
    assert detect_style(model_type="deepseek_v2") == "v3"
    assert detect_style(model_type="deepseek_v3", chat_template=None) == "v3"
    assert detect_style(model_type="deepseek_v3", chat_template="...{{'<｜Assistant｜><think>\\n'}}") == "r1"
    template_31 = ("{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
                   "{{'<｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments']}}")
    assert detect_style(model_type="deepseek_v3", chat_template=template_31) == "v3.1"
    assert official  # the goldens exist for the three template styles
    with pytest.raises(ChatFormatError, match="llama"):
        detect_style(model_type="llama")


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("r1", None) and not prompt_opens_thinking("v3", None)
    assert prompt_opens_thinking("v3.1", True) and not prompt_opens_thinking("v4", False)
    msgs = [{"role": "user", "content": "hi"}]
    for style in ("v3.1", "v3.2", "v4"):
        for thinking in (False, True):
            prompt = render_chat(msgs, style=style, thinking=thinking)
            assert prompt_opens_thinking(style, thinking, prompt=prompt) is thinking


def test_style_from_a_checkpoint_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v32"}))

    class Tok:
        chat_template = None
        name_or_path = str(tmp_path)

    text = render_chat([{"role": "user", "content": "hi"}], tokenizer=Tok())
    assert text == render_chat([{"role": "user", "content": "hi"}], style="v3.2")


@pytest.mark.parametrize("messages,kwargs,field", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}], {}, "messages[1].content"),
    ([{"role": "tool", "content": "x"}], {}, "messages[0].role"),
    ([{"role": "user", "content": "a"}], {"tools": [{"type": "function"}]}, "tools[0].function.name"),
    ([{"role": "user", "content": "a"}], {"reasoning_effort": "max"}, "reasoning_effort"),
])
def test_format_errors_carry_the_field_they_name(messages, kwargs, field):
    with pytest.raises(ChatFormatError) as e:
        render_chat(messages, style="v3.1", **kwargs)
    assert e.value.field == field and str(e.value).startswith(field)

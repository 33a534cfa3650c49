"""DeepSeek-V4.1's own chat format ("v4.1"): what the goldens (tests/data/chat_goldens/v4.1.json, from the V4.1
encoder) do not cover: the efforts it refuses, the image placeholder, the Responses API's effort names, a
forced tool call's grammar in V4.1's spaced DSML tags, and a reply parsed back."""

from __future__ import annotations

import json

import pytest

from mlxseek.errors import ChatFormatError
from mlxseek.formats import parse_reply, render_chat
from mlxseek.formats.constraints import tool_call_grammar

HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("effort", ["xhigh", "medium", 0, 101, 50.0, True])
def test_efforts_the_encoder_refuses(effort):
    with pytest.raises(ChatFormatError, match="1 to 100") as e:
        render_chat(HI, style="v4.1", thinking=True, reasoning_effort=effort)
    assert e.value.field == "reasoning_effort"


def test_the_effort_line_is_written_in_thinking_mode_only():
    think = render_chat(HI, style="v4.1", thinking=True)
    assert think.startswith("<｜begin▁of▁sentence｜><｜System｜>Reasoning Effort: 75 (range 1-100")  # default high
    assert "Reasoning Effort: 100 " in render_chat(HI, style="v4.1", thinking=True, reasoning_effort="max")
    assert render_chat(HI, style="v4.1", thinking=False, reasoning_effort="max") == \
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜></think>"


def test_the_image_placeholder_in_text_is_refused():
    with pytest.raises(ChatFormatError, match="image placeholder") as e:
        render_chat([{"role": "user", "content": "see <｜deepseek_image｜>"}], style="v4.1")
    assert e.value.field == "messages[0].content"


def test_responses_effort_names_map_as_deepseeks_api_does():
    from mlxseek.serve.responses.convert import thinking_controls

    assert thinking_controls("xhigh", "v4.1") == (True, "high")
    assert thinking_controls("low", "v4.1") == (True, "low")
    assert thinking_controls("none", "v4.1") == (False, None)


def test_forced_tool_call_grammar_and_reply_use_spaced_tags():
    grammar = tool_call_grammar("v4.1", [WEATHER])
    assert '<｜DSML｜ calls>' in grammar and '<｜DSML｜ invoke name=\\"get_weather\\">' in grammar
    assert '<｜DSML｜ parameter name=\\"city\\" string=\\"true\\">' in grammar
    text = ('Checking.\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name="get_weather">\n<｜DSML｜ parameter name="city" '
            'string="true">Oslo</｜DSML｜ parameter>\n</｜DSML｜ invoke>\n</｜DSML｜ calls>')
    reply = parse_reply(text, style="v4.1", tools=[WEATHER])
    assert reply.content == "Checking." and not reply.malformed
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]
    # V4's unspaced tags are not V4.1's markup: they stay text
    v4 = text.replace("｜DSML｜ ", "｜DSML｜").replace("｜DSML｜calls", "｜DSML｜tool_calls")
    assert parse_reply(v4, style="v4.1", tools=[WEATHER]).tool_calls == []

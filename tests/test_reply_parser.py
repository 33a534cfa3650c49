"""parse_reply / ReplyParser: golden replies parse back to their messages, any split of a reply parses as
the whole, and malformed tool calls keep their text."""

import json
from pathlib import Path

import pytest

from mlxseek.formats import STYLES, ReplyParser, ToolCall, parse_reply, render_chat
from mlxseek.formats.tokens import CALLS_END

GOLDENS = Path(__file__).parent / "data" / "chat_goldens"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def replies(style: str) -> list[dict]:
    return json.loads((GOLDENS / f"{style}.json").read_text(encoding="utf-8"))["replies"]


REPLIES = [(s, r) for s in STYLES for r in replies(s)]
IDS = [f"{s}:{r['name']}" for s, r in REPLIES]


def calls(reply) -> list[tuple[str, object]]:
    return [(c.name, json.loads(c.arguments)) for c in reply.tool_calls]


def streamed(style, thinking, pieces, **kw):
    parser = ReplyParser(style, thinking=thinking, id_prefix="t", **kw)
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    return parser.reply, deltas


@pytest.mark.parametrize("style,golden", REPLIES, ids=IDS)
def test_golden_reply_parses_back_to_its_message(style, golden):
    reply = parse_reply(golden["text"], style=style, thinking=golden["thinking"])
    assert reply.reasoning == golden["reasoning"]
    assert reply.content == golden["content"]
    assert calls(reply) == [(c["name"], json.loads(c["arguments"])) for c in golden["tool_calls"]]
    # the V3 template closes a calls block only after a second call: a lone call is an unclosed block
    unclosed = style == "v3" and golden["tool_calls"] and CALLS_END not in golden["text"]
    assert reply.malformed == bool(unclosed)


@pytest.mark.parametrize("style", STYLES)
def test_round_trip_counts(style):
    with_calls = [r for r in replies(style) if r["tool_calls"]]
    assert len(with_calls) >= 4
    assert sum(len(r["tool_calls"]) >= 2 for r in with_calls) >= 1


@pytest.mark.parametrize("style,golden", REPLIES, ids=IDS)
def test_every_split_point_gives_the_whole_parse(style, golden):
    text, thinking = golden["text"], golden["thinking"]
    whole = parse_reply(text, style=style, thinking=thinking, id_prefix="t")
    for k in range(len(text) + 1):
        reply, deltas = streamed(style, thinking, [text[:k], text[k:]])
        assert reply == whole, k
        assert "".join(d.content for d in deltas) == whole.content
        assert "".join(d.reasoning for d in deltas) == whole.reasoning
        assert [c for d in deltas for c in d.tool_calls] == whole.tool_calls
    assert streamed(style, thinking, list(text))[0] == whole  # one character at a time


SPECIALS = {"v3": ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "</think>", "<｜end▁of▁sentence｜>"),
            "v3.2": ("<｜DSML｜function_calls>", "</think>", "<｜User｜>"),
            "v4": ("<｜DSML｜tool_calls>", "</think>", "<｜latest_reminder｜>")}
SPECIALS["r1"] = SPECIALS["v3.1"] = SPECIALS["v3"]
SPECIALS["v4-0731"] = SPECIALS["v4"]  # 0731 changes only the prompt's effort paragraph
SPECIALS["v4.1"] = ("<｜DSML｜ calls>", "</think>", "<｜System｜>")  # V4.1's spaced DSML tags, its system token


@pytest.mark.parametrize("style", STYLES)
def test_partial_special_tokens_are_held_back(style):
    for tag in SPECIALS[style]:
        for k in range(1, len(tag)):
            parser = ReplyParser(style, thinking=False)
            assert parser.feed("Hello " + tag[:k]).content == "Hello ", (tag, k)
            rest = parser.feed(tag[k:] + " world")
            assert "Hello " + rest.content + parser.finish().content == parser.reply.content


def test_r1_reasoning_then_answer_with_a_call():
    text = ("Let me think.\n</think>\n\nChecking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
            "get_weather\n```json\n{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    reply = parse_reply(text, style="r1", thinking=True, id_prefix="c")
    assert (reply.reasoning, reply.content) == ("Let me think.\n", "Checking.")
    assert reply.tool_calls == [ToolCall(id="c0", name="get_weather", arguments='{"city": "Oslo"}')]
    assert reply.tool_calls[0].to_openai()["function"]["name"] == "get_weather"
    assert not reply.malformed


@pytest.mark.parametrize("style", ["v3.1", "v3.2", "v4"])
def test_thinking_reply_round_trip_through_render(style):
    """A reply written in thinking mode (reasoning, content, two calls) parses back to what was rendered."""
    call = {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "n": [1, 2]}'}}
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "reasoning_content": "Plan: ask twice.", "content": "One moment.",
             "tool_calls": [call, {**call, "id": "b"}]}]
    prompt = render_chat(msgs[:1], style=style, thinking=True)
    full = render_chat(msgs, style=style, thinking=True, add_generation_prompt=False)
    if style == "v3.1":  # the V3.1 template never renders the latest turn's reasoning: write it as the model does
        text = "Plan: ask twice.</think>" + full[len(render_chat(msgs[:1], style=style, add_generation_prompt=False))
                                                  + len("<｜Assistant｜></think>"):]
    else:
        assert full.startswith(prompt)
        text = full[len(prompt):]
    reply = parse_reply(text.removesuffix("<｜end▁of▁sentence｜>"), style=style, thinking=True, tools=[WEATHER])
    assert (reply.reasoning, reply.content) == ("Plan: ask twice.", "One moment.")
    assert calls(reply) == [("get_weather", {"city": "Oslo", "n": [1, 2]})] * 2 and not reply.malformed


MALFORMED = {
    "v3": ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": ",
           ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{city}\n```"
           "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
           ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>launch\n```json\n{}\n```"
           "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")],
    "v3.1": ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\"",
             "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{oops}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
             "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>launch<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"],
    "v3.2": ["\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\"",
             ("\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"n\" "
             "string=\"false\">not json</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"),
             "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"launch\">\n\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"],
    "v4": ["\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n",
           ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"n\" "
           "string=\"false\">{bad</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"),
           "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"launch\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"],
}
MALFORMED["r1"] = MALFORMED["v3"]
MALFORMED["v4-0731"] = MALFORMED["v4"]
MALFORMED["v4.1"] = [t.replace("｜DSML｜tool_calls", "｜DSML｜ calls").replace("｜DSML｜invoke", "｜DSML｜ invoke")
                     .replace("｜DSML｜parameter", "｜DSML｜ parameter") for t in MALFORMED["v4"]]


@pytest.mark.parametrize("style", STYLES)
def test_malformed_tool_calls_keep_their_text(style):
    for text in MALFORMED[style]:  # unclosed tag, arguments not JSON, unknown tool name
        for pieces in ([text], list(text)):
            reply, _ = streamed(style, False, ["Sure. "] + pieces, tools=[WEATHER])
            assert reply.malformed and reply.tool_calls == [], text
            body = text.strip("\n").split(">", 1)[1][:12]
            assert reply.content.startswith("Sure. ") and body in reply.content, (text, reply.content)


def test_a_good_call_beside_a_bad_one_is_kept():
    good = "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Rome\"}<｜tool▁call▁end｜>"
    bad = "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{nope}<｜tool▁call▁end｜>"
    reply = parse_reply(f"<｜tool▁calls▁begin｜>{good}{bad}<｜tool▁calls▁end｜>", style="v3.1")
    assert calls(reply) == [("get_weather", {"city": "Rome"})]
    assert reply.malformed and "{nope}" in reply.content


def test_tool_calls_are_emitted_only_when_complete():
    parser = ReplyParser("v3.1", thinking=False, id_prefix="x")
    text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Rome\"}<｜tool▁call▁end｜>"
    assert parser.feed(text[:-3]).tool_calls == []
    assert [c.name for c in parser.feed(text[-3:]).tool_calls] == ["get_weather"]


FRAGMENTS = ["plain ", "\n", "\n\n", "</think>", "<think>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>",
             "function", "<｜tool▁sep｜>", "get_weather", "\n```json\n", '{"city": "Rome"}', "\n```",
             "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜DSML｜function_calls>", "<｜DSML｜tool_calls>",
             '<｜DSML｜invoke name="get_weather">', '<｜DSML｜parameter name="city" string="true">', "Rome",
             "</｜DSML｜parameter>", "</｜DSML｜invoke>", "</｜DSML｜function_calls>", "</｜DSML｜tool_calls>",
             "<｜tool▁ca", "<", "｜", "東京",
             '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Rome"}<｜tool▁call▁end｜>',
             '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"n": 1}\n```<｜tool▁call▁end｜>',
             '\n<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="n" string="false">1</｜DSML｜parameter>'
             '\n</｜DSML｜invoke>\n']
FRAGMENTS += [f"<｜tool▁calls▁begin｜>{FRAGMENTS[-3]}<｜tool▁calls▁end｜>",
              f"<｜tool▁calls▁begin｜>{FRAGMENTS[-2]}<｜tool▁calls▁end｜>",
              f"\n\n<｜DSML｜function_calls>{FRAGMENTS[-1]}</｜DSML｜function_calls>",
              f"\n\n<｜DSML｜tool_calls>{FRAGMENTS[-1]}</｜DSML｜tool_calls>"]


def test_any_text_any_split_parses_as_the_whole():
    """Random replies built from the formats' own fragments, cut at random points: never a crash, and
    the streamed result always equals the whole-text parse."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    with_calls = []

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.lists(st.sampled_from(FRAGMENTS), max_size=14), st.lists(st.integers(0, 400), max_size=4),
                      st.sampled_from(STYLES), st.booleans())
    def check(parts, cuts, style, thinking):
        text = "".join(parts)
        whole = parse_reply(text, style=style, thinking=thinking, id_prefix="t")
        points = sorted({min(c, len(text)) for c in cuts})
        pieces = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
        assert streamed(style, thinking, pieces)[0] == whole
        assert all(ch in text for ch in whole.reasoning + whole.content)  # nothing invented
        with_calls.append(bool(whole.tool_calls))

    check()
    assert any(with_calls)  # the examples did reach complete tool calls

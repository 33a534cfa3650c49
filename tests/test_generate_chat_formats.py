"""stream_generate / ChatSession / `mlxseek chat` with a scripted model writing real DeepSeek token streams:
reasoning, content and tool-call deltas come out right for every chat format."""

import json
import uuid

import pytest
from click.testing import CliRunner
from scripted_model import ScriptedModel, real_tokenizer

import mlxseek
from mlxseek.formats import STYLES, parse_reply, render_chat
from mlxseek.generation.chat import ChatSession

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
CALL = {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}}
USER = [{"role": "user", "content": "Weather in Oslo?"}]
THINKING = {"v3": None, "r1": None, "v3.1": True, "v3.2": True, "v4": True, "v4-0731": True, "v4.1": True}


def written_reply(style: str) -> str:
    """What a model of `style` writes for: reasoning (where it reasons), a sentence, two tool calls."""
    msgs = USER + [{"role": "assistant", "content": None if style == "v3" else "Checking.",
                    "tool_calls": [CALL, {**CALL, "id": "y"}]}]
    kw = {"tools": [WEATHER], "thinking": THINKING[style]}
    full = render_chat(msgs, style=style, add_generation_prompt=False, **kw)
    turn = full[len(render_chat(USER, style=style, add_generation_prompt=False, **kw)):]
    turn = turn.removesuffix("<｜end▁of▁sentence｜>")
    if style in ("v3.2", "v4", "v4-0731", "v4.1"):  # the user turn carried <｜Assistant｜><think>; the turn is the reply
        return "I should call the tool twice." + turn
    turn = turn.removeprefix("<｜Assistant｜>").removeprefix("</think>")
    if style == "r1":  # R1's template writes the calls, then the content as a turn of its own
        return "I should call the tool twice.\n</think>\n\nChecking." + turn.split("<｜end▁of▁sentence｜>")[0]
    return ("I should call the tool twice.</think>" if style == "v3.1" else
            "I should call the tool twice.</think>" if style == "v3.1" else "") + turn


@pytest.fixture(scope="module")
def tok():
    return real_tokenizer()


def run(tok, style, reply_text):
    prompt = render_chat(USER, style=style, tools=[WEATHER], thinking=THINKING[style])
    ids = tok.encode(reply_text, add_special_tokens=False)
    model = ScriptedModel(ids, vocab_size=len(tok.vocab), eos_token_id=tok.eos_token_id)
    records = list(mlxseek.stream_generate(model, tok, prompt, max_tokens=len(ids) + 5, chat_style=style,
                                           tools=[WEATHER]))
    return ids, records


@pytest.mark.parametrize("style", STYLES)
def test_stream_generate_splits_reasoning_content_and_tool_calls(tok, style):
    text = written_reply(style)
    ids, records = run(tok, style, text)
    assert "".join(r.text for r in records) == text  # special tokens kept as text; EOS ends it, unseen
    assert records[-1].finish_reason == "stop" and len(records) == len(ids) + 1
    expected = parse_reply(text, style=style, thinking=style != "v3", id_prefix="z")
    assert "".join(r.reasoning for r in records) == expected.reasoning
    assert "".join(r.content for r in records) == expected.content == ("" if style == "v3" else "Checking.")
    calls = [c for r in records for c in r.tool_calls]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo", "days": 2})] * 2
    assert expected.reasoning.rstrip("\n") == ("" if style == "v3" else "I should call the tool twice.")
    assert len({c.id for c in calls}) == 2
    end_tag = {"v3.2": "</｜DSML｜invoke>", "v4": "</｜DSML｜invoke>", "v4-0731": "</｜DSML｜invoke>",
               "v4.1": "</｜DSML｜ invoke>"}.get(style, "<｜tool▁call▁end｜>")  # V4.1's DSML tags have a space
    seen, emitted = "", 0
    for r in records:  # a call comes out with the record whose text completes it, never before or after
        seen += r.text
        emitted += len(r.tool_calls)
        assert emitted == seen.count(end_tag)
    assert not any(r.malformed for r in records) or style == "v3"  # V3's template leaves a lone block open


@pytest.mark.parametrize("style", ["v3.1", "v4"])
def test_malformed_call_in_a_stream_is_kept_as_content(tok, style):
    bad = {"v3.1": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{city: Oslo}"
                   "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
           "v4": "</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter "
                 "name=\"days\" string=\"false\">two</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"}
    text = ("</think>" if style == "v3.1" else "") + bad[style]
    _, records = run(tok, style, text)
    assert records[-1].malformed and not any(r.tool_calls for r in records)
    content = "".join(r.content for r in records)
    assert ("{city: Oslo}" if style == "v3.1" else ">two<") in content


def test_chat_session_tool_round_trip(tok):
    text = written_reply("v3.1")
    model = ScriptedModel(tok.encode(text, add_special_tokens=False), vocab_size=len(tok.vocab))
    chat = ChatSession(model, tok, chat_style="v3.1", thinking=True, tools=[WEATHER], max_tokens=200)
    records = list(chat.send("Weather in Oslo?"))
    calls = [c for r in records for c in r.tool_calls]
    assert chat.pending_calls == [c.id for c in calls] and len(calls) == 2
    assert chat.messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chat.messages[-1]["reasoning_content"] == "I should call the tool twice."
    assert list(chat.send_tool_result(calls[0].id, "3C")) == []  # one call still unanswered
    again = list(chat.send_tool_result(calls[1].id, "5C"))
    assert again and [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    seen = tok.decode(chat.tokens)
    assert "<｜tool▁output▁begin｜>3C<｜tool▁output▁end｜><｜tool▁output▁begin｜>5C<｜tool▁output▁end｜>" in seen
    with pytest.raises(mlxseek.errors.ChatFormatError, match="not awaiting"):
        list(chat.send_tool_result("nope", "x"))


def test_cli_chat_prints_tool_calls_and_takes_tool_results(tok, tmp_path, monkeypatch):
    import mlxseek.cli.chat as cli_chat
    from mlxseek.cli import main

    text = written_reply("v4")
    model = ScriptedModel(tok.encode(text, add_special_tokens=False), vocab_size=len(tok.vocab))
    tok.chat_style = "v4"
    monkeypatch.setattr(cli_chat, "load_for_text", lambda _dir: (model, tok))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0))
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    prefix = "call_000000000000_"
    stdin = f"Weather in Oslo?\n/tool {prefix}0 3C\n/tool {prefix}1 5C\n/exit\n"
    out = CliRunner().invoke(main, ["chat", "--model", str(tmp_path), "--thinking", "--tools", str(tools)],
                             input=stdin)
    tok.chat_style = None
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in out.output.splitlines() if x.startswith("{")]
    assert [x["id"] for x in lines[:2]] == [f"{prefix}0", f"{prefix}1"]
    assert lines[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'}
    assert "[thinking] I should call the tool twice." in out.output and "Checking." in out.output
    assert len(lines) == 4  # the reply after both results repeats the script: two more calls

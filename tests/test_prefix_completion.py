"""Chat prefix completion (mlxseek.formats.render_prefix_completion) in every chat style, against the goldens
rendered by DeepSeek's official templates and encoders: a finished assistant turn marked `prefix: true`
renders as the official text without its end-of-sentence token, and the reply parser continues it."""

import json
from pathlib import Path

import pytest

from mlxseek.errors import ChatFormatError
from mlxseek.formats import STYLES, ReplyParser, render_chat, render_prefix_completion
from mlxseek.formats.tokens import EOS, THINK_END

GOLDENS = Path(__file__).parent / "data" / "chat_goldens"


def final_answers():
    """Golden conversations that end with a plain assistant answer (no tool calls)."""
    for style in STYLES:
        for case in json.loads((GOLDENS / f"{style}.json").read_text(encoding="utf-8"))["conversations"]:
            last = case["messages"][-1]
            if last["role"] == "assistant" and not last.get("tool_calls"):
                yield style, case


CASES = list(final_answers())


def as_prefix(case: dict) -> list[dict]:
    return case["messages"][:-1] + [dict(case["messages"][-1], prefix=True)]


def test_every_style_has_a_final_answer_golden():
    assert {s for s, _ in CASES} == set(STYLES)


@pytest.mark.parametrize("style,case", CASES, ids=[f"{s}:{c['name']}" for s, c in CASES])
def test_prefix_renders_the_official_turn_left_open(style, case):
    msgs = as_prefix(case)
    p = render_prefix_completion(msgs, style=style, tools=case.get("tools"), thinking=case.get("thinking"))
    last = case["messages"][-1]
    head = render_chat(case["messages"][:-1], style=style, tools=case.get("tools"), thinking=case.get("thinking"))
    if style in ("r1", "v3.1") and head.rstrip("\n").endswith("<think>"):
        # R1 and V3.1 drop reasoning from finished turns, but a continued turn keeps the reasoning block
        # its generation prompt opened: closed before the content, as the model itself writes it
        assert p.text == head + (last.get("reasoning_content") or "") + THINK_END + last["content"]
    else:
        assert p.text + EOS == case["text"]
    assert p.continuation and not p.in_reasoning


@pytest.mark.parametrize("style", ["r1", "v3.1", "v3.2", "v4"])
def test_a_reasoning_prefix_leaves_the_reply_inside_reasoning(style):
    msgs = [{"role": "user", "content": "Is 91 prime?"},
            {"role": "assistant", "content": "", "reasoning_content": "91 = 7 *", "prefix": True}]
    p = render_prefix_completion(msgs, style=style, thinking=True)
    assert p.text.endswith("<think>91 = 7 *") or p.text.endswith("<think>\n91 = 7 *")
    assert p.in_reasoning and p.continuation
    parser = ReplyParser(style, thinking=p.in_reasoning, continuation=p.continuation)
    parser.feed(" 13</think>No.")
    parser.finish()
    assert (parser.reply.reasoning, parser.reply.content) == (" 13", "No.")


def test_a_content_prefix_keeps_leading_newlines_of_the_continuation():
    # R1 replies start with newlines the parser drops; a continued turn is not a fresh start
    msgs = [{"role": "user", "content": "code"}, {"role": "assistant", "content": "```python", "prefix": True}]
    p = render_prefix_completion(msgs, style="r1")
    assert p.text.endswith("</think>```python") and not p.in_reasoning

    def content(**kw) -> str:
        parser = ReplyParser("r1", thinking=False, **kw)
        parser.feed("\nprint(1)\n```")
        parser.finish()
        return parser.reply.content

    assert content(continuation=p.continuation) == "\nprint(1)\n```"
    assert content() == "print(1)\n```"


@pytest.mark.parametrize("msgs,field", [
    ([{"role": "assistant", "content": "x", "prefix": True}, {"role": "user", "content": "hi"}],
     "messages[0].prefix"),
    ([{"role": "user", "content": "hi", "prefix": True}], "messages[0].prefix"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "prefix": "yes"}],
     "messages[1].prefix"),
])
def test_misplaced_prefix_is_refused_naming_it(msgs, field):
    with pytest.raises(ChatFormatError, match=field.replace("[", r"\[").replace("]", r"\]")):
        render_prefix_completion(msgs, style="v3")

"""DeepSeek V3.1 / V3.1-Terminus: the `chat_template` of their tokenizer_config.json, as Python.

Thinking is a toggle: the turn after a user message opens with `<think>` (thinking) or `</think>`.
Tool calls are `NAME<｜tool▁sep｜>ARGS` with raw JSON arguments; tool results follow without a block
opener, and no generation prompt is added after them. Earlier answers keep only the text after their
first `</think>`; `reasoning_content` is never rendered. Tool schemas are not rendered.
"""

from __future__ import annotations

from .tokens import (
    ASSISTANT,
    BOS,
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    EOS,
    OUTPUT_BEGIN,
    OUTPUT_END,
    THINK_END,
    THINK_START,
    TOOL_SEP,
    USER,
)
from .v3 import system_prompt


def plain_call(call: dict) -> str:
    return f"{CALL_BEGIN}{call['name']}{TOOL_SEP}{call['arguments']}{CALL_END}"


def render(messages: list[dict], *, add_generation_prompt: bool, thinking: bool) -> str:
    out = [BOS, system_prompt(messages)]
    in_tool, last_user = False, False
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            in_tool, last_user = False, True
            out.append(USER + content)
        elif role == "assistant" and m["tool_calls"] is not None:
            if last_user:
                out.append(ASSISTANT + THINK_END)
            last_user, in_tool = False, False
            calls = [plain_call(c) for c in m["tool_calls"]]
            if calls:
                calls[0] = (content or "") + CALLS_BEGIN + calls[0]
            out.append("".join(calls) + CALLS_END + EOS)
        elif role == "assistant":
            if last_user:
                out.append(ASSISTANT + THINK_END)
            last_user = False
            if in_tool:
                out.append(content + EOS)
                in_tool = False
            else:
                out.append((content.split(THINK_END, 1)[1] if THINK_END in content else content) + EOS)
        elif role == "tool":
            last_user, in_tool = False, True
            out.append(OUTPUT_BEGIN + content + OUTPUT_END)
    if add_generation_prompt and last_user and not in_tool:
        out.append(ASSISTANT + (THINK_START if thinking else THINK_END))
    return "".join(out)

"""DeepSeek R1: the R1 `chat_template` (as shipped with R1 and its distills), as Python.

Like V3's, plus: only the last system prompt is kept, an earlier answer keeps only the text after its
last `</think>` (reasoning of earlier turns is dropped; `reasoning_content` is never rendered), the calls
block is closed after every tool-call turn, and the generation prompt opens reasoning with `<think>\\n`.
"""

from __future__ import annotations

from .tokens import (
    ASSISTANT,
    BOS,
    CALLS_BEGIN,
    CALLS_END,
    EOS,
    OUTPUTS_END,
    THINK_END,
    THINK_START,
    USER,
)
from .v3 import fenced_call, tool_output


def render(messages: list[dict], *, add_generation_prompt: bool) -> str:
    systems = [m["content"] for m in messages if m["role"] == "system"]
    out = [BOS, systems[-1] if systems else ""]
    first_call_done, in_tool, output_first = False, False, True
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            in_tool = False
            out.append(USER + content)
        if role == "assistant" and m["tool_calls"]:
            in_tool = False
            for call in m["tool_calls"]:
                if not first_call_done:
                    out.append(ASSISTANT + CALLS_BEGIN + fenced_call(call))
                    first_call_done = True
                else:
                    out.append("\n" + fenced_call(call))
            out.append(CALLS_END + EOS)
        if role == "assistant" and content is not None:
            if in_tool:
                out.append(OUTPUTS_END + content + EOS)
                in_tool = False
            else:
                out.append(ASSISTANT + content.split(THINK_END)[-1] + EOS)
        if role == "tool":
            in_tool = True
            out.append(tool_output(content, output_first))
            output_first = False
    if in_tool:
        out.append(OUTPUTS_END)
    if add_generation_prompt and not in_tool:
        out.append(ASSISTANT + THINK_START + "\n")
    return "".join(out)

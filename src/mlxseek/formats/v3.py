"""DeepSeek V2 / V3 / V3-0324: the `chat_template` of the checkpoints' tokenizer_config.json, as Python.

Mirrors the official template line for line, quirks included, so prompts are byte-identical:
system prompts are joined by a blank line after BOS; a tool-call turn opens the calls block only for the
first call of the conversation and closes it only after a second call; tool results open their block once.
Tool schemas are not rendered (the template has no place for them: describe tools in the system prompt).
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
    OUTPUTS_BEGIN,
    OUTPUTS_END,
    TOOL_SEP,
    USER,
)


def fenced_call(call: dict) -> str:
    """One call as V3 and R1 write it: type, name, then the arguments in a ```json fence."""
    return f"{CALL_BEGIN}function{TOOL_SEP}{call['name']}\n```json\n{call['arguments']}\n```{CALL_END}"


def system_prompt(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] == "system")


def tool_output(content: str, first: bool) -> str:
    return (OUTPUTS_BEGIN if first else "\n") + OUTPUT_BEGIN + content + OUTPUT_END


def render(messages: list[dict], *, add_generation_prompt: bool) -> str:
    out = [BOS, system_prompt(messages)]
    first_call_done, in_tool, output_first = False, False, True
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            in_tool = False
            out.append(USER + content)
        elif role == "assistant" and content is None:
            in_tool = False
            for call in m["tool_calls"] or []:
                if not first_call_done:
                    out.append(ASSISTANT + CALLS_BEGIN + fenced_call(call))
                    first_call_done = True
                else:
                    out.append("\n" + fenced_call(call) + CALLS_END + EOS)
        elif role == "assistant":
            out.append((OUTPUTS_END if in_tool else ASSISTANT) + content + EOS)
            in_tool = False
        elif role == "tool":
            in_tool = True
            out.append(tool_output(content, output_first))
            output_first = False
    if in_tool:
        out.append(OUTPUTS_END)
    if add_generation_prompt and not in_tool:
        out.append(ASSISTANT)
    return "".join(out)

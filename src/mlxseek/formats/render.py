"""render_chat: OpenAI-shaped messages to the prompt text of any DeepSeek chat format."""

from __future__ import annotations

from ..errors import ChatFormatError
from . import r1, v3, v4, v31, v32, v41
from .messages import BASE_ROLES, normalize_messages, tool_functions
from .style import V4_STYLES, check_style, check_thinking, style_of_tokenizer


def render_chat(messages: list[dict], *, style: str | None = None, tools: list[dict] | None = None,
                thinking: bool | None = None, reasoning_effort: str | int | None = None,
                add_generation_prompt: bool = True, tokenizer=None) -> str:
    """The prompt text for `messages` in `style`'s format, BOS token included (encode it without adding
    special tokens). `style=None` reads the format off `tokenizer`'s checkpoint.

    For v3/r1/v3.1 `tools` do not change the prompt (their official templates do not render schemas;
    describe tools in the system prompt). For v3.2/v4/v4-0731/v4.1 the encoders always end a final user turn with
    the assistant prefix, so `add_generation_prompt` only matters for v3/r1/v3.1. `reasoning_effort`: v4 'high'
    or 'max', v4-0731 'low', 'high' or 'max', v4.1 'low', 'high', 'max' or an integer from 1 to 100.
    Raises ChatFormatError naming the message index and field of anything it cannot render.
    """
    if style is None:
        if tokenizer is None:
            raise ChatFormatError("render_chat needs style= or the checkpoint's tokenizer=")
        style = style_of_tokenizer(tokenizer)
    check_style(style)
    think = check_thinking(style, thinking)
    functions = tool_functions(tools)
    _check_effort(style, reasoning_effort)
    msgs = normalize_messages(messages, roles=v4.ROLES if style in V4_STYLES else BASE_ROLES)
    if style == "v3":
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and m["tool_calls"] and m["content"] is not None:
                raise ChatFormatError(f"messages[{i}].content: the v3 template renders an assistant turn "
                                      "with tool_calls only when its content is empty or null",
                                      field=f"messages[{i}].content")
        return v3.render(msgs, add_generation_prompt=add_generation_prompt)
    if style == "r1":
        return r1.render(msgs, add_generation_prompt=add_generation_prompt)
    if style == "v3.1":
        return v31.render(msgs, add_generation_prompt=add_generation_prompt, thinking=think)
    if style == "v3.2":
        return v32.render(msgs, tools=functions, thinking=think)
    if style == "v4.1":
        return v41.render(msgs, tools=functions, thinking=think, reasoning_effort=reasoning_effort)
    return v4.render(msgs, tools=functions, thinking=think, reasoning_effort=reasoning_effort,
                     v0731=style == "v4-0731")


def _check_effort(style: str, reasoning_effort: str | int | None) -> None:
    if reasoning_effort is None:
        return
    if style == "v4.1":
        v41.effort_budget(reasoning_effort)  # raises for what the encoder refuses
        return
    if style == "v4-0731" and reasoning_effort not in v4.REASONING_EFFORTS_0731:
        raise ChatFormatError(f"reasoning_effort={reasoning_effort!r}: the v4-0731 format takes 'low', 'high' "
                              "or 'max' (in thinking mode)", field="reasoning_effort")
    if style != "v4-0731" and (style != "v4" or reasoning_effort not in v4.REASONING_EFFORTS):
        raise ChatFormatError(f"reasoning_effort={reasoning_effort!r}: only the v4 formats take it, v4 as "
                              "'high' or 'max', v4-0731 as 'low', 'high' or 'max', v4.1 as those or 1-100 "
                              "(in thinking mode)",
                              field="reasoning_effort")

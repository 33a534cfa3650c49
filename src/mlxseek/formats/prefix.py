"""Chat prefix completion (DeepSeek's API, "Chat Prefix Completion (Beta)"): the last message is an
assistant turn with `"prefix": true`, and the model continues it instead of starting a new reply.

The conversation before that message is rendered as usual, generation prompt included (so every style
opens the assistant turn exactly as its template does: `<｜Assistant｜>`, `<think>` or `</think>` in
thinking mode, or after tool results), and the prefix is appended open, without the end-of-sentence token.
In thinking mode the prefix's `reasoning_content` continues the open reasoning block; a `content` prefix
closes it with `</think>` first, as the encoders write a finished turn (`reasoning</think>content`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChatFormatError
from .render import render_chat
from .style import prompt_opens_thinking, style_of_tokenizer
from .tokens import THINK_END


@dataclass(frozen=True)
class PrefixPrompt:
    text: str            # the prompt, BOS first, ending inside the assistant turn
    in_reasoning: bool   # the reply starts inside a reasoning block
    continuation: bool   # the prompt ends with prefix text: the reply continues it, nothing is re-opened
    answer: str = ""     # the answer text the prompt ends with (a content prefix); a grammar continues it


def prefix_message_index(messages) -> int | None:
    """Index of the message marked `prefix: true` (it must be the last one, an assistant turn), or None.
    Raises ChatFormatError naming `messages[i].prefix` otherwise."""
    marked = [i for i, m in enumerate(messages or ()) if isinstance(m, dict) and m.get("prefix") is not None]
    for i in marked:
        value = messages[i]["prefix"]
        if not isinstance(value, bool):
            raise ChatFormatError(f"messages[{i}].prefix must be true or false, not {type(value).__name__}",
                                  field=f"messages[{i}].prefix")
    marked = [i for i in marked if messages[i]["prefix"]]
    if not marked:
        return None
    i = marked[0]
    if i != len(messages) - 1:
        raise ChatFormatError(f"messages[{i}].prefix: only the last message may be a prefix to continue "
                              f"(it is message {i} of {len(messages)})", field=f"messages[{i}].prefix")
    if messages[i].get("role") != "assistant":
        raise ChatFormatError(f"messages[{i}].prefix: only an assistant message can be continued, "
                              f"not a {messages[i].get('role')!r} one", field=f"messages[{i}].prefix")
    if messages[i].get("tool_calls"):
        raise ChatFormatError(f"messages[{i}].prefix: a prefix message cannot carry tool_calls",
                              field=f"messages[{i}].prefix")
    return i


def render_prefix_completion(messages: list[dict], *, style: str | None = None, tools: list[dict] | None = None,
                             thinking: bool | None = None, reasoning_effort: str | None = None,
                             tokenizer=None) -> PrefixPrompt:
    """The prompt that continues `messages[-1]` (an assistant message with `prefix: true`); see the module
    docstring. Raises ChatFormatError naming the message and field it cannot render."""
    i = prefix_message_index(messages)
    if i is None:
        raise ChatFormatError(f"messages[{len(messages) - 1}].prefix: the last message is not marked "
                              "prefix: true", field=f"messages[{len(messages) - 1}].prefix")
    if style is None:
        style = style_of_tokenizer(tokenizer)
    last = messages[i]
    content = _text(last.get("content"), i, "content")
    reasoning = _text(last.get("reasoning_content"), i, "reasoning_content")
    head = render_chat(messages[:i], style=style, tools=tools, thinking=thinking,
                       reasoning_effort=reasoning_effort, tokenizer=tokenizer)
    if not prompt_opens_thinking(style, thinking, prompt=head):
        # no open reasoning block here (thinking off, or a format without reasoning): only content continues
        return PrefixPrompt(head + content, in_reasoning=False, continuation=bool(content), answer=content)
    if content:
        return PrefixPrompt(head + reasoning + THINK_END + content, in_reasoning=False, continuation=True,
                            answer=content)
    return PrefixPrompt(head + reasoning, in_reasoning=True, continuation=bool(reasoning))


def _text(value, i: int, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise ChatFormatError(f"messages[{i}].{field} must be a string or text parts, not {type(value).__name__}",
                          field=f"messages[{i}].{field}")

"""Chat turns between the HTTP APIs and the engine: messages -> prompt tokens and the reply's format
(mlxseek.formats), generation length checks, and the engine's events -> reasoning / content / tool-call chunks
(parsed by the engine's generation records with that format, not here).

Both APIs hand this module OpenAI-shaped messages and tools; the Anthropic layer converts its blocks first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from ..errors import ChatFormatError
from ..formats import ReplyFormat
from .api_errors import ApiError
from .dispatch import WAITING
from .state import ServedModel

MAX_STOPS = 16


@dataclass(frozen=True)
class ChatPrompt:
    tokens: list[int]
    style: str
    thinking: bool            # the generation prompt leaves the model inside a reasoning block
    tools: Optional[list]     # the tools rendered: a call to any other name parses as malformed text
    continuation: bool = False  # the prompt ends inside the reply (chat prefix completion): the reply continues it
    answer: str = ""          # the start of the answer the prompt already holds (a content prefix)

    @property
    def reply(self) -> ReplyFormat:
        """The reply's format, decided here once: the engine's generation parses the reply with it."""
        return ReplyFormat(self.style, thinking=self.thinking, tools=self.tools, continuation=self.continuation,
                           answer=self.answer)


@dataclass
class Chunk:
    """What one engine event adds to the reply, parsed."""

    event: Any                # the engine's TokenEvent
    reasoning: str = ""
    content: str = ""
    tool_calls: list = field(default_factory=list)


def resolve_thinking(template_kwargs: Optional[dict], toggle: Optional[str]) -> Optional[bool]:
    """The thinking switch: chat_template_kwargs {thinking | enable_thinking} first, then DeepSeek's
    thinking.type ("enabled"/"disabled"); None leaves the style's default."""
    for key in ("thinking", "enable_thinking"):
        value = (template_kwargs or {}).get(key)
        if value is not None:
            if not isinstance(value, bool):
                raise ApiError(400, f"chat_template_kwargs.{key} must be true or false",
                               param=f"chat_template_kwargs.{key}")
            return value
    if toggle is not None:
        return toggle == "enabled"
    return None


def render_prompt(served: ServedModel, messages: list[dict], *, tools: Optional[list[dict]],
                  thinking: Optional[bool], reasoning_effort: Optional[str] = None) -> ChatPrompt:
    from ..formats import prefix_message_index, prompt_opens_thinking, render_chat, render_prefix_completion

    if served.style is None:
        raise ApiError(400, "this model has no chat format; use /v1/completions with a raw prompt", param="messages")
    kw = dict(style=served.style, tools=tools or None, thinking=thinking, reasoning_effort=reasoning_effort,
              tokenizer=served.tokenizer)
    try:
        if prefix_message_index(messages) is not None:  # continue the last assistant message
            p = render_prefix_completion(messages, **kw)
            text, opens, continuation, answer = p.text, p.in_reasoning, p.continuation, p.answer
        else:
            text = render_chat(messages, **kw)
            opens, continuation, answer = prompt_opens_thinking(served.style, thinking, prompt=text), False, ""
    except ChatFormatError as e:
        raise ApiError(400, str(e), param=request_field(e.field)) from None
    # the rendered text already holds the BOS token: do not add special tokens again
    tokens = list(served.tokenizer.encode(text, add_special_tokens=False))
    check_prompt_length(served, len(tokens), "messages")
    return ChatPrompt(tokens=tokens, style=served.style, tools=tools or None, thinking=opens,
                      continuation=continuation, answer=answer)


def request_field(field: Optional[str]) -> str:
    """A library error's field as the request's dotted path ("messages[2].content" -> "messages.2.content");
    an error without one is about the messages as a whole."""
    return re.sub(r"\[(\d+)\]", r".\1", field) if field else "messages"


def stop_strings(stop, param: str) -> tuple[str, ...]:
    out = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(out) > MAX_STOPS:
        raise ApiError(400, f"{param}: at most {MAX_STOPS} stop strings", param=param)
    if any(s == "" for s in out):
        raise ApiError(400, f"{param}: stop strings must not be empty", param=param)
    return out


def check_prompt_length(served: ServedModel, n: int, param: str) -> None:
    if n == 0:
        raise ApiError(400, f"{param}: the prompt is empty", param=param)
    if n >= served.context_length:
        raise ApiError(400, f"{param}: the prompt is {n} tokens but the model's context is {served.context_length} "
                       "tokens; shorten it", param=param, code="context_length_exceeded")


def generation_budget(served: ServedModel, n_prompt: int, requested: Optional[int]) -> int:
    """max_tokens for the engine: the request's, clamped to the server's cap (--max-tokens; default the model's
    context) and to the context the prompt leaves. A clamped reply ends with finish `length` (Anthropic:
    `max_tokens`) instead of a 400: agents such as Claude Code ask for 32000 by habit and give up on a refusal.
    A prompt that alone fills the context is still a 400 (check_prompt_length)."""
    cap = served.limits.max_tokens or served.context_length
    return max(1, min(requested or cap, cap, served.context_length - n_prompt))


async def reply_chunks(events: AsyncIterator) -> AsyncIterator[Chunk]:
    """The engine's events as reply chunks. The reply was parsed once, by the engine's generation
    records (SamplingParams.reply = ChatPrompt.reply): this only reads what each event carries."""
    try:
        async for ev in events:
            if ev is WAITING:  # a keepalive stream's first token is late: nothing to read yet
                yield Chunk(ev)
                continue
            yield Chunk(ev, ev.reasoning, ev.content, list(ev.tool_calls))
    finally:  # closing this stream closes the engine's at once (cancels the generation), not at GC
        await events.aclose()


def as_text(content: Any) -> str:
    """OpenAI message content (a string, text parts or None) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)

"""The Messages API's streaming event sequence for one parsed reply."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import AsyncIterator

from .anthropic_map import new_id, stop_reason, usage
from .chat_bridge import Chunk
from .dispatch import WAITING

_EMPTY = {"thinking": {"type": "thinking", "thinking": "", "signature": ""}, "text": {"type": "text", "text": ""}}
_DELTA = {"thinking": ("thinking_delta", "thinking"), "text": ("text_delta", "text")}


class _Blocks:
    """Opens, fills and closes content blocks in order; one block is open at a time."""

    def __init__(self):
        self.index, self.open = -1, None

    def close(self) -> list[dict]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def start(self, kind: str, block: dict) -> list[dict]:
        out = self.close()
        self.index += 1
        self.open = kind
        return out + [{"type": "content_block_start", "index": self.index, "content_block": block}]

    def text(self, kind: str, text: str) -> list[dict]:
        out = [] if self.open == kind else self.start(kind, dict(_EMPTY[kind]))
        delta_type, field = _DELTA[kind]
        return out + [{"type": "content_block_delta", "index": self.index,
                       "delta": {"type": delta_type, field: text}}]

    def tool(self, call) -> list[dict]:
        out = self.start("tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
        out.append({"type": "content_block_delta", "index": self.index,
                    "delta": {"type": "input_json_delta", "partial_json": call.arguments or "{}"}})
        return out + self.close()


def _check_json(arguments: str) -> str:
    try:
        return arguments if isinstance(json.loads(arguments or "{}"), dict) else json.dumps({"arguments": arguments})
    except ValueError:
        return json.dumps({"arguments": arguments})


async def message_events(served, chunks: AsyncIterator[Chunk], *, prompt_tokens: int) -> AsyncIterator[dict]:
    """The event sequence; while a long prompt is prefilled (dispatch.WAITING) it sends `ping`s, after a
    message_start whose usage counts the whole prompt as input (the cache hit is known only later)."""
    blocks, saw_calls, last = _Blocks(), False, None
    started = False
    try:
        async for c in chunks:
            ev = c.event
            if not started:
                started = True
                opening = {"input_tokens": prompt_tokens, "cache_read_input_tokens": 0,
                           "cache_creation_input_tokens": 0, "output_tokens": 0}
                yield {"type": "message_start", "message": {
                    "id": new_id(), "type": "message", "role": "assistant", "model": served.model_id, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": opening if ev is WAITING else usage(ev, output=0)}}
                yield {"type": "ping"}
                if ev is WAITING:
                    continue
            if ev is WAITING:
                yield {"type": "ping"}
                continue
            last = ev
            events: list[dict] = []
            if c.reasoning:
                events += blocks.text("thinking", c.reasoning)
            if c.content:
                events += blocks.text("text", c.content)
            for call in c.tool_calls:
                saw_calls = True
                events += blocks.tool(replace(call, arguments=_check_json(call.arguments)))
            for e in events:
                yield e
    finally:
        await chunks.aclose()
    if last is None:
        return
    if blocks.index < 0:  # no text at all: still one (empty) text block, as the API always sends content
        for e in blocks.start("text", dict(_EMPTY["text"])):
            yield e
    for e in blocks.close():
        yield e
    yield {"type": "message_delta", "delta": {"stop_reason": stop_reason(last.finish_reason, saw_calls),
                                              "stop_sequence": None}, "usage": usage(last)}
    yield {"type": "message_stop"}

"""Anthropic Messages: content blocks <-> the OpenAI-shaped messages mlxseek.formats renders, and the parsed
reply -> a message object or its streaming event sequence
(message_start, content_block_start/delta/stop per block, message_delta, message_stop)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Optional

from ..errors import ChatFormatError
from .api_errors import ApiError
from .chat_bridge import Chunk
from .model_names import check_name
from .schemas_anthropic import CountTokensRequest

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
log = logging.getLogger("mlxseek.serve")


def check_model(served, req: CountTokensRequest) -> None:
    check_name(served, req.model, code=None)


def _text(content) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(b.text for b in content)


def to_messages(req: CountTokensRequest) -> list[dict]:
    out: list[dict] = []
    if req.system:
        out.append({"role": "system", "content": _text(req.system)})
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "system":
            out.append({"role": "system", "content": "".join(b.text for b in m.content if b.type == "text")})
        elif m.role == "user":
            out.extend(_user_blocks(m.content))
        else:
            out.append(_assistant_blocks(m.content, i))
    return out


def _user_blocks(blocks) -> list[dict]:
    # tool results answer the previous assistant turn, so they come before the user's own text
    results = [{"role": "tool", "tool_call_id": b.tool_use_id, "content": _text(b.content)}
               for b in blocks if b.type == "tool_result"]
    text = "".join(b.text for b in blocks if b.type == "text")
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _assistant_blocks(blocks, index: int) -> dict:
    if any(b.type == "tool_result" for b in blocks):
        raise ApiError(400, f"messages.{index}.content: tool_result blocks belong in user messages",
                       param=f"messages.{index}.content")
    d: dict[str, Any] = {"role": "assistant", "content": "".join(b.text for b in blocks if b.type == "text")}
    reasoning = "".join(b.thinking for b in blocks if b.type == "thinking")
    if reasoning:
        d["reasoning_content"] = reasoning
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
             for b in blocks if b.type == "tool_use"]
    if calls:
        d["tool_calls"] = calls
    return d


def to_tools(req: CountTokensRequest) -> Optional[list[dict]]:
    server_tools = sorted({t.type for t in req.tools or [] if t.type not in (None, "custom")})
    if server_tools:
        log.warning("messages: ignored server tools of types %s; this server runs client tools only", server_tools)
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema or {"type": "object"}}}
             for t in req.tools or [] if t.type in (None, "custom")]
    choice = req.tool_choice
    if choice is None or choice.type in ("auto", "any"):
        if choice is not None and choice.type == "any" and not tools:
            raise ApiError(400, "tool_choice: 'any' needs at least one tool in tools", param="tool_choice")
        return tools or None
    if choice.type == "none":
        return None
    named = [t for t in tools if t["function"]["name"] == choice.name]
    if not named:
        raise ApiError(400, f"tool_choice.name: no tool named '{choice.name}' in tools", param="tool_choice.name")
    return named


def thinking(req: CountTokensRequest, style: Optional[str]) -> Optional[bool]:
    """The thinking switch for `style`. Anthropic clients (Claude-style agents) send `thinking` by habit,
    and the API lets a model think less than allowed, so a switch the format cannot honour (V3 has no
    reasoning, R1 always reasons) falls back to the format's default instead of failing the request."""
    from ..formats import prompt_opens_thinking

    if req.thinking is None or req.thinking.type == "adaptive" or style is None:
        return None
    wanted = req.thinking.type == "enabled"
    try:
        prompt_opens_thinking(style, wanted)
    except ChatFormatError:
        return None
    return wanted


def tool_input(arguments: str) -> dict:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    # a malformed argument string is still handed over, so the client can see what the model wrote
    return value if isinstance(value, dict) else {"arguments": arguments}


def stop_reason(raw: str, saw_tool_calls: bool) -> str:
    return "tool_use" if saw_tool_calls and raw == "stop" else _STOP.get(raw, "end_turn")


def usage(ev, *, output: Optional[int] = None) -> dict:
    return {"input_tokens": ev.prompt_tokens - ev.cached_tokens, "cache_read_input_tokens": ev.cached_tokens,
            "cache_creation_input_tokens": 0,
            "output_tokens": ev.generation_tokens if output is None else output}


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_block(call) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}


def message(served, chunks: list[Chunk]) -> dict:
    last = chunks[-1].event
    reasoning = "".join(c.reasoning for c in chunks)
    text = "".join(c.content for c in chunks)
    calls = [t for c in chunks for t in c.tool_calls]
    content: list[dict] = []
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text or not calls:
        content.append({"type": "text", "text": text})
    content += [_tool_block(t) for t in calls]
    return {"id": new_id(), "type": "message", "role": "assistant", "model": served.model_id, "content": content,
            "stop_reason": stop_reason(last.finish_reason, bool(calls)), "stop_sequence": None,
            "usage": usage(last)}

"""OpenAI-shaped chat messages, checked and normalized once before any style renders them.

Every problem raises ChatFormatError naming the message index and the field, e.g.
`messages[3].tool_calls[0].function.arguments: ...`. Normalized messages are plain dicts:
{"role", "content": str | None, "reasoning_content": str | None,
 "tool_calls": [{"id", "name", "arguments"}] | None, "tool_call_id": str | None}.
"""

from __future__ import annotations

import json

from ..errors import ChatFormatError

BASE_ROLES = ("system", "user", "assistant", "tool")


def _where(i: int, field: str) -> str:
    return f"messages[{i}].{field}"


def _bad(where: str, why: str) -> ChatFormatError:
    """The error about field `where`: named first in the message and carried as `field` (a server's `param`)."""
    return ChatFormatError(where + why, field=where)


def _text(value, i: int, field: str, *, optional: bool) -> str | None:
    """Plain text, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if value is None:
        if optional:
            return None
        raise _bad(_where(i, field), " is missing; give it a string (\"\" for empty)")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for k, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad(_where(i, f'{field}[{k}]'), ": only text parts "
                                      '({"type": "text", "text": ...}) can be rendered')
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(_where(i, field), f" must be a string, not {type(value).__name__}")


def _arguments(value, where: str) -> str:
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise _bad(where, f" must be a JSON object as a string, not {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise _bad(where, f" is not JSON ({e}); send the arguments as a JSON object string") from None
    if not isinstance(parsed, dict):
        raise _bad(where, f" must be a JSON object, not {type(parsed).__name__}")
    return value


def _tool_calls(value, i: int) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad(_where(i, 'tool_calls'), " must be a list of tool calls")
    calls = []
    for j, call in enumerate(value):
        base = f"tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise _bad(_where(i, base), f" must be {{\"id\", \"type\": \"function\", \"function\": "
                                  "{\"name\", \"arguments\"}}")
        if call.get("type", "function") != "function":
            raise _bad(_where(i, base + '.type'), " must be \"function\", not {call.get('type')!r}")
        name = call["function"].get("name")
        if not isinstance(name, str) or not name:
            raise _bad(_where(i, base + '.function.name'), " must be a non-empty string")
        args = _arguments(call["function"].get("arguments"), _where(i, base + ".function.arguments"))
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise _bad(_where(i, base + '.id'), " must be a string")
        calls.append({"id": call_id, "name": name, "arguments": args})
    return calls


def _answered_call(msg: dict, i: int, open_calls: list[dict] | None, answered: int) -> None:
    """A tool message must follow an assistant turn with tool calls and answer one of them."""
    if open_calls is None:
        raise _bad(_where(i, 'role'), ": this tool message answers no call (it does not follow an "
                              "assistant message with tool_calls)")
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str):
        raise _bad(_where(i, 'tool_call_id'), " is missing; give the id of the call it answers")
    ids = [c["id"] for c in open_calls if c["id"] is not None]
    if ids and call_id not in ids:
        raise _bad(_where(i, 'tool_call_id'), f": {call_id!r} answers no call of the preceding "
                              f"assistant message (its calls: {', '.join(ids)})")
    if answered >= len(open_calls):
        raise _bad(_where(i, 'tool_call_id'), f": more tool results than the {len(open_calls)} "
                              "call(s) of the preceding assistant message")


def normalize_messages(messages, *, roles: tuple[str, ...] = BASE_ROLES) -> list[dict]:
    """Check `messages` and return normalized copies (see the module docstring)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise _bad("messages", " must be a non-empty list of {\"role\", \"content\"} objects")
    out, open_calls, answered = [], None, 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}]", f" must be an object with a role, not {type(msg).__name__}")
        role = msg.get("role")
        if role not in roles:
            raise _bad(_where(i, 'role'), f": unknown role {role!r}; this format knows "
                                  f"{', '.join(roles)}")
        norm = {"role": role, "content": None, "reasoning_content": None, "tool_calls": None, "tool_call_id": None}
        if role == "assistant":
            norm["tool_calls"] = _tool_calls(msg.get("tool_calls"), i)
            norm["content"] = _text(msg.get("content"), i, "content", optional=norm["tool_calls"] is not None)
            norm["reasoning_content"] = _text(msg.get("reasoning_content"), i, "reasoning_content", optional=True)
            if norm["tool_calls"] is not None and norm["content"] == "":
                norm["content"] = None  # "" and null mean the same with tool calls; templates differ on ""
            open_calls, answered = norm["tool_calls"], 0
        elif role == "tool":
            _answered_call(msg, i, open_calls, answered)
            answered += 1
            norm["content"] = _text(msg.get("content"), i, "content", optional=False)
            norm["tool_call_id"] = msg["tool_call_id"]
        else:
            norm["content"] = _text(msg.get("content"), i, "content", optional=False)
            open_calls = None
        out.append(norm)
    return out


def tool_functions(tools) -> list[dict]:
    """The `function` objects of OpenAI tool schemas, checked (names a bad entry by index)."""
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise _bad("tools", " must be a list of {\"type\": \"function\", \"function\": {...}} schemas")
    out = []
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"tools[{k}].function.name", " is missing; each tool is "
                                  "{\"type\": \"function\", \"function\": {\"name\", \"parameters\", ...}}")
        out.append(fn)
    return out

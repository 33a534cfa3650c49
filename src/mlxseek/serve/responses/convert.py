"""A Responses API request -> the OpenAI-shaped chat messages and tools mlxseek.formats renders.

Input items map onto chat turns: `message` items by role, `function_call` items onto the assistant turn
that made them, `function_call_output` items onto tool turns, and `reasoning` items onto the next
assistant turn's `reasoning_content` (the formats drop it where the family drops earlier reasoning).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

from ...errors import ChatFormatError
from ..api_errors import ApiError
from .schemas import ResponsesRequest

log = logging.getLogger("mlxseek.serve")
_NO_THINKING = ("none", "minimal")
_V4_MAX = ("xhigh", "max")  # V4's one extra effort level: a fixed paragraph in thinking mode


@dataclass(frozen=True)
class OutputFormat:
    """`text.format` when it asks for JSON: the spec constrained decoding applies (json_object: any object)."""

    kind: str                           # "json_object" | "json_schema"
    schema: Optional[dict] = None
    name: Optional[str] = None
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """What the request forces: "auto" (the model decides), "required" (some tool), "named" (`name`)."""

    mode: str
    name: Optional[str] = None


@dataclass(frozen=True)
class ResponseTurn:
    messages: list[dict]                # what is rendered: instructions, stored history, this input
    conversation: list[dict]            # what a stored response keeps: history and input, no instructions
    tools: Optional[list[dict]]         # chat-shaped function tools to render (None: render none)
    tool_choice: ToolChoice
    thinking: Optional[bool]
    reasoning_effort: Optional[str]
    output_format: Optional[OutputFormat]


def _text(content: Any, where: str) -> str:
    """Message content: a string or a list of input_text / output_text / refusal parts, as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: must be a string or a list of content parts", param=where)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            out.append(str(part.get("text", "")))
        elif kind == "refusal":
            out.append(str(part.get("refusal", "")))
        else:
            raise ApiError(400, f"{where}.{j}: content part type {kind!r} is not supported by this text-only model",
                           param=f"{where}.{j}")
    return "".join(out)


def _last_assistant(out: list[dict]) -> dict:
    """The assistant turn a function_call belongs to: the last message if it is one, else a new empty turn."""
    if not out or out[-1]["role"] != "assistant":
        out.append({"role": "assistant", "content": ""})
    return out[-1]


def to_messages(items: Any) -> list[dict]:
    """Input items (or a plain string, one user message) as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict] = []
    reasoning = ""
    for i, item in enumerate(items):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"{where}.role: must be user, assistant, system or developer, got {role!r}",
                               param=f"{where}.role")
            msg = {"role": "system" if role == "developer" else role,
                   "content": _text(item.get("content"), f"{where}.content")}
            if role == "assistant" and reasoning:
                msg["reasoning_content"], reasoning = reasoning, ""
            out.append(msg)
        elif kind == "function_call":
            turn = _last_assistant(out)
            if reasoning:
                turn["reasoning_content"], reasoning = reasoning, ""
            call_id = item.get("call_id") or item.get("id") or f"call_{i}"
            turn.setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function",
                 "function": {"name": _required(item, "name", where), "arguments": item.get("arguments") or "{}"}})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": _required(item, "call_id", where),
                        "content": output if isinstance(output, str) else _text(output, f"{where}.output")})
        elif kind == "reasoning":
            reasoning += _text(item.get("content"), f"{where}.content") or _text(item.get("summary"),
                                                                                 f"{where}.summary")
        else:
            log.warning("responses: skipped an input item of type %r (%s); only messages, function calls, "
                        "their outputs and reasoning reach the model", kind, where)
    return out


def _required(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{where}.{key}: this field is required (a non-empty string)", param=f"{where}.{key}")
    return value


def function_tools(tools: Optional[list[dict]]) -> list[dict]:
    """Function tools in the chat shape; hosted and custom tool types are skipped with a warning."""
    out, skipped = [], []
    for i, t in enumerate(tools or ()):
        if t.get("type") != "function":
            skipped.append(str(t.get("type")))
            continue
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"tools.{i}.name: a function tool needs a name", param=f"tools.{i}.name")
        fn = {"name": name, "description": t.get("description") or ""}
        if t.get("parameters") is not None:
            fn["parameters"] = t["parameters"]
        out.append({"type": "function", "function": fn})
    if skipped:
        log.warning("responses: ignored tools of types %s; this server runs function tools only", sorted(set(skipped)))
    return out


def tool_choice(choice: Any, tools: list[dict]) -> ToolChoice:
    if choice is None or choice == "auto":
        return ToolChoice("auto")
    if choice in ("none", "required"):
        if choice == "required" and not tools:
            raise ApiError(400, "tool_choice: 'required' needs at least one function tool in tools",
                           param="tool_choice")
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in tools):
            raise ApiError(400, f"tool_choice.name: no function tool named {name!r} in tools", param="tool_choice.name")
        return ToolChoice("named", name)
    if isinstance(choice, str):
        raise ApiError(400, f"tool_choice: must be auto, none, required or a function, got {choice!r}",
                       param="tool_choice")
    log.warning("responses: tool_choice of type %r is treated as auto", choice.get("type"))
    return ToolChoice("auto")


def tools_to_render(tools: list[dict], choice: ToolChoice) -> Optional[list[dict]]:
    if choice.mode == "none":
        return None
    if choice.mode == "named":
        return [t for t in tools if t["function"]["name"] == choice.name]
    return tools or None


def thinking_controls(effort: Optional[str], style: Optional[str]) -> tuple[Optional[bool], Optional[str]]:
    """reasoning.effort -> (the thinking switch, V4's reasoning_effort). A switch the format cannot honour
    (V3 never reasons, R1 always does) falls back to the format's default: clients such as Codex send an
    effort by habit, and the API lets a model reason less than asked."""
    from ...formats import prompt_opens_thinking

    if effort is None or style is None:
        return None, None
    wanted = effort not in _NO_THINKING
    try:
        prompt_opens_thinking(style, wanted)
    except ChatFormatError:
        return None, None
    if wanted and style in ("v4-0731", "v4.1"):  # DeepSeek's API tables: medium and xhigh map to high
        return True, {"low": "low", "max": "max"}.get(effort, "high")
    return wanted, ("max" if wanted and style == "v4" and effort in _V4_MAX else None)


def output_format(req: ResponsesRequest) -> Optional[OutputFormat]:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema_ is None:
        raise ApiError(400, "text.format.schema: a json_schema format needs a schema", param="text.format.schema")
    return OutputFormat(kind=fmt.type, schema=fmt.schema_, name=fmt.name, strict=bool(fmt.strict))


def to_turn(req: ResponsesRequest, style: Optional[str], history: Optional[list[dict]] = None, *,
            default_thinking: Optional[bool] = None) -> ResponseTurn:
    """default_thinking: the switch when reasoning.effort sets none (the one the model name selects)."""
    tools = function_tools(req.tools)
    choice = tool_choice(req.tool_choice, tools)
    thinking, effort = thinking_controls(req.reasoning.effort if req.reasoning else None, style)
    thinking = default_thinking if thinking is None else thinking
    conversation = [dict(m) for m in history or ()] + to_messages(req.input)
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    return ResponseTurn(messages=system + conversation, conversation=conversation,
                        tools=tools_to_render(tools, choice), tool_choice=choice, thinking=thinking,
                        reasoning_effort=effort, output_format=output_format(req))


def arguments_json(arguments: str) -> str:
    """A call's arguments as a JSON object string (what clients json.loads); a malformed string is
    wrapped so the client still sees what the model wrote."""
    try:
        return arguments if isinstance(json.loads(arguments or "{}"), dict) else json.dumps({"arguments": arguments})
    except ValueError:
        return json.dumps({"arguments": arguments})

"""Structured outputs and forced tool calls: an API request's spec -> the grammar its reply must follow.

`request_grammar` is the one mapping every endpoint uses (OpenAI chat `response_format` / `tool_choice`,
the Responses API's `text.format` / `tool_choice`, Anthropic's `tool_choice`). It accepts each API's own
shapes, so a handler passes the request's fields as they are, and returns llguidance Lark text for
`SamplingParams.grammar` (None: the reply is free). A forced tool call is written in the chat style's own
tool-call syntax with each tool's JSON schema as its arguments' grammar (`mlxseek.formats.constraints`);
the engine constrains decoding with it, after the reasoning when the prompt opens one, and from the end of
the given answer under chat prefix completion (`check_answer` tests that start first).
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import ChatFormatError, ConstraintError
from ..formats.constraints import json_grammar, tool_call_grammar
from ..generation.constraint import check_grammar
from .api_errors import ApiError


def _plain(value: Any) -> Any:
    """A pydantic model (or anything with model_dump) as plain data."""
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else value


def _format_schema(fmt: dict, param: str) -> tuple[Optional[dict], str]:
    """(schema, the param naming it) of a json_schema format: chat nests it under `json_schema`, the
    Responses API's `text.format` holds it directly."""
    nested = fmt.get("json_schema")
    holder, where = (nested, f"{param}.json_schema") if isinstance(nested, dict) else (fmt, param)
    schema = holder.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise ApiError(400, f"{where}.schema: must be a JSON schema object", param=f"{where}.schema")
    return schema, f"{where}.schema"


def _forced_tools(choice: Any, tools: list[dict], param: str) -> Optional[list[dict]]:
    """The tools a choice forces a call to (all for required/any, one for a named choice), or None."""
    if choice is None or isinstance(choice, str):
        kind, name = choice, None
    elif isinstance(choice, dict):
        kind = choice.get("type")
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        kind = "named" if kind in ("function", "tool") else kind
    else:
        raise ApiError(400, f"{param}: unknown tool choice {choice!r}", param=param)
    if kind in (None, "auto", "none"):
        return None
    if not tools:
        raise ApiError(400, f"{param}: forcing a tool call needs at least one tool in tools", param=param)
    if kind in ("required", "any"):
        return tools
    if kind != "named":
        raise ApiError(400, f"{param}: unknown tool choice type {kind!r}", param=param)
    named = [t for t in tools if t["function"]["name"] == name]
    if not named:
        raise ApiError(400, f"{param}: no tool named '{name}' in tools", param=param)
    return named


def request_grammar(*, style: Optional[str], tools: Optional[list] = None, tool_choice: Any = None,
                    response_format: Any = None, parallel_tool_calls: bool = True,
                    choice_param: str = "tool_choice", format_param: str = "response_format") -> Optional[str]:
    """The grammar a request's reply must follow, or None. `tools`: OpenAI function tools (the Anthropic
    layer converts its own first); `tool_choice`: "auto" | "none" | "required" | OpenAI chat's
    {"type": "function", "function": {"name"}} | the Responses API's {"type": "function", "name"} |
    Anthropic's {"type": "auto" | "any" | "tool" | "none", "name"}; `response_format`: {"type": "text" |
    "json_object" | "json_schema", ...} as chat or the Responses API's `text.format` sends it. A forced
    tool call wins over a response format. Raises ApiError 400 naming the field (and the JSON-schema
    keyword llguidance cannot honour)."""
    tools = [_plain(t) for t in tools or []]
    forced = _forced_tools(_plain(tool_choice), tools, choice_param)
    if forced is not None:
        if style is None:
            raise ApiError(400, f"{choice_param}: this model has no chat format to write tool calls in",
                           param=choice_param)
        try:
            grammar = tool_call_grammar(style, forced, parallel=parallel_tool_calls and len(forced) > 1)
        except ChatFormatError as e:
            raise ApiError(400, f"tools: {e}", param="tools") from None
        return _checked(grammar, "tools")
    fmt = _plain(response_format)
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return _checked(json_grammar(None), format_param)
    if kind == "json_schema":
        schema, where = _format_schema(fmt, format_param)
        if schema is None:
            raise ApiError(400, f"{where}: json_schema needs a schema", param=where)
        return _checked(json_grammar(schema), where)
    raise ApiError(400, f"{format_param}.type: must be text, json_object or json_schema, got {kind!r}",
                   param=f"{format_param}.type")


def check_answer(served, grammar: str, answer: str, *, param: str) -> None:
    """A grammar over a reply that continues `answer` (chat prefix completion with content): the given
    start must be one the grammar allows, else a 400 naming `param` (that content). Builds the constraint
    the engine will build (its tokenizer bridge is kept), so run it off the event loop."""
    from ..generation.constraint import make_constraint

    try:
        make_constraint(served.tokenizer, grammar, vocab_size=served.vocab_size, in_reasoning=False, answer=answer)
    except ConstraintError as e:
        raise ApiError(400, f"{param}: {e}; a constrained reply continues it", param=param) from None


def _checked(grammar: str, param: str) -> str:
    try:
        check_grammar(grammar)
    except ConstraintError as e:
        where = param if e.keyword is None else f"{param} ({e.keyword})"
        raise ApiError(400, f"{where}: {e}", param=param) from None
    return grammar

"""Grammars (llguidance's Lark dialect) for what a constrained reply must be: one JSON value matching a
schema, or a forced tool call written in the family's own tool-call syntax.

Pure text: `generation.constraint` compiles these against the tokenizer. Special tokens are written by
their text in angle brackets (`<｜tool▁calls▁begin｜>`), which llguidance matches as the single special
token, as the model writes them; DSML markup is ordinary text. `%json{...}` embeds a JSON schema as a
sub-grammar, so a tool's arguments are generated against its own schema.

Each grammar ends where the reply ends: llguidance then allows only the end-of-sequence token.
"""

from __future__ import annotations

import json
from functools import partial

from ..errors import ChatFormatError
from .dsml import PLAIN, SPACED, Tags
from .messages import tool_functions
from .style import check_style
from .tokens import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, DSML, TOOL_SEP

ANY_OBJECT = {"type": "object"}
# DSML writes a string argument raw (string="true"); text up to the next tag, so no `<` inside. A string
# with any constraint besides its description goes the other way, as a JSON string (string="false").
_RAW_TEXT = r"/[^<]*/"
_PLAIN_STRING_KEYS = {"type", "description", "title"}
MAX_PARALLEL_CALLS = 4


def _lit(text: str) -> str:
    """A Lark string literal (JSON escaping is a subset of what Lark reads)."""
    return json.dumps(text, ensure_ascii=False)


# Compact JSON as json.dumps writes it (DeepSeek's encoders and our renderers too): no free whitespace, which
# a weak model would otherwise fill with newlines until max_tokens.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _json(schema: dict) -> str:
    schema = schema if "x-guidance" in schema else {**schema, "x-guidance": _JSON_STYLE}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def json_grammar(schema: dict | None) -> str:
    """The reply is one JSON value matching `schema` (None: any JSON object, OpenAI's `json_object`)."""
    return "start: " + _json(ANY_OBJECT if schema is None else schema)


def _arguments(fn: dict) -> dict:
    params = fn.get("parameters")
    return params if isinstance(params, dict) and params else ANY_OBJECT


def _fenced(name: str, schema: dict) -> str:
    # V3 / R1: <call_begin>function<sep>NAME\n```json\nARGS\n```<call_end>
    return f"{CALL_BEGIN} \"function\" {TOOL_SEP} {_lit(name + chr(10) + '```json' + chr(10))} {_json(schema)} " \
           f"{_lit(chr(10) + '```')} {CALL_END}"


def _plain(name: str, schema: dict) -> str:
    # V3.1: <call_begin>NAME<sep>ARGS<call_end>
    return f"{CALL_BEGIN} {_lit(name)} {TOOL_SEP} {_json(schema)} {CALL_END}"


def _dsml_param(key: str, schema: dict, tags: Tags) -> str:
    raw = _lit(f'<{DSML}{tags.parameter} name="{key}" string="true">')
    typed = _lit(f'<{DSML}{tags.parameter} name="{key}" string="false">')
    tail = _lit(f"</{DSML}{tags.parameter}>\n")
    if not isinstance(schema, dict):
        return f"{typed} {_json({})} {tail}"
    if schema.get("type") == "string" and set(schema) <= _PLAIN_STRING_KEYS:
        return f"{raw} {_RAW_TEXT} {tail}"
    enum = schema.get("enum")
    if schema.get("type") == "string" and set(schema) <= _PLAIN_STRING_KEYS | {"enum"} and isinstance(enum, list) \
            and enum and all(isinstance(v, str) and "<" not in v for v in enum):
        return f"{raw} ({' | '.join(_lit(v) for v in enum)}) {tail}"
    return f"{typed} {_json(schema)} {tail}"


def _dsml(name: str, schema: dict, tags: Tags = PLAIN) -> str:
    """`<｜DSML｜invoke name="NAME">\\n` + one parameter line per argument + `</｜DSML｜invoke>`: required
    arguments in the schema's order, each optional one present or not (dsml.encode_call writes the same)."""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    parts = [_lit(f'<{DSML}{tags.invoke} name="{name}">\n')]
    for key, sub in props.items():
        param = _dsml_param(key, sub, tags)
        parts.append(param if key in required else f"({param})?")
    parts.append(_lit(tags.invoke_end))
    return " ".join(parts)


def _block(style: str, calls: str) -> str:
    if style in ("v3", "r1", "v3.1"):
        return f"{CALLS_BEGIN} {calls} {CALLS_END}"
    block = {"v3.2": "function_calls", "v4.1": " calls"}.get(style, "tool_calls")
    return f"{_lit(chr(10) * 2 + f'<{DSML}{block}>' + chr(10))} {calls} {_lit(chr(10) + f'</{DSML}{block}>')}"


_CALL = {"v3": _fenced, "r1": _fenced, "v3.1": _plain, "v3.2": _dsml, "v4": _dsml, "v4-0731": _dsml,
         "v4.1": partial(_dsml, tags=SPACED)}


def tool_call_grammar(style: str, tools: list[dict], *, parallel: bool = False) -> str:
    """The reply is a tool-call block in `style`'s syntax calling one of `tools` (OpenAI function schemas)
    with arguments matching that tool's `parameters` schema; `parallel`: 1 to MAX_PARALLEL_CALLS calls, else one."""
    check_style(style)
    functions = tool_functions(tools)
    if not functions:
        raise ChatFormatError("tools: a forced tool call needs at least one tool")
    rules = [f"fn_{i}: {_CALL[style](f['name'], _arguments(f))}" for i, f in enumerate(functions)]
    call = " | ".join(f"fn_{i}" for i in range(len(functions)))
    sep = '"\\n" ' if style in ("v3.2", "v4", "v4-0731", "v4.1") else ""
    calls = "call"
    for _ in range(MAX_PARALLEL_CALLS - 1 if parallel else 0):  # bounded, so the block always closes
        calls = f"call ({sep}{calls})?"
    return "\n".join([f"start: {_block(style, calls)}", f"call: {call}", *rules])

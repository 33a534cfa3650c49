"""How each style's replies are marked up: where reasoning ends, what opens and closes a tool-call block,
and how one call's text decodes to (name, arguments JSON)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from . import dsml
from .tokens import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, DSML, TOOL_SEP

_FENCED = re.compile(r"\s*" + CALL_BEGIN + r"(\w+)" + TOOL_SEP + r"([^\n]+)\n```json\n(.*)\n```\s*", re.DOTALL)
_PLAIN = re.compile(r"\s*" + CALL_BEGIN + r"([^\n<]+?)" + TOOL_SEP + r"(.*)", re.DOTALL)

Decoded = tuple[str, str] | None


def _json_object(text: str) -> str | None:
    try:
        return text if isinstance(json.loads(text), dict) else None
    except ValueError:
        return None


def decode_fenced(text: str) -> Decoded:
    """V3 / R1: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` + a ```json fenced object."""
    m = _FENCED.fullmatch(text)
    if m is None or m.group(1) != "function":
        return None
    args = _json_object(m.group(3).strip())
    return (m.group(2).strip(), args) if args is not None else None


def decode_plain(text: str) -> Decoded:
    """V3.1: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS` with raw JSON arguments."""
    m = _PLAIN.fullmatch(text)
    if m is None:
        return None
    args = _json_object(m.group(2).strip())
    return (m.group(1).strip(), args) if args is not None else None


@dataclass(frozen=True)
class Grammar:
    has_reasoning: bool
    strip_newlines: bool          # R1 writes a newline after <think> and a blank line after </think>
    block_open: tuple[str, ...]   # any of these opens a tool-call block (longest first)
    call_end: str
    block_end: str
    decode: Callable[[str], Decoded]


def _dsml_block(name: str, tags: dsml.Tags = dsml.PLAIN) -> dict:
    opener = f"<{DSML}{name}>"
    return {"block_open": ("\n\n" + opener, opener), "call_end": tags.invoke_end,
            "block_end": f"</{DSML}{name}>", "decode": partial(dsml.decode_call, tags=tags)}


_V3_BLOCK = {"block_open": (CALLS_BEGIN,), "call_end": CALL_END, "block_end": CALLS_END}

GRAMMARS = {
    "v3": Grammar(has_reasoning=False, strip_newlines=False, decode=decode_fenced, **_V3_BLOCK),
    "r1": Grammar(has_reasoning=True, strip_newlines=True, decode=decode_fenced, **_V3_BLOCK),
    "v3.1": Grammar(has_reasoning=True, strip_newlines=False, decode=decode_plain, **_V3_BLOCK),
    "v3.2": Grammar(has_reasoning=True, strip_newlines=False, **_dsml_block("function_calls")),
    "v4": Grammar(has_reasoning=True, strip_newlines=False, **_dsml_block("tool_calls")),
}
GRAMMARS["v4-0731"] = GRAMMARS["v4"]  # 0731 changes only the effort paragraph of the prompt
GRAMMARS["v4.1"] = Grammar(has_reasoning=True, strip_newlines=False, **_dsml_block(" calls", dsml.SPACED))

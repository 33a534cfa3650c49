"""DSML, the tool-call markup DeepSeek V3.2, V4 and V4.1 write (`<｜DSML｜invoke name=...>` with typed parameters).

Encoding follows DeepSeek's encoders: a string argument is written as is with string="true", any other
JSON value as compact JSON with string="false". Decoding is the inverse and returns None on anything
that does not parse, so the reply parser can keep the text and flag it. V4.1's encoder spells the tag names
with a leading space (`<｜DSML｜ calls>`, `<｜DSML｜ invoke>`, `<｜DSML｜ parameter>`): `Tags` names them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

from .tokens import DSML


@dataclass(frozen=True)
class Tags:
    """The tag names after `｜DSML｜`: V3.2/V4 `invoke`, `parameter`; V4.1 ` invoke`, ` parameter`."""

    invoke: str = "invoke"
    parameter: str = "parameter"

    @property
    def invoke_end(self) -> str:
        return f"</{DSML}{self.invoke}>"


PLAIN, SPACED = Tags(), Tags(" invoke", " parameter")
INVOKE_END = PLAIN.invoke_end


@cache
def _patterns(tags: Tags) -> tuple[re.Pattern, re.Pattern]:
    inv, par = re.escape(tags.invoke), re.escape(tags.parameter)
    return (re.compile(r'\s*<' + DSML + inv + r' name="([^"]*)">\n(.*)\n\s*', re.DOTALL),
            re.compile(r'<' + DSML + par + r' name="([^"]*)" string="(true|false)">(.*?)</' + DSML + par + '>',
                       re.DOTALL))


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def encode_call(call: dict, tags: Tags = PLAIN) -> str:
    """`<｜DSML｜invoke name="NAME">` + one parameter line per argument + `</｜DSML｜invoke>`."""
    params = []
    for key, value in json.loads(call["arguments"]).items():
        is_str = isinstance(value, str)
        params.append(f'<{DSML}{tags.parameter} name="{key}" string="{"true" if is_str else "false"}">'
                      f'{value if is_str else to_json(value)}</{DSML}{tags.parameter}>')
    return f'<{DSML}{tags.invoke} name="{call["name"]}">\n' + "\n".join(params) + f"\n{tags.invoke_end}"


def encode_block(calls: list[dict], block: str, tags: Tags = PLAIN) -> str:
    """The calls block as the encoders append it to an assistant turn (a blank line first)."""
    body = "\n".join(encode_call(c, tags) for c in calls)
    return f"\n\n<{DSML}{block}>\n{body}\n</{DSML}{block}>"


def decode_call(text: str, tags: Tags = PLAIN) -> tuple[str, str] | None:
    """(name, arguments JSON) from the text of one invoke up to (not including) its end tag, or None."""
    invoke, param = _patterns(tags)
    m = invoke.fullmatch(text + "\n") or invoke.fullmatch(text)
    if m is None:
        return None
    name, body = m.group(1), m.group(2)
    args, pos = {}, 0
    for p in param.finditer(body):
        if body[pos:p.start()].strip() or p.group(1) in args:
            return None
        key, is_str, raw = p.groups()
        if is_str == "true":
            args[key] = raw
        else:
            try:
                args[key] = json.loads(raw)
            except ValueError:
                return None
        pos = p.end()
    if body[pos:].strip():
        return None
    return name, to_json(args)

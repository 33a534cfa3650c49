"""DSML, the tool-call markup DeepSeek V3.2 and V4 write (`<｜DSML｜invoke name=...>` with typed parameters).

Encoding follows DeepSeek's encoders: a string argument is written as is with string="true", any other
JSON value as compact JSON with string="false". Decoding is the inverse and returns None on anything
that does not parse, so the reply parser can keep the text and flag it.
"""

from __future__ import annotations

import json
import re

from .tokens import DSML

_INVOKE = re.compile(r'\s*<' + DSML + r'invoke name="([^"]*)">\n(.*)\n\s*', re.DOTALL)
_PARAM = re.compile(r'<' + DSML + r'parameter name="([^"]*)" string="(true|false)">(.*?)</' + DSML + r'parameter>',
                    re.DOTALL)
INVOKE_END = f"</{DSML}invoke>"


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def encode_call(call: dict) -> str:
    """`<｜DSML｜invoke name="NAME">` + one parameter line per argument + `</｜DSML｜invoke>`."""
    params = []
    for key, value in json.loads(call["arguments"]).items():
        is_str = isinstance(value, str)
        params.append(f'<{DSML}parameter name="{key}" string="{"true" if is_str else "false"}">'
                      f'{value if is_str else to_json(value)}</{DSML}parameter>')
    return f'<{DSML}invoke name="{call["name"]}">\n' + "\n".join(params) + f"\n{INVOKE_END}"


def encode_block(calls: list[dict], block: str) -> str:
    """The calls block as the encoders append it to an assistant turn (a blank line first)."""
    body = "\n".join(encode_call(c) for c in calls)
    return f"\n\n<{DSML}{block}>\n{body}\n</{DSML}{block}>"


def decode_call(text: str) -> tuple[str, str] | None:
    """(name, arguments JSON) from the text of one invoke up to (not including) its end tag, or None."""
    m = _INVOKE.fullmatch(text + "\n") or _INVOKE.fullmatch(text)
    if m is None:
        return None
    name, body = m.group(1), m.group(2)
    args, pos = {}, 0
    for p in _PARAM.finditer(body):
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

"""Checks on request text that JSON allows but the tokenizer cannot take."""

from __future__ import annotations

from typing import Any

from .api_errors import ApiError


def _bad(s: str) -> bool:
    # JSON's "\ud800" escapes decode to unpaired UTF-16 surrogates, which are not Unicode text
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def reject_surrogates(data: Any, path: str = "") -> Any:
    """Raise a 400 naming the first field whose string holds an unpaired surrogate; returns `data`."""
    stack = [(path, data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            if _bad(node):
                field = where or "body"
                raise ApiError(400, f"{field}: text holds an unpaired UTF-16 surrogate (not valid Unicode)",
                               param=field, code="invalid_value")
        elif isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in reversed(list(enumerate(node))))
    return data

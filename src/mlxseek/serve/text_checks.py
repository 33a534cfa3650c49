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


# Content parts that carry pictures, sound or files (OpenAI chat, Anthropic). The served models are text-only
# here: DeepSeek-V4.1 ships a vision tower mlxseek does not run, so such a part is refused by name, never dropped.
MEDIA_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "document")


def reject_media(data: Any) -> Any:
    """Raise a 400 naming the first message content part (tool results included) that is not text."""
    messages = data.get("messages") if isinstance(data, dict) else None
    for i, m in enumerate(messages if isinstance(messages, list) else []):
        content = m.get("content") if isinstance(m, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            inner = part.get("content") if isinstance(part, dict) else None
            for where, p in [(f"messages.{i}.content.{j}", part), *(
                    (f"messages.{i}.content.{j}.content.{k}", q) for k, q in enumerate(
                        inner if isinstance(inner, list) else []))]:
                kind = p.get("type") if isinstance(p, dict) else None
                if kind in MEDIA_PARTS:
                    raise ApiError(400, f"{where}: content part type {kind!r} is not supported: this model is served "
                                   "text-only (vision and audio input are not implemented); send text parts",
                                   param=where, code="unsupported_content")
    return data


def check_text(data: Any) -> Any:
    """Both request checks: media parts refused by name, unpaired surrogates refused by field."""
    return reject_surrogates(reject_media(data))

"""HTTP errors in each API's own shape, and the mapping from library errors and validation failures.

OpenAI: {"error": {"message", "type", "param", "code"}}; Anthropic (/v1/messages):
{"type": "error", "error": {"type", "message"}}. Messages name the request field at fault; a 500 says
only that the server failed (the traceback goes to the server log, never to the client).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Optional

from starlette.responses import JSONResponse

# status -> (OpenAI error type, Anthropic error type)
_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    503: ("server_error", "overloaded_error"),
}


class ApiError(Exception):
    """An HTTP error answer: status, a message naming the field, the field (`param`) and a code."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


class ApiKind(Enum):
    """Which API a request speaks, and so the shape of its errors. Decided once per request from the path,
    since the guard answers (401, 413) before any route is matched."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"

    @classmethod
    def of_path(cls, path: str) -> "ApiKind":
        return cls.ANTHROPIC if path.startswith(_ANTHROPIC_PREFIXES) else cls.OPENAI


_ANTHROPIC_PREFIXES = ("/v1/messages",)  # aliases (/messages, /beta/...) reach here as /v1 paths


def error_body(err: ApiError, *, api: ApiKind) -> dict:
    oa_type, an_type = _TYPES.get(err.status, ("invalid_request_error", "invalid_request_error"))
    if api is ApiKind.ANTHROPIC:
        return {"type": "error", "error": {"type": an_type, "message": err.message}}
    return {"error": {"message": err.message, "type": oa_type, "param": err.param, "code": err.code}}


def error_response(err: ApiError, *, path: str) -> JSONResponse:
    return JSONResponse(error_body(err, api=ApiKind.of_path(path)), status_code=err.status, headers=err.headers)


def field_path(loc: tuple, body: Any, missing: bool) -> str:
    """Pydantic's error location as a dotted field path, skipping the union-branch tags it inserts
    (e.g. ('messages', 0, 'content', 'list[...]', 0, 'text') -> 'messages.0.content.0.text')."""
    parts, node = [], body
    for i, p in enumerate(loc):
        if isinstance(p, int) and isinstance(node, list) and 0 <= p < len(node):
            node = node[p]
            parts.append(str(p))
        elif isinstance(p, str) and isinstance(node, dict) and p in node:
            node = node[p]
            parts.append(p)
        elif missing and i == len(loc) - 1 and isinstance(p, str):
            parts.append(p)
    return ".".join(parts)


def from_validation(errors: list[dict], body: Any) -> ApiError:
    """The first pydantic error of a request body as a 400 naming the field."""
    if not errors:
        return ApiError(400, "invalid request body", param="body")
    # a union field reports one error per branch; the deepest one is the most specific
    e = max(errors, key=lambda err: len(err.get("loc", ())))
    loc = tuple(e.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    if e.get("type") == "json_invalid":
        where = f" (at character {loc[0]})" if loc and isinstance(loc[0], int) else ""
        return ApiError(400, f"request body is not valid JSON{where}: {e.get('ctx', {}).get('error', '')}".rstrip(": "),
                        param="body", code="invalid_json")
    param = field_path(loc, body, e.get("type") == "missing") or "body"
    msg = e.get("msg", "invalid value")
    if e.get("type") == "missing":
        msg = "this field is required"
    if param == "body" and not isinstance(body, dict):
        msg = "request body must be a JSON object (sent with Content-Type: application/json)"
    return ApiError(400, f"{param}: {msg}", param=param, code="invalid_value")


def decode_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None

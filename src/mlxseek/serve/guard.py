"""ASGI middleware run before any handler: API key (401), request body size (413), and the last-resort 500.

It sits outside FastAPI's body parsing, so an unauthenticated client learns nothing from validation
errors and an oversized body is refused before it is buffered whole.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Optional

from .api_errors import ApiError, ApiKind, error_body
from .auth import key_ok

OPEN_PATHS = ("/", "/health")  # "/" says only that a server is there (Claude Code probes it with HEAD)
log = logging.getLogger("mlxseek.serve")


class BodyTooLarge(ApiError):
    def __init__(self, cap: int):
        super().__init__(413, f"request body is larger than the server's limit of {cap} bytes",
                         param="body", code="request_too_large")


class Guard:
    def __init__(self, app, *, api_key: Optional[str], max_body_bytes: int,
                 on_response: Optional[Callable[[str, int], None]] = None):
        self.app, self.api_key, self.cap, self.on_response = app, api_key, max_body_bytes, on_response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.on_response is not None:
            send = self._counting(send, path)
        await self._guarded(scope, receive, send, path)

    def _counting(self, send, path: str):
        async def counted_send(msg):
            if msg["type"] == "http.response.start":
                self.on_response(path, msg["status"])
            await send(msg)

        return counted_send

    async def _guarded(self, scope, receive, send, path: str):
        headers = dict(scope.get("headers") or [])
        if path not in OPEN_PATHS and not key_ok(self.api_key, headers):
            err = ApiError(401, "missing or wrong API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`",
                           code="invalid_api_key")
            return await _answer(send, err, path, {"www-authenticate": "Bearer"})
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.cap:
            return await _answer(send, BodyTooLarge(self.cap), path)
        seen, over, started = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.cap:  # chunked upload without a Content-Length
                    over = True
                    raise BodyTooLarge(self.cap)
            return msg

        async def tracked_send(msg):
            nonlocal started
            if over:  # FastAPI turns a failing body read into its own 400; the client gets the 413
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await _answer(send, BodyTooLarge(self.cap), path)
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            # Answered here, not by Starlette's ServerErrorMiddleware, which re-raises and makes uvicorn drop
            # the keep-alive connection; the traceback stays in the server log.
            log.exception("internal error on %s %s", scope.get("method"), path)
            if not started:
                await _answer(send, ApiError(500, "internal server error; see the server log"), path)


async def _answer(send, err: ApiError, path: str, extra: Optional[dict] = None) -> None:
    body = json.dumps(error_body(err, api=ApiKind.of_path(path))).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})

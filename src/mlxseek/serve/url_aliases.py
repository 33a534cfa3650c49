"""DeepSeek's URL layout: every `/v1/...` route is also served at the root and under `/beta`.

DeepSeek's docs give clients `base_url="https://api.deepseek.com"` (no `/v1`) and put the beta features
(chat prefix completion, FIM) under `https://api.deepseek.com/beta`; llama-server answers without `/v1`
too. Rather than registering each route three times, a request whose path matches no route is retried as
its `/v1` path: `/chat/completions` and `/beta/chat/completions` reach `/v1/chat/completions`. Routes added
later under `/v1` get the aliases without knowing about this module, and handlers, error shapes (Anthropic
for `/messages`) and metrics all see the canonical path.
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

CANONICAL = "/v1"
BETA = "/beta"


def _matches(routes, scope: Scope) -> bool:
    return any(route.matches(scope)[0] != Match.NONE for route in routes)


def canonical_path(routes, scope: Scope) -> str:
    """The path to route `scope` by: its own when a route matches it, else its `/v1` form when that
    matches (`/beta/X` and `/X` -> `/v1/X`), else its own (the app answers 404)."""
    path = scope["path"]
    if path.startswith(CANONICAL + "/") or _matches(routes, scope):
        return path
    rest = path[len(BETA):] if path.startswith(BETA + "/") else path
    candidate = CANONICAL + rest
    return candidate if _matches(routes, dict(scope, path=candidate)) else path


class UrlAliases:
    """ASGI middleware: rewrites an aliased path to its `/v1` route (see the module docstring). Add it
    last, so that it runs first."""

    def __init__(self, app: ASGIApp, *, router) -> None:
        self.app, self.router = app, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = canonical_path(self.router.routes, scope)
            if path != scope["path"]:
                scope = dict(scope, path=path, raw_path=path.encode())
        await self.app(scope, receive, send)

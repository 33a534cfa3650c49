"""DeepSeek's URL layout: every `/v1/...` route is also served at the root and under `/beta`.

DeepSeek's docs give clients `base_url="https://api.deepseek.com"` (no `/v1`) and put the beta features
(chat prefix completion, FIM) under `https://api.deepseek.com/beta`; llama-server answers without `/v1`
too. The aliases are added once, after every router is in, so a route registered later under `/v1` gets
them without knowing about this module.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

CANONICAL = "/v1"
ALIAS_PREFIXES = ("", "/beta")


def add_url_aliases(app: FastAPI) -> None:
    """Serve each `/v1/X` route of `app` at `/X` and `/beta/X` too (same handler, hidden from schemas)."""
    for route in list(app.router.routes):
        if not (isinstance(route, APIRoute) and route.path.startswith(CANONICAL + "/")):
            continue
        rest = route.path[len(CANONICAL):]
        for prefix in ALIAS_PREFIXES:
            app.router.add_api_route(prefix + rest, route.endpoint, methods=sorted(route.methods),
                                     name=f"{route.name}{prefix.replace('/', '_') or '_root'}",
                                     response_class=route.response_class, status_code=route.status_code,
                                     include_in_schema=False)


def canonical_path(path: str) -> str:
    """The `/v1` path an aliased request path stands for ("/beta/completions" -> "/v1/completions");
    other paths ("/health", "/v1/models") come back unchanged."""
    if path.startswith("/beta/"):
        return CANONICAL + path[len("/beta"):]
    if path.startswith(CANONICAL + "/") or path in ("/health", "/metrics", "/"):
        return path
    return CANONICAL + path

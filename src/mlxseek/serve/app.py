"""`create_app`: the FastAPI app serving one loaded model through an Engine."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..errors import ChatFormatError, MlxseekError, QueueFullError
from .api_errors import ApiError, error_response, from_validation
from .dispatch import ClientGone
from .guard import Guard
from .limits import Limits
from .metrics import CONTENT_TYPE, Metrics
from .state import ServedModel
from .url_aliases import UrlAliases

log = logging.getLogger("mlxseek.serve")
_ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/messages",
           "/v1/messages/count_tokens", "/v1/responses")


def create_app(*, model, tokenizer, engine, model_id: str, api_key: Optional[str] = None,
               limits: Optional[Limits] = None, chat_style: Optional[str] = None, log_prompts: bool = False,
               model_names: Optional[dict] = None, cors_origins: Sequence[str] = ()):
    """An ASGI app serving `model` through a started `engine` (mlxseek.serve.engine.Engine).

    chat_style: the chat format for /v1/chat/completions and /v1/messages (one of mlxseek.formats.STYLES);
    None detects it from the checkpoint's model_type and chat template. api_key: when set, every route but
    /health needs it. limits: body size and max_tokens caps (default `Limits()`). cors_origins: browser
    origins allowed to call the API (CORS; none by default, "*" for any). The caller owns the engine
    (starts and stops it). The OpenAPI schema is at /openapi.json; the docs UI is off.
    """
    limits = limits or Limits()
    metrics = Metrics(queue_depth=lambda: engine.queue_depth, engine_stats=getattr(engine, "stats", None))
    served = ServedModel(model=model, tokenizer=tokenizer, engine=engine, model_id=model_id,
                         style=chat_style or _detect_style(model, tokenizer), limits=limits, metrics=metrics,
                         log_prompts=log_prompts, names=dict(model_names or {}))
    log.info("serving %s with the %s chat format", model_id, served.style)
    app = FastAPI(title="mlxseek", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.served = served
    _add_routes(app, served)
    _add_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes,
                       on_response=lambda path, status: metrics.requests.labels(
                           path if path in _ROUTES else "other", str(status)).inc())
    app.add_middleware(UrlAliases, router=app.router)  # the rest sees /v1 paths only
    if cors_origins:  # outermost, so a browser's preflight (which carries no API key) is answered here
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    return app


def _detect_style(model, tokenizer) -> Optional[str]:
    """The loaded tokenizer's chat_style (read off its checkpoint folder), else the model family's default
    for the tokenizer's chat template (mlxseek's V3/R1 fallback: "v3")."""
    from ..models.families import family_of

    if getattr(tokenizer, "chat_style", None):
        return tokenizer.chat_style
    cfg = getattr(model, "config", None) or getattr(model, "args", None)
    if not hasattr(cfg, "model_type") or tokenizer is None:
        return None
    try:
        return family_of(cfg).chat_style(cfg.model_type, getattr(tokenizer, "chat_template", None),
                                         dspark=bool(getattr(cfg, "has_dspark", False)))
    except MlxseekError as e:
        log.warning("no chat format for this model (%s); only /v1/completions will work", e)
        return None


def _add_routes(app: FastAPI, served: ServedModel) -> None:
    from .anthropic_api import router as anthropic_router
    from .openai_api import router as openai_router
    from .responses import router as responses_router

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root():
        return {"status": "ok"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.model_id, "queue_depth": served.engine.queue_depth,
                "cache": getattr(served.engine, "cache_capabilities", None)}

    @app.get("/metrics")
    async def metrics():
        return Response(served.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(openai_router)
    app.include_router(anthropic_router)
    app.include_router(responses_router)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error_response(from_validation(list(exc.errors()), exc.body), path=request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code in (404, 405):
            err = ApiError(exc.status_code, f"no route {request.method} {request.url.path}")
        elif exc.status_code == 400:  # FastAPI could not decode the body at all (bad UTF-8, too deep)
            err = ApiError(400, "request body is not valid UTF-8 JSON (or is nested too deeply)", param="body",
                           code="invalid_json")
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return error_response(err, path=request.url.path)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError):
        return error_response(ApiError(429, str(exc), headers={"Retry-After": "1"}), path=request.url.path)

    @app.exception_handler(ChatFormatError)
    async def bad_chat(request: Request, exc: ChatFormatError):
        from .chat_bridge import request_field

        return error_response(ApiError(400, str(exc), param=request_field(exc.field)), path=request.url.path)

    @app.exception_handler(MlxseekError)
    async def library_error(request: Request, exc: MlxseekError):
        return error_response(ApiError(400, str(exc), param=exc.field), path=request.url.path)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        return JSONResponse({}, status_code=499)  # nobody is listening; uvicorn logs it

"""OpenAI Responses API endpoint: POST /v1/responses (plain and streamed, function tools, reasoning)."""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from .. import dispatch
from ..api_errors import ApiError
from ..chat_bridge import ChatPrompt, generation_budget, render_prompt, reply_chunks
from ..model_names import check_name
from ..params import SamplingParams, sampler_defaults
from ..structured import request_grammar
from .convert import OutputFormat, ResponseTurn, ToolChoice, to_turn
from .output import ResponseBuilder, echo_fields
from .schemas import ResponsesRequest
from .store import ResponseStore

log = logging.getLogger("mlxseek.serve")
router = APIRouter()
_FAILED = "internal server error while generating; see the server log"


def store_of(app) -> ResponseStore:
    store = getattr(app.state, "responses", None)
    if store is None:
        store = app.state.responses = ResponseStore()
    return store


def sampling(req: ResponsesRequest, turn: ResponseTurn, *, prompt: ChatPrompt, max_tokens: int):
    """The engine's SamplingParams for this turn: `text.format` and a forced `tool_choice` become the
    grammar constrained decoding applies (serve/structured.py), over the prompt's rendered tools."""
    grammar = request_grammar(style=prompt.style, tools=prompt.tools, tool_choice=_forced_choice(turn.tool_choice),
                              response_format=_format_spec(turn.output_format), format_param="text.format",
                              choice_param="tool_choice", parallel_tool_calls=req.parallel_tool_calls is not False)
    return SamplingParams(max_tokens=max_tokens, **sampler_defaults(req), seed=req.seed, grammar=grammar,
                          reply=prompt.reply)


def _forced_choice(choice: ToolChoice) -> Any:
    """The turn's checked choice in the shape request_grammar reads; hosted-tool choices were already
    turned into auto (convert.tool_choice), so they constrain nothing."""
    if choice.mode == "named":
        return {"type": "function", "name": choice.name}
    return choice.mode


def _format_spec(fmt: Optional[OutputFormat]) -> Optional[dict]:
    """The turn's checked `text.format` in the shape request_grammar reads (None: plain text)."""
    if fmt is None:
        return None
    return {"type": fmt.kind} if fmt.schema is None else {"type": fmt.kind, "schema": fmt.schema}


@router.post("/v1/responses")
async def create_response(req: ResponsesRequest, request: Request):
    served, store = request.app.state.served, store_of(request.app)
    check_name(served, req.model)
    turn = to_turn(req, served.style, store.history(req.previous_response_id),
                   default_thinking=served.thinking_for(req.model))
    prompt = await run_in_threadpool(_render, served, turn)
    budget = generation_budget(served, len(prompt.tokens), req.max_output_tokens)
    params = sampling(req, turn, prompt=prompt, max_tokens=budget)
    events = await dispatch.start(served, request, prompt.tokens, params, endpoint="responses", keepalive=req.stream)
    chunks = reply_chunks(events)
    build = ResponseBuilder(model_id=served.model_id, echo=echo_fields(req, max_output_tokens=budget),
                            parallel_tool_calls=req.parallel_tool_calls is not False)

    def keep() -> None:
        if req.store is not False:
            store.put(build.id, turn.conversation, build.items)

    if req.stream:
        return _sse(_stream(build, chunks, keep))
    collected = await dispatch.collect(chunks, request)
    for c in collected:
        build.step(c)
    build.finish(collected[-1].event)
    keep()
    return build.response()


def _render(served, turn: ResponseTurn):
    try:
        return render_prompt(served, turn.messages, tools=turn.tools, thinking=turn.thinking,
                             reasoning_effort=turn.reasoning_effort)
    except ApiError as e:  # the chat layer names `messages`, which this API calls `input`
        if e.param and e.param.startswith("messages"):
            e.param = "input"
        raise


async def _stream(build: ResponseBuilder, chunks, keep: Callable[[], None]) -> AsyncIterator[dict]:
    """The event sequence; it always ends with response.completed or response.failed."""
    for e in build.opening():
        yield e
    last = None
    try:
        async for c in chunks:
            if c.event is dispatch.WAITING:  # a long prefill: response.created is out, SSE pings keep it open
                continue
            last = c.event
            for e in build.step(c):
                yield e
    except Exception:
        log.exception("error in a streamed Responses API reply")
        yield build.failed(_FAILED)
        return
    finally:
        await chunks.aclose()
    if last is None:
        yield build.failed("the generation ended before its first token")
        return
    for e in build.finish(last):
        yield e
    keep()


def _sse(objects: AsyncIterator[dict]) -> EventSourceResponse:
    """Each event's "type" is also its SSE event name, as the Responses API sends them (no [DONE])."""

    async def events():
        try:
            async for obj in objects:
                yield ServerSentEvent(event=obj["type"], data=json.dumps(obj, ensure_ascii=False))
        finally:
            await objects.aclose()

    return EventSourceResponse(events(), sep="\n")

"""Anthropic-compatible endpoint: POST /v1/messages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from . import dispatch
from .anthropic_map import check_model, message, thinking, to_messages, to_tools
from .anthropic_stream import message_events
from .chat_bridge import generation_budget, render_prompt, reply_chunks, stop_strings
from .params import SamplingParams, sampler_defaults
from .schemas_anthropic import CountTokensRequest, MessagesRequest
from .sse import anthropic_stream
from .structured import request_grammar

router = APIRouter()


@router.post("/v1/messages")
async def messages(req: MessagesRequest, request: Request):
    served = request.app.state.served
    check_model(served, req)
    prompt = await run_in_threadpool(render_prompt, served, to_messages(req), tools=to_tools(req),
                                     thinking=_thinking(req, served))
    budget = generation_budget(served, len(prompt.tokens), req.max_tokens)
    params = SamplingParams(max_tokens=budget, **sampler_defaults(req),
                            stop=stop_strings(req.stop_sequences, "stop_sequences"),
                            grammar=request_grammar(style=served.style, tools=prompt.tools, tool_choice=req.tool_choice,
                                                    parallel_tool_calls=not (req.tool_choice and
                                                                             req.tool_choice.disable_parallel_tool_use)),
                            reply=prompt.reply)
    events = await dispatch.start(served, request, prompt.tokens, params, endpoint="messages", keepalive=req.stream)
    chunks = reply_chunks(events)
    if req.stream:
        return anthropic_stream(message_events(served, chunks, prompt_tokens=len(prompt.tokens)))
    return message(served, await dispatch.collect(chunks, request))


def _thinking(req, served):
    """The request's thinking switch, else the one its model name selects (deepseek-reasoner: on)."""
    wanted = thinking(req, served.style)
    return served.thinking_for(req.model) if wanted is None else wanted


@router.post("/v1/messages/count_tokens")
async def count_tokens(req: CountTokensRequest, request: Request):
    served = request.app.state.served
    check_model(served, req)
    prompt = await run_in_threadpool(render_prompt, served, to_messages(req), tools=to_tools(req),
                                     thinking=_thinking(req, served))
    return {"input_tokens": len(prompt.tokens)}

"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from . import dispatch
from .chat_bridge import (
    check_prompt_length,
    generation_budget,
    render_prompt,
    reply_chunks,
    resolve_thinking,
)
from .fim import fim_max_tokens, fim_tokens
from .model_names import check_name, model_cards
from .openai_map import (
    ChatChunks,
    chat_messages,
    chat_response,
    chat_tools,
    check_common,
    completion_logprobs,
    completion_obj,
    completion_tokens,
    new_id,
    sampling,
    usage,
)
from .schemas_openai import ChatCompletionRequest, CompletionRequest
from .sse import openai_stream
from .structured import check_answer, request_grammar

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    cards = model_cards(request.app.state.served)
    return {"object": "list", "data": cards, "has_more": False, "first_id": cards[0]["id"],
            "last_id": cards[-1]["id"]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    served = request.app.state.served
    check_name(served, model_id)
    return next(c for c in model_cards(served) if c["id"] == model_id)


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request):
    served = request.app.state.served
    check_common(served, req)
    thinking = resolve_thinking(req.chat_template_kwargs, req.thinking.type if req.thinking else None)
    thinking = served.thinking_for(req.model) if thinking is None else thinking
    prompt = await run_in_threadpool(render_prompt, served, chat_messages(req), tools=chat_tools(req),
                                     thinking=thinking, reasoning_effort=req.reasoning_effort)
    budget = generation_budget(served, len(prompt.tokens), req.max_completion_tokens or req.max_tokens)
    top = (req.top_logprobs or 0) if req.logprobs else None
    grammar = request_grammar(style=served.style, tools=prompt.tools, tool_choice=req.tool_choice,
                              response_format=req.response_format, parallel_tool_calls=req.parallel_tool_calls)
    if grammar is not None and prompt.answer:  # prefix completion: the grammar continues the given content
        await run_in_threadpool(check_answer, served, grammar, prompt.answer,
                                param=f"messages.{len(req.messages) - 1}.content")
    events = await dispatch.start(served, request, prompt.tokens,
                                  sampling(req, max_tokens=budget, top_logprobs=top, grammar=grammar,
                                           reply=prompt.reply), endpoint="chat")
    chunks = reply_chunks(events)
    if req.stream:
        return openai_stream(_chat_stream(served, chunks, req))
    return chat_response(served, await dispatch.collect(chunks, request), want_logprobs=req.logprobs)


async def _chat_stream(served, chunks, req: ChatCompletionRequest):
    build = ChatChunks(served, want_logprobs=req.logprobs)
    yield build.opening()
    last = None
    try:
        async for c in chunks:
            last = c.event
            if (obj := build.step(c)) is not None:
                yield obj
    finally:
        await chunks.aclose()
    if req.stream_options and req.stream_options.include_usage and last is not None:
        yield build.usage(last)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    served = request.app.state.served
    check_common(served, req)
    if req.suffix is not None:  # FIM: the echo is the prompt text, not the PSM markup around it
        tokens = await run_in_threadpool(fim_tokens, served, req.prompt, req.suffix)
        requested = fim_max_tokens(served, req.max_tokens)
        echo = (req.prompt if isinstance(req.prompt, str) else req.prompt[0]) if req.echo else ""
    else:
        tokens = await run_in_threadpool(completion_tokens, served, req.prompt)
        requested = req.max_tokens
        echo = served.tokenizer.decode(tokens) if req.echo else ""
    check_prompt_length(served, len(tokens), "prompt")
    budget = generation_budget(served, len(tokens), requested)
    params = sampling(req, max_tokens=budget, top_logprobs=req.logprobs)
    events = await dispatch.start(served, request, tokens, params, endpoint="completions")
    if req.stream:
        return openai_stream(_completion_stream(served, events, req, echo))
    evs = await dispatch.collect(events, request)
    last = evs[-1]
    lps = completion_logprobs(served, evs, len(echo)) if req.logprobs is not None else None
    return completion_obj(served, new_id("cmpl"), echo + "".join(e.text for e in evs), last.finish_reason, lps,
                          usage=usage(last))


async def _completion_stream(served, events, req: CompletionRequest, echo: str):
    cid, last = new_id("cmpl"), None
    try:
        if echo:
            yield completion_obj(served, cid, echo, None)
        async for ev in events:
            last = ev
            lps = completion_logprobs(served, [ev], 0) if req.logprobs is not None else None
            if ev.text or ev.finish_reason or lps:
                yield completion_obj(served, cid, ev.text, ev.finish_reason, lps)
    finally:
        await events.aclose()
    if req.stream_options and req.stream_options.include_usage and last is not None:
        yield completion_obj(served, cid, "", None, choices=[], usage=usage(last))

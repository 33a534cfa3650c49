"""OpenAI Chat Completions / Completions: request -> (messages, tools, sampling), parsed reply -> response."""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from .api_errors import ApiError
from .chat_bridge import Chunk, as_text, stop_strings
from .model_names import check_name
from .params import SamplingParams, sampler_defaults
from .schemas_openai import ChatCompletionRequest, _Sampling
from .state import ServedModel


def check_common(served: ServedModel, req: _Sampling) -> None:
    check_name(served, req.model)
    if req.n != 1:
        raise ApiError(400, f"n: only n=1 is supported, got {req.n}", param="n")


def sampling(req: _Sampling, *, max_tokens: int, top_logprobs: Optional[int], grammar: Optional[str] = None,
             reply=None):
    return SamplingParams(max_tokens=max_tokens, **sampler_defaults(req), seed=req.seed,
                          stop=stop_strings(req.stop, "stop"),
                          top_logprobs=top_logprobs, grammar=grammar, reply=reply)


def chat_messages(req: ChatCompletionRequest) -> list[dict]:
    """The request's messages as the OpenAI-shaped dicts mlxseek.formats renders."""
    out = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": as_text(m.content)}
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        if m.prefix is not None:
            d["prefix"] = m.prefix
        out.append(d)
    return out


def chat_tools(req: ChatCompletionRequest) -> Optional[list[dict]]:
    """Tools to render: "none" renders none, a named choice renders only that one, "auto"/"required" render
    all (a forced call is then constrained to them: serve/structured.py)."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice
    if choice == "none":
        return None
    if choice is not None and not isinstance(choice, str):
        named = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not named:
            raise ApiError(400, f"tool_choice: no tool named '{choice.function.name}' in tools",
                           param="tool_choice")
        return named
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice: 'required' needs at least one tool in tools", param="tool_choice")
    return tools or None


def finish_reason(raw: str, tool_calls) -> str:
    return "tool_calls" if tool_calls and raw == "stop" else raw


def usage(ev) -> dict:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.generation_tokens,
            "total_tokens": ev.prompt_tokens + ev.generation_tokens,
            "prompt_tokens_details": {"cached_tokens": ev.cached_tokens},
            # DeepSeek's context-caching fields (api-docs.deepseek.com, "Context Caching"), from the same count
            "prompt_cache_hit_tokens": ev.cached_tokens,
            "prompt_cache_miss_tokens": ev.prompt_tokens - ev.cached_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def token_logprob(served: ServedModel, ev) -> Optional[dict]:
    if ev.logprob is None:
        return None
    text = served.token_text(ev.token)
    return {"token": text, "logprob": ev.logprob, "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
                             for _, t, lp in (ev.top_logprobs or ())]}


def chat_tool_call(call, index: Optional[int] = None) -> dict:
    d = call.to_openai()
    return d if index is None else {"index": index, **d}


def chat_response(served: ServedModel, chunks: list[Chunk], *, want_logprobs: bool) -> dict:
    last = chunks[-1].event
    reasoning = "".join(c.reasoning for c in chunks)
    content = "".join(c.content for c in chunks)
    calls = [t for c in chunks for t in c.tool_calls]
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [chat_tool_call(t) for t in calls]
    logprobs = ({"content": [lp for c in chunks if (lp := token_logprob(served, c.event)) is not None]}
                if want_logprobs else None)
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": served.model_id,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                         "finish_reason": finish_reason(last.finish_reason, calls)}],
            "usage": usage(last)}


class ChatChunks:
    """Builds the chat.completion.chunk objects of one streamed reply."""

    def __init__(self, served: ServedModel, *, want_logprobs: bool):
        self.served, self.want_logprobs = served, want_logprobs
        self.id, self.created, self.n_calls = new_id("chatcmpl"), int(time.time()), 0

    def _obj(self, choices: list, **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.served.model_id, "choices": choices, **extra}

    def opening(self) -> dict:
        return self._obj([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def step(self, c: Chunk) -> Optional[dict]:
        delta: dict[str, Any] = {}
        if c.reasoning:
            delta["reasoning_content"] = c.reasoning
        if c.content:
            delta["content"] = c.content
        if c.tool_calls:
            delta["tool_calls"] = [chat_tool_call(t, self.n_calls + i) for i, t in enumerate(c.tool_calls)]
            self.n_calls += len(c.tool_calls)
        lp = token_logprob(self.served, c.event) if self.want_logprobs else None
        done = c.event.finish_reason is not None
        if not delta and lp is None and not done:
            return None
        choice = {"index": 0, "delta": delta, "finish_reason":
                  finish_reason(c.event.finish_reason, range(self.n_calls)) if done else None}
        if self.want_logprobs:
            choice["logprobs"] = {"content": [lp] if lp else []}
        return self._obj([choice])

    def usage(self, ev) -> dict:
        return self._obj([], usage=usage(ev))


def completion_logprobs(served: ServedModel, events: list, offset0: int) -> dict:
    tokens, lps, tops, offsets, pos = [], [], [], [], offset0
    for ev in events:
        text = served.token_text(ev.token)
        tokens.append(text)
        lps.append(ev.logprob)
        tops.append({t: lp for _, t, lp in (ev.top_logprobs or ())})
        offsets.append(pos)
        pos += len(ev.text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def completion_obj(served: ServedModel, cid: str, text: str, finish: Optional[str], logprobs=None, **extra) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": served.model_id,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}], **extra}


def completion_tokens(served: ServedModel, prompt) -> list[int]:
    """A /v1/completions prompt as token ids: a string (BOS added unless it starts with it, as
    mlxseek.generate does) or token ids, each checked against the model's vocabulary."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise ApiError(400, "prompt: only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        bos = getattr(served.tokenizer, "bos_token", None)
        return list(served.tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos))))
    vocab = served.vocab_size
    for i, t in enumerate(prompt):
        if not 0 <= t < vocab:
            raise ApiError(400, f"prompt.{i}: token id {t} is outside the model's vocabulary [0, {vocab})",
                           param=f"prompt.{i}")
    return list(prompt)

"""The parsed reply -> a Responses API `response` object and its streaming events.

One builder serves both shapes: a streamed request yields the events `step` and `finish` return; a
non-streamed one drops them and answers `response()`. Items open in reply order (reasoning, message,
function calls), one at a time, and `response.output_item.done` carries each whole item, as Codex and
the SDKs rebuild the turn from those. Every stream ends with `response.completed` or `response.failed`
(a length cut is `completed` with status "incomplete", which clients that only wait for `completed` accept).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from ..chat_bridge import Chunk
from ..params import sampler_defaults
from .convert import arguments_json


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def usage(ev, reasoning_tokens: int) -> dict:
    return {"input_tokens": ev.prompt_tokens, "input_tokens_details": {"cached_tokens": ev.cached_tokens},
            "output_tokens": ev.generation_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": ev.prompt_tokens + ev.generation_tokens}


class ResponseBuilder:
    """Builds one response; `echo` holds the request fields the response object repeats."""

    def __init__(self, *, model_id: str, echo: dict, parallel_tool_calls: bool = True):
        self.id, self.created = new_id("resp"), int(time.time())
        self.model_id, self.echo, self.parallel = model_id, echo, parallel_tool_calls
        self.items: list[dict] = []      # finished output items
        self.open: Optional[dict] = None
        self.seq, self.reasoning_tokens, self.n_calls = 0, 0, 0
        self.status, self.usage, self.incomplete = "in_progress", None, None

    def _event(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def response(self, error: Optional[dict] = None) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created, "status": self.status,
                "error": error, "incomplete_details": self.incomplete, "model": self.model_id,
                "output": list(self.items), "usage": self.usage, **self.echo}

    def opening(self) -> list[dict]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def _index(self) -> int:
        return len(self.items)

    def _close(self) -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": self._index()}
        out = []
        if item["type"] == "reasoning":
            text = item["content"][0]["text"]
            out.append(self._event("response.reasoning_text.done", **where, content_index=0, text=text))
        elif item["type"] == "message":
            part = item["content"][0]
            out.append(self._event("response.output_text.done", **where, content_index=0, text=part["text"],
                                   logprobs=[]))
            out.append(self._event("response.content_part.done", **where, content_index=0, part=part))
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", output_index=self._index(), item=item))
        self.items.append(item)
        return out

    def _start(self, item: dict, shown: dict) -> list[dict]:
        out = self._close()
        self.open = item
        out.append(self._event("response.output_item.added", output_index=self._index(), item=shown))
        return out

    def _text(self, kind: str, text: str) -> list[dict]:
        out: list[dict] = []
        if self.open is None or self.open["type"] != kind:
            if kind == "reasoning":
                item = {"id": new_id("rs"), "type": "reasoning", "summary": [],
                        "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"}
                out += self._start(item, {**item, "content": []})
            else:
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                        "content": [part]}
                out += self._start(item, {**item, "content": []})
                out.append(self._event("response.content_part.added", item_id=item["id"],
                                       output_index=self._index(), content_index=0, part=dict(part)))
        self.open["content"][0]["text"] += text
        delta = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        return out + [self._event(delta, item_id=self.open["id"], output_index=self._index(), content_index=0,
                                  delta=text, **extra)]

    def _call(self, call) -> list[dict]:
        if not self.parallel and self.n_calls >= 1:
            return []  # parallel_tool_calls: false keeps the first call only
        self.n_calls += 1
        args = arguments_json(call.arguments)
        item = {"id": new_id("fc"), "type": "function_call", "call_id": call.id, "name": call.name,
                "arguments": args, "status": "in_progress"}
        out = self._start(item, {**item, "arguments": ""})
        where = {"item_id": item["id"], "output_index": self._index()}
        out.append(self._event("response.function_call_arguments.delta", **where, delta=args))
        out.append(self._event("response.function_call_arguments.done", **where, arguments=args))
        return out + self._close()

    def step(self, c: Chunk) -> list[dict]:
        out: list[dict] = []
        if c.reasoning:
            self.reasoning_tokens += 1
            out += self._text("reasoning", c.reasoning)
        if c.content:
            out += self._text("message", c.content)
        for call in c.tool_calls:
            out += self._call(call)
        return out

    def finish(self, last) -> list[dict]:
        """Close the reply after its last engine event: always at least one item, then response.completed."""
        out: list[dict] = []
        if not self.items and self.open is None:
            out += self._text("message", "")[:-1]  # an empty answer is still one (empty) message item
        out += self._close()
        self.usage = usage(last, self.reasoning_tokens)
        self.status = "incomplete" if last.finish_reason == "length" else "completed"
        if self.status == "incomplete":
            self.incomplete = {"reason": "max_output_tokens"}
        return out + [self._event("response.completed", response=self.response())]

    def failed(self, message: str) -> dict:
        self.status = "failed"
        return self._event("response.failed", response=self.response({"code": "server_error", "message": message}))


def echo_fields(req: Any, *, max_output_tokens: int) -> dict:
    """The request fields a response object repeats back."""
    return {"instructions": req.instructions, "max_output_tokens": max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "store": req.store is not False, **sampler_defaults(req),
            "text": {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)
                     if req.text and req.text.format else {"type": "text"}},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
            "truncation": "disabled", "metadata": req.metadata or {}}

"""One generation on behalf of an HTTP request: errors before the first token become HTTP answers, metrics
and logs are recorded, and a client that goes away stops the generation.

The first event is awaited before the response starts, so a full queue (429) or a refused prompt (400) is
still an HTTP status and not an error in the middle of a 200 stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, TypeVar

from ..errors import GenerationError, QueueFullError
from .api_errors import ApiError
from .state import ServedModel

log = logging.getLogger("mlxseek.serve")
T = TypeVar("T")
_POLL_S = 0.25  # how often a waiting handler checks whether its client is still there


class ClientGone(Exception):
    """The client closed its connection; nothing is left to answer."""


async def until_disconnect(awaitable: Awaitable[T], request) -> T:
    """Await `awaitable`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def start(served: ServedModel, request, tokens: list[int], params, *, endpoint: str) -> AsyncIterator[Any]:
    """Queue a generation and wait for its first TokenEvent; returns an iterator over all events."""
    if served.log_prompts:
        log.info("%s prompt: %r", endpoint, served.tokenizer.decode(tokens))
    t0 = time.perf_counter()
    agen = served.engine.generate(tokens, params)
    try:
        first = await until_disconnect(agen.__anext__(), request)
    except QueueFullError:
        await agen.aclose()
        retry = served.limits.retry_after_s
        raise ApiError(429, f"the server's request queue is full; retry in {retry} s", code="queue_full",
                       headers={"Retry-After": str(retry)}) from None
    except GenerationError as e:
        await agen.aclose()
        field = str(e).split(":", 1)[0]
        raise ApiError(400, str(e), param=field if field.isidentifier() else None) from None
    except BaseException:
        await agen.aclose()
        raise
    served.metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
    return _events(first, agen, served, endpoint, t0)


async def _events(first, agen, served: ServedModel, endpoint: str, t0: float) -> AsyncIterator[Any]:
    last = first
    try:
        yield first
        if first.finish_reason is None:
            async for ev in agen:
                last = ev
                yield ev
                if ev.finish_reason is not None:
                    break
        served.metrics.finished(prompt=last.prompt_tokens, cached=last.cached_tokens,
                                generated=last.generation_tokens)
        log.info("%s done: prompt %d (cached %d) generated %d finish %s in %.2fs", endpoint, last.prompt_tokens,
                 last.cached_tokens, last.generation_tokens, last.finish_reason, time.perf_counter() - t0)
    finally:
        await agen.aclose()


async def collect(events: AsyncIterator[T], request) -> list[T]:
    """All events of a non-streamed request; a client that disconnects cancels the generation."""

    async def drain():
        return [ev async for ev in events]

    try:
        return await until_disconnect(drain(), request)
    finally:
        await events.aclose()

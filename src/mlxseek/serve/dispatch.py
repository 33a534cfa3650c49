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
KEEPALIVE_AFTER_S = 5.0  # a keepalive stream starts once its first token is this late...
KEEPALIVE_EVERY_S = 5.0  # ...and is kept alive this often until it comes


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


class Waiting:
    """Stands in the event stream for the first token while a long prompt is still being prefilled."""


WAITING = Waiting()


async def start(served: ServedModel, request, tokens: list[int], params, *, endpoint: str,
                keepalive: bool = False) -> AsyncIterator[Any]:
    """Queue a generation and wait for its first TokenEvent; returns an iterator over all events.

    keepalive: a stream that would wait past KEEPALIVE_AFTER_S for its first token (a long prefill) starts
    anyway and gets WAITING every KEEPALIVE_EVERY_S until it comes, so clients see the connection alive
    (Anthropic `ping`). A full queue or a refused request still fails at once, as an HTTP status; a failure
    after that point arrives in the stream.
    """
    if served.log_prompts:
        log.info("%s prompt: %r", endpoint, served.tokenizer.decode(tokens))
    t0 = time.perf_counter()
    agen = served.engine.generate(tokens, params)
    nxt = asyncio.ensure_future(agen.__anext__())
    try:
        if keepalive and not await until_disconnect(_settled(nxt, KEEPALIVE_AFTER_S), request):
            return _waiting(nxt, agen, served, endpoint, t0)
        first = await until_disconnect(nxt, request)
    except QueueFullError:
        await agen.aclose()
        retry = served.limits.retry_after_s
        raise ApiError(429, f"the server's request queue is full; retry in {retry} s", code="queue_full",
                       headers={"Retry-After": str(retry)}) from None
    except GenerationError as e:
        await agen.aclose()
        raise ApiError(400, str(e), param=e.field) from None
    except BaseException:
        await _abandon(nxt, agen)
        raise
    served.metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
    return _events(first, agen, served, endpoint, t0)


async def _abandon(nxt: asyncio.Future, agen) -> None:
    """Cancel the pending first event and close the generation."""
    nxt.cancel()
    await asyncio.gather(nxt, return_exceptions=True)
    await agen.aclose()


async def _settled(task: asyncio.Future, timeout: float) -> bool:
    done, _ = await asyncio.wait({task}, timeout=timeout)
    return bool(done)


async def _waiting(nxt: asyncio.Future, agen, served: ServedModel, endpoint: str, t0: float) -> AsyncIterator[Any]:
    """WAITING until the first event, then every event (a failure now surfaces inside the stream)."""
    try:
        while not await _settled(nxt, KEEPALIVE_EVERY_S):
            yield WAITING
        first = nxt.result()
    except BaseException:
        await _abandon(nxt, agen)
        raise
    served.metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
    async for ev in _events(first, agen, served, endpoint, t0):
        yield ev


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

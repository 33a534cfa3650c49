"""Server-sent event streams (sse-starlette) for both APIs; an error after the 200 went out becomes an
error event in the API's shape, and the stream ends."""

from __future__ import annotations

import json
import logging
from typing import AsyncIterator

from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from .api_errors import ApiError, ApiKind, error_body

log = logging.getLogger("mlxseek.serve")
_INTERNAL = ApiError(500, "internal server error while generating; see the server log")


def openai_stream(objects: AsyncIterator[dict]) -> EventSourceResponse:
    async def events():
        try:
            async for obj in objects:
                yield ServerSentEvent(data=json.dumps(obj, ensure_ascii=False))
            yield ServerSentEvent(data="[DONE]")
        except Exception:
            log.exception("error in a streamed OpenAI response")
            yield ServerSentEvent(data=json.dumps(error_body(_INTERNAL, api=ApiKind.OPENAI)))
        finally:
            await objects.aclose()

    return EventSourceResponse(events(), sep="\n")


def anthropic_stream(objects: AsyncIterator[dict]) -> EventSourceResponse:
    """Each object's "type" is also its SSE event name, as the Messages API sends them."""

    async def events():
        try:
            async for obj in objects:
                yield ServerSentEvent(event=obj["type"], data=json.dumps(obj, ensure_ascii=False))
        except Exception:
            log.exception("error in a streamed Anthropic response")
            yield ServerSentEvent(event="error", data=json.dumps(error_body(_INTERNAL, api=ApiKind.ANTHROPIC)))
        finally:
            await objects.aclose()

    return EventSourceResponse(events(), sep="\n")

"""Server limits: request body size and generation length caps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Limits:
    """Caps applied to every request.

    max_body_bytes: larger request bodies get a 413. max_tokens: the most tokens one request may ask to
    generate (None: the model's context); a larger `max_tokens` is clamped to it, as is one that would run past
    the context, and the reply ends with finish `length`. Prompts that fill the model's context are a 400. retry_after_s: the `Retry-After` of a 429 when the queue is full.
    """

    max_body_bytes: int = 8 << 20
    max_tokens: Optional[int] = None
    retry_after_s: int = 1

"""What a request asks of the engine and what it gets back: SamplingParams (checked by `check_params`
before the request is queued) and the TokenEvent of each generated token."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GenerationError
from ..formats import ReplyFormat
from ..speculative.step import DRAFT_MODES  # the library's own list: the server offers exactly what it drafts
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request; temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0: the chosen token's only; k: also the top k
    draft: str | None = None  # None (the engine's default) | "none" | "mtp" | "dspark" | "auto"
    grammar: str | None = None  # llguidance Lark text the reply must follow (serve/structured.py)
    reply: ReplyFormat | None = None  # the rendered chat prompt's reply format: events carry the parse


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; the last event of a request carries its finish_reason."""

    token: int
    text: str
    logprob: float | None
    top_logprobs: tuple[tuple[int, str, float], ...] | None
    finish_reason: str | None  # None mid-stream; "stop" (EOS / stop string) or "length" on the last event
    prompt_tokens: int
    cached_tokens: int
    generation_tokens: int
    batch_size: int = 1  # rows that shared the forward producing this token
    drafting: bool = False  # MTP drafting was on for this token
    # What this token adds to the parsed reply (mlxseek.stream_generate's records; the one parse of it)
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple = ()


def check_params(p: SamplingParams, context: int) -> None:
    def bad(field_name: str, why: str):
        raise GenerationError(f"{field_name}: {why}", field=field_name)

    if not isinstance(p.max_tokens, int) or isinstance(p.max_tokens, bool) or p.max_tokens < 1:
        bad("max_tokens", f"must be a positive integer, got {p.max_tokens!r}")
    if p.max_tokens > context:
        bad("max_tokens", f"{p.max_tokens} is over the model's context of {context} tokens; ask for fewer")
    if not isinstance(p.temperature, (int, float)) or not 0 <= p.temperature <= 100:
        bad("temperature", f"must be a number >= 0, got {p.temperature!r}")
    if not isinstance(p.top_p, (int, float)) or not 0 < p.top_p <= 1:
        bad("top_p", f"must be in (0, 1], got {p.top_p!r}")
    if p.top_logprobs is not None and (not isinstance(p.top_logprobs, int) or not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS):
        bad("top_logprobs", f"must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {p.top_logprobs!r}")
    if p.draft is not None and p.draft not in DRAFT_MODES:
        bad("draft", f"must be one of {', '.join(DRAFT_MODES)}, got {p.draft!r}")
    if not all(isinstance(s, str) for s in p.stop):
        bad("stop", "every stop sequence must be a string")


def sampler_defaults(req) -> dict:
    """A request's temperature and top_p, 1.0 where it sends none (the OpenAI and Anthropic APIs' defaults)."""
    return {"temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p}


__all__ = ["DRAFT_MODES", "MAX_TOP_LOGPROBS", "SamplingParams", "TokenEvent", "check_params", "sampler_defaults"]

"""One batched row's own state: its sampling parameters, its PRNG key and its record stream.

A row's text handling is `stream_generate`'s own (`_decode`: detokenizer, stop strings, reasoning
split, EOS and length), driven one token at a time through a one-slot feed, so a batched row's
records are those the same sequence streams alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p

from ..errors import GenerationError
from ..formats import ReplyFormat
from .stream import GenerationResponse


@dataclass(frozen=True)
class RowParams:
    """Per-sequence decoding parameters. temperature 0 is greedy; `seed` makes a sampled row reproducible
    whatever else shares its batch (the row draws from its own key, as `stream_generate(seed=...)` does
    from MLX's global one, so the two give the same tokens); `stop` strings end the row (not included);
    `grammar` (llguidance Lark text, see `mlxseek.formats.constraints`) constrains the row's reply;
    `reply`: the reply's format when the caller rendered the prompt (stream_generate's `reply`); `draft`:
    the drafter this row uses while it runs alone ("mtp" | "dspark" | "auto" | "none"; None: the decoder's)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    grammar: Optional[str] = None
    reply: Optional[ReplyFormat] = None
    draft: Optional[str] = None
    sampler: Optional[Callable[[mx.array], mx.array]] = field(default=None, compare=False)

    def check(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise GenerationError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class BatchRecord(GenerationResponse):
    """A `GenerationResponse` from batched decoding: `batch_size` rows shared the forward that produced
    this token (1 for a prefill's first token), and `drafting` says whether MTP drafted it."""

    batch_size: int = 1
    drafting: bool = False


class RowSampler:
    """Greedy, a caller's sampler, or temperature/top-p with the row's own key.

    The key advances as MLX's global key sequence does (split; keep the first half, draw with the
    second), so a seeded row repeats `stream_generate(seed=s, sampler=make_sampler(temp, top_p))`."""

    def __init__(self, params: RowParams):
        self.fn, self.temp, self.top_p = params.sampler, params.temperature, params.top_p
        self.greedy = self.fn is None and self.temp == 0
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.key = None if self.greedy or self.fn is not None else mx.random.key(seed)

    def __call__(self, logprobs: mx.array) -> mx.array:
        """logprobs (1, V) -> token (1,)."""
        if self.greedy:
            return mx.argmax(logprobs, axis=-1)
        if self.fn is not None:
            return self.fn(logprobs)
        if 0 < self.top_p < 1:
            logprobs = apply_top_p(logprobs, self.top_p)
        self.key, sub = mx.random.split(self.key)
        return mx.random.categorical(logprobs * (1.0 / self.temp), key=sub)


class Feed:
    """The token stream `_decode` pulls from: the decoder puts one (token, logprobs) before each pull."""

    def __init__(self):
        self.item: Optional[tuple[int, mx.array]] = None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, mx.array]:
        if self.item is None:
            raise StopIteration
        item, self.item = self.item, None
        return item


class Row:
    """A running sequence: `y` is its last sampled token (emitted, not yet fed to the model)."""

    def __init__(self, rid: int, sampler: RowSampler, feed: Feed, records, budget: int, constraint=None):
        self.rid, self.sampler, self.feed, self.records = rid, sampler, feed, records
        self.constraint = constraint  # a TokenConstraint (fed every emitted token but y), or None
        self.budget = budget  # tokens it may emit (max_tokens capped by the context)
        self.y: int = -1
        self.finished = False
        self.tokens: list[int] = []

    def emit(self, token: int, logprobs: mx.array, batch_size: int, drafting: bool = False) -> BatchRecord:
        """This row's record for `token`; marks the row finished on its last one."""
        self.feed.item = (token, logprobs)
        rec = next(self.records)
        self.y = token
        self.tokens.append(token)
        self.finished = rec.finish_reason is not None
        return BatchRecord(**vars(rec), batch_size=batch_size, drafting=drafting)

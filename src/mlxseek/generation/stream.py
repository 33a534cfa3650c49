"""Streaming generation: `stream_generate` (small records) and `generate` (text), over `generate_step`
(plain) or `speculative_generate_step` (MTP drafting). The detokenizer is mlx-lm's streaming one;
stop strings are held back until they can no longer match, and R1-style reasoning is split off."""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.generate import wired_limit

from ..errors import GenerationError, VocabularyError
from ..formats import ReplyFormat, ReplyParser, ToolCall
from ..speculative.policy import DraftStats
from ..speculative.step import speculative_generate_step
from .constraint import make_constraint
from .reasoning import held_prefix, prompt_opens_reasoning
from .steps import LogitsProcessor, Sampler, generate_step


@dataclass
class GenerationResponse:
    """One streamed step. `text` is the newly printable text (may be empty); `reasoning`/`content`/
    `tool_calls` are what the chat format's reply parser made of it (a tool call appears once complete;
    `malformed`: the model wrote a tool call that did not parse, kept in `content`). Speeds are tokens
    per second, `peak_memory` is in GB."""

    text: str
    token: int
    logprobs: mx.array
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: Optional[str] = None  # "stop" (EOS or stop string), "length", or None mid-stream
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed: bool = False
    # Drafting (draft="mtp"/"dspark"/"auto"): running totals, 0 without drafting.
    draft_tokens: int = 0  # tokens the drafter proposed
    accepted_tokens: int = 0  # ... that the model accepted
    verify_steps: int = 0  # model forward passes in the decode loop
    drafting_steps: int = 0  # ... that verified at least one draft
    confidence_cuts: int = 0  # DSpark blocks its confidence head cut short

    @property
    def mean_accepted_length(self) -> float:
        """Drafts accepted per verify step that drafted (0.0 before any)."""
        return self.accepted_tokens / self.drafting_steps if self.drafting_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0.0 before any draft)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0


class _StopFilter:
    """Holds back text that could be the start of a stop string; reports the first full match."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        keep = max((held_prefix(self.buf, s) for s in self.stops), default=0)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def encode_prompt(tokenizer, prompt: Union[str, Sequence[int], mx.array], *,
                  vocab_size: Optional[int] = None) -> mx.array:
    """A prompt string or token ids -> 1-D int array; the string goes through the tokenizer as is.
    With `vocab_size`, every id is checked against it (VocabularyError)."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise GenerationError("prompt is a string but the model folder has no tokenizer; pass token ids")
        bos = getattr(tokenizer, "bos_token", None)
        ids = tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))
    else:
        ids = prompt.tolist() if isinstance(prompt, mx.array) else list(prompt)
    if len(ids) == 0:
        raise GenerationError("prompt is empty: give at least one token")
    check_token_ids(ids, vocab_size)
    return mx.array(ids, dtype=mx.uint32)


def check_token_ids(ids: Sequence[int], vocab_size: Optional[int], *, what: str = "prompt") -> None:
    """Every id must be an integer in [0, vocab_size). MLX's embedding gather does not bounds-check: an id
    past the table reads other memory (garbage on a small vocabulary, SIGSEGV on a wide one)."""
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise VocabularyError(f"{what} token {i} is {t!r}: token ids are non-negative integers")
        if vocab_size is not None and t >= vocab_size:
            raise VocabularyError(
                f"{what} token {i} is id {t} but the model's vocabulary has {vocab_size} ids (0..{vocab_size - 1}, "
                "config.json vocab_size); the tokenizer does not belong to this model, or the ids are wrong")


def _vocab_size(model) -> Optional[int]:
    cfg = getattr(model, "config", None) or getattr(model, "args", None)
    return getattr(cfg, "vocab_size", None)


def _context_length(model) -> Optional[int]:
    cfg = getattr(model, "config", None) or getattr(model, "args", None)
    return getattr(cfg, "max_position_embeddings", None)


def _check_lengths(model, n_prompt: int, cached: int, max_tokens: int) -> int:
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise GenerationError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    ctx = _context_length(model)
    if ctx is None:
        return max_tokens
    if cached + n_prompt >= ctx:
        raise GenerationError(
            f"prompt is {n_prompt} tokens (+{cached} already in the prompt cache) but the model's context is "
            f"{ctx} tokens (config.json max_position_embeddings); shorten the prompt or reset the chat"
        )
    return min(max_tokens, ctx - cached - n_prompt)


class _Records:
    """Builds GenerationResponse records: clocks, text filters (stop strings, reasoning split)."""

    def __init__(self, n_prompt: int, stops: _StopFilter, reply: ReplyParser):
        self.n_prompt, self.stops, self.reply = n_prompt, stops, reply
        self.tic = time.perf_counter()
        self.t_first, self.prompt_tps = self.tic, 0.0
        self.stats = None  # a DraftStats when drafting

    def first_token(self) -> None:
        self.t_first = time.perf_counter()
        self.prompt_tps = self.n_prompt / max(self.t_first - self.tic, 1e-9)

    def make(self, text: str, token: int, logprobs: mx.array, n: int, finish: Optional[str] = None):
        delta = self.reply.feed(text)
        if finish:
            end = self.reply.finish()
            delta.reasoning, delta.content = delta.reasoning + end.reasoning, delta.content + end.content
            delta.tool_calls += end.tool_calls
        return GenerationResponse(
            text=text, token=token, logprobs=logprobs, prompt_tokens=self.n_prompt, prompt_tps=self.prompt_tps,
            generation_tokens=n, generation_tps=n / max(time.perf_counter() - self.t_first, 1e-9),
            peak_memory=mx.get_peak_memory() / 1e9, finish_reason=finish, reasoning=delta.reasoning, content=delta.content,
            tool_calls=delta.tool_calls, malformed=self.reply.reply.malformed,
            **({} if self.stats is None else {"draft_tokens": self.stats.draft_tokens,
                                              "accepted_tokens": self.stats.accepted_tokens,
                                              "verify_steps": self.stats.verify_steps,
                                              "drafting_steps": self.stats.first_drafts,
                                              "confidence_cuts": self.stats.confidence_cuts}),
        )


def reply_format(tokenizer, ids: mx.array, *, chat_style: Optional[str] = None,
                 tools: Optional[list[dict]] = None) -> ReplyFormat:
    """The reply format of a prompt given as tokens, for callers that did not render it themselves: the
    style named or the tokenizer's, and thinking read off the prompt's last tokens (an open `<think>`)."""
    # Without a known format (no chat template in the folder: mlxseek's V3/R1 fallback), R1's reply rules.
    style = chat_style or getattr(tokenizer, "chat_style", None) or "r1"
    return ReplyFormat(style, thinking=prompt_opens_reasoning(tokenizer, ids[-4:].tolist()), tools=tools)


def make_records(n_prompt: int, stop: Optional[Iterable[str]], reply: ReplyFormat) -> _Records:
    """The record builder of one sequence (also each row of `generation.batch`)."""
    return _Records(n_prompt, _StopFilter(list(stop or [])), ReplyParser.of(reply))


def stream_generate(
    model,
    tokenizer,
    prompt: Union[str, Sequence[int], mx.array],
    *,
    max_tokens: int = 256,
    sampler: Optional[Sampler] = None,
    logits_processors: Optional[Sequence[LogitsProcessor]] = None,
    prompt_cache: Optional[list] = None,
    stop: Optional[Iterable[str]] = None,
    seed: Optional[int] = None,
    prefill_step_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    draft: Optional[str] = None,
    num_draft: int = 1,
    chat_style: Optional[str] = None,
    tools: Optional[list[dict]] = None,
    grammar: Optional[str] = None,
    reply: Optional[ReplyFormat] = None,
) -> Generator[GenerationResponse, None, None]:
    """Stream GenerationResponse records for `prompt` (a string or token ids).

    Greedy unless a `sampler` (e.g. `mlx_lm.sample_utils.make_sampler(temp=0.7, top_p=0.9)`) is given;
    `seed` seeds MLX's global PRNG first. Stops at an EOS token, at any string in `stop` (not included
    in the text), or after `max_tokens` (capped by the model's context). A `prompt_cache` from
    `make_prompt_cache(model)` is extended in place, so the next call only prefills its new tokens.
    draft="mtp" drafts `num_draft` tokens per step with the model's MTP module and verifies them in one
    forward (greedy output unchanged; sampling needs `mlxseek.speculative.make_sampler`); "auto" drafts
    only where it measures a speedup; "dspark" drafts with the DSpark block drafter (V4-0731/0813). Records
    then carry draft_tokens/accepted_tokens/verify_steps/drafting_steps/confidence_cuts.
    `chat_style` (default: the tokenizer's) picks the reply format parsed into reasoning/content/tool_calls;
    `tools` (OpenAI schemas) makes calls to other names malformed. A caller that rendered the prompt passes
    its `reply` format instead (style, tools, whether the prompt opens reasoning, prefix continuation), so
    the records are the one parse of the reply. `grammar` (llguidance Lark text, e.g. from
    `mlxseek.formats.constraints`) constrains the reply (after the reasoning, if the prompt opens it).
    """
    ids = encode_prompt(tokenizer, prompt, vocab_size=_vocab_size(model))
    budget = _check_lengths(model, ids.size, prompt_cache[0].offset if prompt_cache else 0, max_tokens)
    if seed is not None:
        mx.random.seed(seed)
    eos = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
    detok = tokenizer.detokenizer if tokenizer is not None else None
    mx.reset_peak_memory()
    reply = reply or reply_format(tokenizer, ids, chat_style=chat_style, tools=tools)
    records = make_records(ids.size, stop, reply)
    constraint = None if grammar is None else make_constraint(
        tokenizer, grammar, vocab_size=_vocab_size(model), in_reasoning=reply.thinking,
            answer=reply.answer)
    if draft is not None:  # MTP self-speculative decoding (mlxseek.speculative)
        records.stats = DraftStats()
        steps = speculative_generate_step(
            ids, model, max_tokens=budget, draft=draft, num_draft=num_draft, sampler=sampler,
            logits_processors=logits_processors, prompt_cache=prompt_cache, prefill_step_size=prefill_step_size,
            progress=progress, stats=records.stats, constraint=constraint,
        )
    else:
        steps = generate_step(
            ids, model, max_tokens=budget, sampler=sampler, logits_processors=logits_processors,
            prompt_cache=prompt_cache, prefill_step_size=prefill_step_size, progress=progress,
            constraint=constraint,
        )
    # On Metal, wire the model's memory for the duration (no-op on the CPU backend).
    with wired_limit(model):
        yield from _decode(steps, records, detok, eos, budget)


def _decode(steps, records: _Records, detok, eos: set, budget: int) -> Generator[GenerationResponse, None, None]:
    stops = records.stops
    token, logprobs, n, text = None, None, 0, ""
    for n, (token, logprobs) in enumerate(steps, start=1):
        if n == 1:
            records.first_token()
        if token in eos:
            text = ""
            break
        if detok is not None:
            detok.add_token(token)
        text, hit = stops.push(detok.last_segment if detok is not None else "")
        if hit:
            yield records.make(text, token, logprobs, n, "stop")
            return
        if n == budget:
            break
        yield records.make(text, token, logprobs, n)
    hit = False
    if detok is not None:  # text held back by the detokenizer or a partial stop string
        detok.finalize()
        more, hit = stops.push(detok.last_segment)
        text += more if hit else more + stops.flush()
    yield records.make(text, token, logprobs, n, "stop" if hit or token in eos else "length")


def generate(model, tokenizer, prompt: Union[str, Sequence[int], mx.array], **kwargs) -> str:
    """The whole completion as one string; takes the keyword arguments of `stream_generate`."""
    return "".join(r.text for r in stream_generate(model, tokenizer, prompt, **kwargs))

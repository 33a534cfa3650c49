"""Batched decoding: several sequences share one forward per step; each row's tokens are its solo ones.

`BatchDecoder` is the API a server's continuous batching drives: `add(prompt, params)` prefills the
sequence on its own (a solo prompt cache, which a prefix cache may have filled) and makes it a row of
the next step; `step()` decodes one token for every row and returns (row id, record) events;
`remove(row)` drops a row at a step boundary (a cancelled request). Rows that finish (EOS, a stop
string, their max_tokens) leave by themselves. `batch_generate` / `stream_batch_generate` run a list
of prompts through it, at most `max_batch` rows at a time, later prompts joining as rows leave.

The cache is `cache.ragged.BatchLatentCache` (ragged rows; its docstring says why not left padding) for
plain MLA latents, `cache.ragged.BatchDSACache` for V3.2 (each row's indexer keys too, its top-k taken
under its own mask), `cache.v4_batch.BatchV4Cache` for V4 (each row's window ring, compressor and indexer
state at its own position: one attention pass for all rows); for kinds whose rows cannot share a buffer
(the cache protocol's `capabilities.batch`: V4.1, a quantized latent) it is `cache.batch.RowBatchCache` of
solo caches, one forward per row, exact by construction (with `model.fuse_batch_rows = False` every
family batches that way: the reference the fused caches are tested against).
A row's prefill is exactly `generate_step`'s, and its decode differs from a solo decode only in the
rows around it, which the per-row mask keeps out of its attention. With a draft mode (the decoder's or
the row's `RowParams.draft`) a greedy row drafts while it runs alone (solo.py); `record.drafting` says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from ..cache.batch import make_batch_cache
from ..errors import BatchingError, GenerationError
from .constraint import make_constraint
from .prefill import DEFAULT_PREFILL_STEP
from .rows import BatchRecord, Feed, Row, RowParams, RowSampler
from .solo import SoloDrafter
from .steps import generate_step, last_logits, make_prompt_cache, split_prompt_cache
from .stream import _check_lengths, _decode, _vocab_size, encode_prompt, make_records, reply_format

Prompt = Union[str, Sequence[int], mx.array]


class BatchDecoder:
    """Decode many sequences together; rows join (`add`) and leave (`remove`, or by finishing) between
    steps. Every family batches: MLA latents, DSA and V4 in shared buffers and one forward per step, other
    kinds (V4.1, a quantized latent) one forward per row."""

    def __init__(self, model, tokenizer, *, prefill_step_size: Optional[int] = DEFAULT_PREFILL_STEP,
                 draft: Optional[str] = None, num_draft: int = 1, keep_caches: bool = False,
                 chat_style: Optional[str] = None):
        self.model, self.tokenizer, self.prefill_step_size = model, tokenizer, prefill_step_size
        self.chat_style = chat_style  # the reply format records are parsed with (default: the tokenizer's)
        # keep_caches: a leaving row's solo per-layer caches wait in `released[row id]` (for a prefix cache).
        self.keep_caches = keep_caches
        self.released: dict[int, list] = {}
        self.cache = make_batch_cache(model)
        self.rows: list[Row] = []  # in the batch cache's row order
        self.pending: list[tuple[int, BatchRecord]] = []  # first tokens from `add`, returned by the next step
        self.eos = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
        self.draft, self.num_draft = draft, num_draft
        self.solo = SoloDrafter(model, draft, num_draft) if draft not in (None, "none") else None
        self._drafters = {draft: self.solo}  # draft mode -> its SoloDrafter (None: no drafting), built on first use
        self._draft_of: dict[int, Optional[SoloDrafter]] = {}  # row id -> the drafter it uses when alone
        self.alone: Optional[SoloDrafter] = None  # the drafter decoding the one running row, if it drafts
        self._next_id = 0

    @property
    def active(self) -> int:
        """Rows that take part in the next step."""
        return len(self.rows)

    def add(self, prompt: Prompt, params: Optional[RowParams] = None, *,
            prompt_cache: Optional[list] = None, progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Prefill `prompt` (after what `prompt_cache`, a solo cache from `make_prompt_cache`, already
        holds) and make it a row; returns its id. Its first token comes with the next `step()`.
        `progress(done, total)` is called after each prefill chunk (it may raise to abandon the prompt)."""
        params = params or RowParams()
        params.check()
        ids = encode_prompt(self.tokenizer, prompt)
        solo = prompt_cache if prompt_cache is not None else make_prompt_cache(self.model)
        budget = _check_lengths(self.model, ids.size, solo[0].offset, params.max_tokens)
        row = self._new_row(ids, params, budget)
        drafter = self._drafter(params.draft)
        self._next_id += 1
        first = self._prefill(row, ids, solo, drafter if not self.rows else None, progress)
        self.pending.append((row.rid, row.emit(*first, 1)))
        layers = split_prompt_cache(self.model, solo)[0]
        if not row.finished:
            self._draft_of[row.rid] = drafter
            self._join(row, layers)
        else:
            if drafter is not None and drafter.row is row:
                drafter.finish()
            if self.keep_caches:
                self.released[row.rid] = layers
        return row.rid

    def _prefill(self, row: Row, ids: mx.array, solo: list, drafter: Optional[SoloDrafter],
                 progress) -> tuple[int, mx.array]:
        """The row's first (token, logprobs); through `drafter` (a row joining an empty batch) when it will
        draft, so the drafter holds the prompt's history, else plain."""
        first = drafter.prefill(row, solo, ids, self.prefill_step_size, progress) if drafter is not None else None
        if first is None:
            steps = generate_step(ids, self.model, max_tokens=1, sampler=row.sampler, prompt_cache=solo,
                                  prefill_step_size=self.prefill_step_size, progress=progress,
                                  constraint=row.constraint)
            first = next(steps)
            steps.close()
        return first

    def _drafter(self, mode: Optional[str]) -> Optional[SoloDrafter]:
        """The SoloDrafter of draft mode `mode` (None: the decoder's; "none": no drafting)."""
        mode = self.draft if mode is None else mode
        if mode not in self._drafters:
            self._drafters[mode] = None if mode == "none" else SoloDrafter(self.model, mode, self.num_draft)
        return self._drafters[mode]

    def _new_row(self, ids: mx.array, params: RowParams, budget: int) -> Row:
        """A row whose records come from `stream_generate`'s own text handling (rows.py says how)."""
        detok = self.tokenizer.detokenizer if self.tokenizer is not None else None
        feed = Feed()
        reply = params.reply or reply_format(self.tokenizer, ids, chat_style=self.chat_style)
        records = _decode(feed, make_records(ids.size, params.stop, reply), detok, self.eos, budget)
        constraint = None if params.grammar is None else make_constraint(
            self.tokenizer, params.grammar, vocab_size=_vocab_size(self.model), in_reasoning=reply.thinking,
            answer=reply.answer)
        return Row(self._next_id, RowSampler(params), feed, records, budget, constraint)

    def _join(self, row: Row, layers: list) -> None:
        if not self.rows:  # the batch takes the kind of the caches its rows bring (a quantized latent too)
            self.cache = make_batch_cache(self.model, layers)
        elif not self.cache[0].accepts(layers[0]):
            raise BatchingError(f"row {row.rid}: its caches ({layers[0].kind}) cannot join a batch of "
                                f"{self.cache[0].kind} rows; decode it in a batch of its own kind")
        drafter = self._draft_of[row.rid]
        if drafter is not None and not self.rows:
            self.alone = drafter  # alone: decode it with drafting until another row joins
            drafter.start(row, layers)
        else:
            self._settle_solo()
            for bc, c in zip(self.cache, layers):
                bc.insert(c)
        self.rows.append(row)

    def _settle_solo(self) -> None:
        """A second row joins: the drafting row's solo cache becomes batch row 0."""
        if self.alone is not None:
            for bc, c in zip(self.cache, self.alone.finish()):
                bc.insert(c)
            self.alone = None

    def remove(self, rid: int) -> None:
        """Drop a row (a cancelled request) at a step boundary; the other rows are not disturbed."""
        self.pending = [e for e in self.pending if e[0] != rid]
        idx = [i for i, r in enumerate(self.rows) if r.rid == rid]
        if not idx:
            raise BatchingError(f"row {rid} is not running (finished, removed, or never added)")
        self._drop(idx)

    def _drop(self, idx: list[int]) -> None:
        if self.keep_caches:
            for i in idx:
                self.released[self.rows[i].rid] = self.row_cache(self.rows[i].rid)
        if self.alone is not None:
            self.alone.finish()
            self.alone = None
        else:
            for bc in self.cache:
                bc.remove(idx)
        gone = set(idx)
        for i in gone:
            self._draft_of.pop(self.rows[i].rid, None)
        self.rows = [r for i, r in enumerate(self.rows) if i not in gone]
        drafter = self._draft_of.get(self.rows[0].rid) if len(self.rows) == 1 else None
        if drafter is not None and self.alone is None:  # alone again: draft
            layers = [bc.extract(0) for bc in self.cache]
            for bc in self.cache:
                bc.remove([0])
            self.alone = drafter
            drafter.start(self.rows[0], layers)

    def step(self) -> list[tuple[int, BatchRecord]]:
        """One decode step for every row: (row id, record) events, first tokens of new rows included."""
        events, self.pending = self.pending, []
        if not self.rows:
            return events
        if self.alone is not None:
            row = self.rows[0]
            for token, logprobs, drafting in self.alone.step():
                events.append((row.rid, row.emit(token, logprobs, 1, drafting)))
                if row.finished:
                    self._drop([0])
                    break
            return events
        B = len(self.rows)
        tokens = mx.array([[r.y] for r in self.rows], dtype=mx.uint32)  # (B, 1)
        logits = self._masked(self._forward(tokens))  # (B, V)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        ys = self._sample(logprobs)
        done = []
        for i, (row, token) in enumerate(zip(self.rows, ys.tolist())):
            events.append((row.rid, row.emit(token, logprobs[i], B)))
            if row.finished:
                done.append(i)
        if done:
            self._drop(done)
        return events

    def _forward(self, tokens: mx.array) -> mx.array:
        """(B, 1) next tokens -> (B, V) logits: one forward for a shared-buffer batch cache, else one per
        row over its own caches (kinds whose rows cannot share a buffer: see `cache.batch.RowBatchCache`)."""
        if self.cache[0].shared_forward:
            return self.model.head(self.model.trunk(tokens, self.cache)[:, -1])
        if not hasattr(self.model, "trunk"):  # only mlx-lm's model protocol (a test double): its own logits
            return mx.concatenate([last_logits(self.model, tokens[i: i + 1], [bc.extract(i) for bc in self.cache])
                                   for i in range(tokens.shape[0])])
        feats = [self.model.trunk(tokens[i: i + 1], [bc.extract(i) for bc in self.cache])[:, -1]
                 for i in range(tokens.shape[0])]
        return self.model.head(mx.concatenate(feats))

    def _masked(self, logits: mx.array) -> mx.array:
        """(B, V) logits with each constrained row's grammar mask applied (rows.py: the constraint has
        seen every emitted token but y, so it is fed y first)."""
        rows = [(i, r.constraint) for i, r in enumerate(self.rows) if r.constraint is not None]
        if not rows:
            return logits
        mx.async_eval(logits)  # the forward runs while the host computes the masks
        allowed = np.ones(logits.shape, dtype=bool)
        for i, c in rows:
            c.feed(self.rows[i].y)
            bits = c.mask()
            if bits is not None:
                allowed[i] = bits[: logits.shape[-1]]
        return mx.where(mx.array(allowed), logits, -mx.inf)

    def _sample(self, logprobs: mx.array) -> mx.array:
        """(B, V) -> (B,): one argmax for the greedy rows, each sampled row with its own sampler."""
        ys = mx.argmax(logprobs, axis=-1)
        if all(r.sampler.greedy for r in self.rows):
            return ys
        return mx.concatenate([ys[i: i + 1] if r.sampler.greedy else r.sampler(logprobs[i: i + 1]).reshape(1)
                               for i, r in enumerate(self.rows)])

    def row_cache(self, rid: int) -> list:
        """A solo copy of a running row's per-layer caches (what a prefix cache stores)."""
        idx = next((i for i, r in enumerate(self.rows) if r.rid == rid), None)
        if idx is None:
            raise BatchingError(f"row {rid} is not running (finished, removed, or never added)")
        if self.alone is not None:
            return self.alone.layers()
        return [bc.extract(idx) for bc in self.cache]


@dataclass
class BatchResult:
    """One prompt's completion from `batch_generate`."""

    text: str
    tokens: list[int]
    finish_reason: Optional[str]
    prompt_tokens: int
    generation_tokens: int
    generation_tps: float


def stream_batch_generate(
    model, tokenizer, prompts: Sequence[Prompt], *, max_tokens: int = 256, params: Optional[Sequence[RowParams]] = None,
    sampler=None, max_batch: Optional[int] = None, prefill_step_size: int = DEFAULT_PREFILL_STEP,
    draft: Optional[str] = None, num_draft: int = 1,
) -> Generator[tuple[int, BatchRecord], None, None]:
    """Yield (prompt index, BatchRecord) as the prompts decode together, at most `max_batch` rows at a time
    (default: all). `params` gives per-prompt RowParams (temperature, top_p, seed, stop, max_tokens);
    without it every prompt gets `max_tokens` and `sampler` (greedy when None)."""
    if params is None:
        params = [RowParams(max_tokens=max_tokens, sampler=sampler)] * len(prompts)
    if len(params) != len(prompts):
        raise GenerationError(f"params has {len(params)} entries for {len(prompts)} prompts; give one per prompt")
    limit = max_batch if max_batch is not None else max(len(prompts), 1)
    if not isinstance(limit, int) or limit < 1:
        raise GenerationError(f"max_batch must be a positive integer, got {max_batch!r}")
    dec = BatchDecoder(model, tokenizer, prefill_step_size=prefill_step_size, draft=draft, num_draft=num_draft)
    waiting, index = deque(range(len(prompts))), {}
    while waiting or dec.active or dec.pending:
        while waiting and dec.active < limit:
            i = waiting.popleft()
            index[dec.add(prompts[i], params[i])] = i
        for rid, rec in dec.step():
            yield index[rid], rec


def batch_generate(model, tokenizer, prompts: Sequence[Prompt], **kwargs) -> list[BatchResult]:
    """One BatchResult per prompt, in order; takes the keyword arguments of `stream_batch_generate`."""
    out = [BatchResult("", [], None, 0, 0, 0.0) for _ in prompts]
    eos = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
    for i, rec in stream_batch_generate(model, tokenizer, prompts, **kwargs):
        r = out[i]
        r.text += rec.text
        if not (rec.finish_reason == "stop" and rec.token in eos):  # the EOS token is not part of the reply
            r.tokens.append(rec.token)
        r.finish_reason, r.prompt_tokens = rec.finish_reason, rec.prompt_tokens
        r.generation_tokens, r.generation_tps = rec.generation_tokens, rec.generation_tps
    return out

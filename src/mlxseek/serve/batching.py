"""Continuous batching for the engine (`Engine(max_batch=N)`, N > 1): requests join and leave a running
`mlxseek.BatchDecoder` at step boundaries.

A joining request is looked up in the prefix cache, prefilled alone from the cached prefix (the batch
waits for that prefill: one worker owns MLX) and becomes a row of the next step. Every step first
removes the rows of cancelled requests, then decodes one token for every row; a row that finishes
(EOS, stop string, max_tokens) leaves by itself, and its prompt + reply go back into the prefix cache.
No row's tokens depend on the others (the batched cache masks rows apart), so a request gets the same
tokens as when it runs alone. With the engine's draft="mtp", a greedy row that runs alone drafts with
the MTP module and drafting is off while more than one runs (TokenEvent.drafting says which).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mlx.core as mx

from ..generation.batch import BatchDecoder
from ..generation.rows import RowParams
from ..generation.steps import make_prompt_cache
from .scheduler import DONE, Request

log = logging.getLogger("mlxseek.serve")


class _Cancelled(Exception):
    """Raised from the prefill progress callback when the request was cancelled mid-prefill."""


@dataclass
class _Live:
    req: Request
    cached: int
    generated: list[int] = field(default_factory=list)


class BatchRunner:
    """Owned by the worker thread; the scheduler calls admit / step / close / cancel_all."""

    def __init__(self, engine, max_batch: int):
        self.engine, self.max_batch = engine, max_batch
        self.dec = None  # built on the worker thread by `setup`
        self.live: dict[int, _Live] = {}

    @property
    def active(self) -> int:
        return len(self.live)

    def setup(self) -> None:
        e = self.engine
        self.dec = BatchDecoder(e.model, e.tokenizer, draft=e.draft if e.draft in ("mtp", "dspark") else None,
                                        keep_caches=e.prefix is not None)

    def admit(self, req: Request) -> None:
        if req.cancelled.is_set():
            req.emit(DONE)
            return
        e, p = self.engine, req.params
        cached, cache = e.prefix.lookup(req.prompt) if e.prefix is not None else (0, None)
        if cache is None:
            cached, cache = 0, make_prompt_cache(e.model)
        e._counts["requests"] += 1
        e._counts["prompt_tokens"] += len(req.prompt)
        e._counts["cached_tokens"] += cached

        def progress(done: int, total: int) -> None:
            if req.cancelled.is_set():
                raise _Cancelled

        params = RowParams(max_tokens=min(p.max_tokens, e.context_length - len(req.prompt)),
                           temperature=p.temperature, top_p=p.top_p, seed=p.seed, stop=tuple(p.stop))
        try:
            rid = self.dec.add(req.prompt[cached:], params, prompt_cache=cache, progress=progress)
        except _Cancelled:
            e._counts["cancelled"] += 1
            req.emit(DONE)
            return
        except Exception as err:  # one bad request must not stop the batch
            log.exception("prefill failed")
            e._counts["errors"] += 1
            req.emit(err)
            req.emit(DONE)
            return
        self.live[rid] = _Live(req, cached)

    def step(self) -> None:
        for rid, live in list(self.live.items()):
            if live.req.cancelled.is_set():
                if any(r.rid == rid for r in self.dec.rows):
                    self.dec.remove(rid)
                self.engine._counts["cancelled"] += 1
                self._leave(rid)
        try:
            events = self.dec.step()
        except Exception as err:  # a failed forward ends every running request with the error
            log.exception("batched decode step failed")
            for rid in list(self.live):
                self.live[rid].req.emit(err)
                self._leave(rid)
            self.dec = None
            self.setup()
            return
        for rid, rec in events:
            live = self.live.get(rid)
            if live is None:
                continue
            live.generated.append(rec.token)
            n_prompt = len(live.req.prompt)
            live.req.emit(self.engine._event(rec, live.req.params, n_prompt, live.cached))
            if rec.finish_reason is not None:
                self.engine._counts["finished"] += 1
                self._leave(rid)
        if not self.live:
            mx.clear_cache()

    def _leave(self, rid: int) -> None:
        live = self.live.pop(rid)
        e = self.engine
        e._counts["generation_tokens"] += len(live.generated)
        cache = self.dec.released.pop(rid, None) if self.dec is not None else None
        if e.prefix is not None and cache is not None:
            e.prefix.insert(live.req.prompt + live.generated, cache)
        live.req.emit(DONE)

    def cancel_all(self) -> None:
        for live in list(self.live.values()):
            live.req.cancel()

    def close(self) -> None:
        """The engine stops: every running request ends."""
        for rid in list(self.live):
            self.live.pop(rid).req.emit(DONE)

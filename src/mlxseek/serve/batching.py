"""The engine's one decode path: requests join and leave a running `mlxseek.BatchDecoder` at step
boundaries, at most `max_batch` at a time (1: one request at a time, still through the decoder).

A joining request is looked up in the prefix cache, restored, prefilled alone from the cached prefix
(up to each snapshot point first when its cache kind cannot be cut; the batch waits for that prefill:
one worker owns MLX) and becomes a row of the next step. Every step first removes the rows of cancelled
requests, then decodes one token for every row (a drafting row alone: a verify step's tokens); a row
that finishes (EOS, stop string, max_tokens) leaves by itself, and its prompt + reply go back into the
prefix cache. No row's tokens depend on the others (the batched cache masks rows apart), so a request
gets the same tokens as when it runs alone. With a draft mode (the engine's, or the request's
`SamplingParams.draft`), a greedy row drafts while it runs alone and not while others run with it;
each TokenEvent's `drafting` says whether the forward that produced it drafted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mlx.core as mx

from ..generation.batch import BatchDecoder
from ..generation.prefill import prefill_chunk
from ..generation.rows import RowParams
from ..generation.steps import make_prompt_cache
from .prefix_cache import snapshot_points
from .scheduler import DONE, Cancelled, Request

log = logging.getLogger("mlxseek.serve")


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
        self.admitting = 0  # requests being prefilled now (running, though not rows yet)

    @property
    def active(self) -> int:
        return len(self.live) + self.admitting

    def setup(self) -> None:
        e = self.engine
        # prefill_step_size None: the backend policy's chunks, as stream_generate takes them.
        self.dec = BatchDecoder(e.model, e.tokenizer, draft=e.draft if e.draft != "none" else None,
                                keep_caches=e.prefix is not None, prefill_step_size=None)

    def admit(self, req: Request) -> None:
        if req.cancelled.is_set():
            req.emit(DONE)
            return
        e, p = self.engine, req.params
        cached, cache = e.prefix.lookup(req.prompt) if e.prefix is not None else (0, None)
        if cache is None:
            cached, cache = 0, make_prompt_cache(e.model)
        e.count(requests=1, prompt_tokens=len(req.prompt), cached_tokens=cached)

        def progress(done: int, total: int) -> None:
            if req.cancelled.is_set():
                raise Cancelled

        # Drafting keeps greedy output unchanged; a sampled row never drafts (BatchDecoder's rule too).
        params = RowParams(max_tokens=min(p.max_tokens, e.context_length - len(req.prompt)),
                           temperature=p.temperature, top_p=p.top_p, seed=p.seed, stop=tuple(p.stop),
                           grammar=p.grammar, reply=p.reply, draft=p.draft)
        self.admitting += 1
        try:
            fed = self.prefill_snapshots(req, cache, cached)  # exact snapshots for kinds that cannot be cut
            rid = self.dec.add(req.prompt[fed:], params, prompt_cache=cache, progress=progress)
            self.live[rid] = _Live(req, cached)
        except Cancelled:  # between prefill chunks: what was prefilled is kept for the next request
            if e.prefix is not None:
                e.prefix.insert(req.prompt, cache)
            e.count(cancelled=1)
            req.emit(DONE)
            return
        except Exception as err:  # one bad request must not stop the batch
            log.exception("prefill failed")
            e.count(errors=1)
            req.emit(err)
            req.emit(DONE)
            return
        finally:
            self.admitting -= 1

    def prefill_snapshots(self, req: Request, cache: list, start: int) -> int:
        """Prefill up to each snapshot point past `start`, keeping an exact snapshot at each; returns the
        tokens fed. Only for caches that cannot be cut (the snapshot is taken as prefill passes the point)."""
        prefix, model = self.engine.prefix, self.engine.model
        if prefix is None or not prefix.exact:
            return start
        prompt = req.prompt
        for point in snapshot_points(prompt, start, self.engine.snapshot_marks):
            while start < point:
                if req.cancelled.is_set():
                    raise Cancelled
                n = min(point - start, prefill_chunk(model, start))
                model(mx.array(prompt[start: start + n])[None], cache=cache)
                mx.eval([c.state for c in cache])
                start += n
            prefix.insert(prompt[:point], cache)
        return start

    def step(self) -> None:
        for rid, live in list(self.live.items()):
            if live.req.cancelled.is_set():
                if any(r.rid == rid for r in self.dec.rows):
                    self.dec.remove(rid)
                self.engine.count(cancelled=1)
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
            live.req.emit(self.engine.event(rec, live.req.params, n_prompt, live.cached))
            if rec.finish_reason is not None:
                self.engine.count(finished=1)
                self._leave(rid)
        if not self.live:
            mx.clear_cache()

    def _leave(self, rid: int) -> None:
        live = self.live.pop(rid)
        e = self.engine
        e.count(generation_tokens=len(live.generated))
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

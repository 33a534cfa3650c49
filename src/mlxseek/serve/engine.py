"""The serving engine: one model, one worker thread that owns MLX, a bounded FIFO, a prefix cache.

`Engine.generate` is an async generator of TokenEvents for the HTTP layer. The request waits in the
scheduler's FIFO. With max_batch > 1 the worker batches continuously (`batching.BatchRunner`: requests
join the running batch at step boundaries and leave when done or cancelled); with max_batch 1 it looks the prompt up in the prefix cache, restores the longest cached prefix
into a fresh prompt cache, prefills only the rest and decodes with `mlxseek.stream_generate`, handing each
token to the consumer's event loop with `loop.call_soon_threadsafe`. The cancel flag is read at every
prefill chunk and every decode step, so a consumer that stops iterating frees the worker within one step.
The finished prompt + reply goes back into the prefix cache. For a cache kind that cannot be cut (V4:
the cache protocol's `capabilities.cut` is False) the prompt is first prefilled up to each snapshot point
(`prefix_cache.snapshot_points`), keeping an exact snapshot there, in both the solo and the batched path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from ..errors import GenerationError
from ..generation.prefill import prefill_chunk
from ..generation.steps import make_prompt_cache
from ..generation.stream import stream_generate
from . import cache_state
from .batching import BatchRunner
from .params import DRAFT_MODES, SamplingParams, TokenEvent, check_params
from .prefix_cache import PrefixCache, chat_marks, model_identity, snapshot_points
from .scheduler import DONE, Cancelled, Request, Scheduler

log = logging.getLogger("mlxseek.serve")


class _DraftedSteps:
    """Whether the forward that produced a solo record drafted: records of one verify step share its
    `verify_steps` count, and a step drafted when `draft_tokens` grew in it (the totals are cumulative,
    so testing `draft_tokens > 0` would stay true after drafting stopped)."""

    def __init__(self):
        self.steps, self.drafts, self.drafting = -1, 0, False

    def __call__(self, r) -> bool:
        steps, drafts = getattr(r, "verify_steps", 0), getattr(r, "draft_tokens", 0)
        if steps != self.steps:
            self.steps, self.drafting, self.drafts = steps, drafts > self.drafts, drafts
        return self.drafting


class Engine:
    """Serves one loaded model to many asyncio consumers; see the module docstring."""

    def __init__(self, model, tokenizer, *, model_id: str, max_queue: int = 16, prompt_cache_bytes: int = 2 << 30,
                 prompt_cache_dir: str | None = None, draft: str = "none", max_batch: int = 1,
                 snapshot_marks: dict[str, int] | None = None):
        if draft not in DRAFT_MODES:
            raise GenerationError(f"draft: must be one of {', '.join(DRAFT_MODES)}, got {draft!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise GenerationError(f"max_batch: must be a positive integer, got {max_batch!r}")
        self.model, self.tokenizer, self.model_id, self.draft = model, tokenizer, model_id, draft
        # Where exact snapshots are taken in a prompt (see prefix_cache.snapshot_points).
        self.snapshot_marks = chat_marks(tokenizer) if snapshot_marks is None else dict(snapshot_marks)
        # What this model's caches can do, as the cache protocol answers (kinds, cut, batch, quantize).
        self.cache_capabilities = cache_state.capabilities(model)
        cfg = getattr(model, "config", None) or getattr(model, "args", None)
        self.context_length: int = int(cfg.max_position_embeddings)
        self.family: str = str(getattr(cfg, "model_type", "unknown"))
        self.vocab_size: int = int(cfg.vocab_size)
        self._cache_args = (prompt_cache_bytes, prompt_cache_dir)
        self.prefix: PrefixCache | None = None
        self.prefix_reason: str | None = None
        self._counts = {"requests": 0, "finished": 0, "cancelled": 0, "errors": 0, "prompt_tokens": 0, "cached_tokens": 0,
                            "generation_tokens": 0}
        self.max_batch = max_batch
        self._batch = BatchRunner(self, max_batch) if max_batch > 1 else None
        self._scheduler = Scheduler(run=self._run, max_queue=max_queue, setup=self._setup, batch=self._batch)

    @property
    def queue_depth(self) -> int:
        return self._scheduler.depth

    def start(self) -> None:
        """Start the worker thread (it builds the prefix cache and reads the disk tier's index first)."""
        self._scheduler.start()

    def stop(self) -> None:
        """Cancel running and queued work and join the worker."""
        self._scheduler.stop()

    def count(self, **deltas: int) -> None:
        """Add to the request and token counters (the solo path and the batch runner both report here)."""
        for key, n in deltas.items():
            self._counts[key] += n

    def stats(self) -> dict:
        """Counters for /metrics: requests, tokens, queue depth and the prefix cache's hits, misses and bytes."""
        out = dict(self._counts, queue_depth=self.queue_depth, running=self._scheduler.active,
                   max_batch=self.max_batch,
                   prefix_cache_enabled=self.prefix is not None, prefix_cache_reason=self.prefix_reason,
                   cache=self.cache_capabilities, model_family=self.family)
        out.update(self.prefix.stats() if self.prefix is not None else PrefixCache.empty_stats())
        return out

    async def generate(self, prompt_tokens: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """TokenEvents for `prompt_tokens`; raises QueueFullError (queue full) or GenerationError (bad
        prompt or parameters) before the first event. Stop iterating to cancel the generation."""
        prompt = self._check_prompt(prompt_tokens)
        check_params(params, self.context_length)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed: nobody listens any more
                req.cancel()

        req = Request(prompt, params, emit)
        self._scheduler.submit(req)
        try:
            while True:
                item = await events.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            req.cancel()
            self._scheduler.withdraw(req)

    def _check_prompt(self, tokens) -> list[int]:
        try:
            ids = [int(t) for t in tokens]
        except (TypeError, ValueError):
            raise GenerationError("prompt_tokens must be a list of integer token ids") from None
        if not ids:
            raise GenerationError("prompt is empty: give at least one token")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise GenerationError(f"prompt holds a token id outside the vocabulary (0..{self.vocab_size - 1})")
        if len(ids) >= self.context_length:
            raise GenerationError(f"prompt is {len(ids)} tokens but the model's context is {self.context_length} "
                                  "tokens; shorten the prompt")
        return ids

    # --- worker thread ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        nbytes, folder = self._cache_args
        self.prefix, self.prefix_reason = PrefixCache.for_model(
            self.model, identity=model_identity(self.model, self.model_id), max_bytes=nbytes, folder=folder,
            marks=self.snapshot_marks)
        if self.prefix_reason:
            log.warning("prefix cache disabled: %s", self.prefix_reason)
        if self._batch is not None:
            self._batch.setup()  # every family batches (cache.batch; V4.1 and a quantized latent one forward per row)

    def _run(self, req: Request) -> None:
        self._counts["requests"] += 1
        prompt, _p = req.prompt, req.params
        cached, cache = self.prefix.lookup(prompt) if self.prefix is not None else (0, None)
        if cache is None:
            cached, cache = 0, make_prompt_cache(self.model)
        self._counts["prompt_tokens"] += len(prompt)
        self._counts["cached_tokens"] += cached
        generated: list[int] = []
        try:
            self._decode(req, cache, cached, generated)
        except Cancelled:
            self._counts["cancelled"] += 1
        except Exception:
            self._counts["errors"] += 1
            raise
        finally:
            self._counts["generation_tokens"] += len(generated)
            if self.prefix is not None:
                self.prefix.insert(prompt + generated, cache)
            del cache
            mx.clear_cache()

    def prefill_snapshots(self, req: Request, cache: list, start: int) -> int:
        """Prefill up to each snapshot point past `start`, keeping an exact snapshot at each; returns the
        tokens fed. Only for caches that cannot be cut (the snapshot is taken as prefill passes the point)."""
        if self.prefix is None or not self.prefix.exact:
            return start
        prompt = req.prompt
        for point in snapshot_points(prompt, start, self.snapshot_marks):
            while start < point:
                if req.cancelled.is_set():
                    raise Cancelled
                n = min(point - start, prefill_chunk(self.model, start))
                self.model(mx.array(prompt[start: start + n])[None], cache=cache)
                mx.eval([c.state for c in cache])
                start += n
            self.prefix.insert(prompt[:point], cache)
        return start

    def _decode(self, req: Request, cache: list, cached: int, generated: list[int]) -> None:
        prompt, p = req.prompt, req.params
        fed = self.prefill_snapshots(req, cache, cached)
        draft = p.draft or self.draft
        # Drafting keeps greedy output unchanged; sampled drafting needs the speculative sampler: plain decode.
        draft = draft if draft != "none" and p.temperature == 0 else None

        def progress(done: int, total: int) -> None:
            if req.cancelled.is_set():
                raise Cancelled

        budget = min(p.max_tokens, self.context_length - len(prompt))
        steps = stream_generate(
            self.model, self.tokenizer, prompt[fed:], max_tokens=budget, prompt_cache=cache,
            sampler=make_sampler(temp=p.temperature, top_p=p.top_p), stop=list(p.stop), seed=p.seed,
            progress=progress, draft=draft, grammar=p.grammar, reply=p.reply)
        drafted = _DraftedSteps()
        try:
            for r in steps:
                generated.append(r.token)
                req.emit(self.event(r, p, len(prompt), cached, drafted(r)))
                if r.finish_reason is not None:
                    self._counts["finished"] += 1
                    return
                if req.cancelled.is_set():
                    raise Cancelled
        finally:
            steps.close()

    def event(self, r, p: SamplingParams, n_prompt: int, cached: int, drafting: bool | None = None) -> TokenEvent:
        """The TokenEvent of record `r`; `drafting` None: the record's own `drafting` (batched records)."""
        logprob, top = None, None
        if p.top_logprobs is not None:
            lp = r.logprobs.astype(mx.float32)
            logprob = lp[r.token].item()
            if p.top_logprobs > 0:
                ids = mx.argsort(-lp)[: p.top_logprobs].tolist()
                vals = lp[mx.array(ids)].tolist()
                top = tuple((i, self._piece(i), v) for i, v in zip(ids, vals))
        return TokenEvent(token=r.token, text=r.text, logprob=logprob, top_logprobs=top,
                          finish_reason=r.finish_reason, prompt_tokens=n_prompt, cached_tokens=cached,
                          generation_tokens=r.generation_tokens, batch_size=getattr(r, "batch_size", 1),
                          drafting=getattr(r, "drafting", False) if drafting is None else drafting,
                          reasoning=r.reasoning, content=r.content, tool_calls=tuple(r.tool_calls))

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else ""


__all__ = ["Engine", "SamplingParams", "TokenEvent"]

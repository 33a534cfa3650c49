"""The serving engine: one model, one worker thread that owns MLX, a bounded FIFO, a prefix cache.

`Engine.generate` is an async generator of TokenEvents for the HTTP layer. The request waits in the
scheduler's FIFO; the worker decodes every running request through one `batching.BatchRunner` (a
`mlxseek.BatchDecoder`), whatever `max_batch` is: a request alone is a batch of one, and it drafts
(the engine's `draft`, or the request's) while it runs alone. Requests join the running batch at step
boundaries and leave when done or cancelled; each is looked up in the prefix cache, restored, prefilled
from there (up to each snapshot point first, for caches that cannot be cut) and its prompt + reply go
back into the prefix cache when it leaves. Tokens reach the consumer's event loop through
`loop.call_soon_threadsafe`; the cancel flag is read at every prefill chunk and every decode step, so a
consumer that stops iterating frees the worker within one step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import mlx.core as mx

from ..errors import GenerationError
from . import cache_state
from .batching import BatchRunner
from .params import DRAFT_MODES, SamplingParams, TokenEvent, check_params
from .prefix_cache import PrefixCache, chat_marks, model_identity
from .scheduler import DONE, Request, Scheduler

log = logging.getLogger("mlxseek.serve")


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
        self._batch = BatchRunner(self, max_batch)
        self._scheduler = Scheduler(batch=self._batch, max_queue=max_queue, setup=self._setup)

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
        """Add to the request and token counters (the batch runner reports here)."""
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
        self._batch.setup()  # every family batches (cache.batch; V4.1 and a quantized latent one forward per row)

    def event(self, r, p: SamplingParams, n_prompt: int, cached: int) -> TokenEvent:
        """The TokenEvent of a BatchDecoder record `r` (its `drafting` says whether its forward drafted)."""
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
                          generation_tokens=r.generation_tokens, batch_size=r.batch_size,
                          drafting=r.drafting,
                          reasoning=r.reasoning, content=r.content, tool_calls=tuple(r.tool_calls))

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else ""


__all__ = ["Engine", "SamplingParams", "TokenEvent"]

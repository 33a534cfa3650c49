"""The request queue and the one worker thread that owns MLX.

Requests wait in a bounded FIFO; the worker admits waiting requests into the running batch (the `batch`
runner: `serve.batching.BatchRunner`, the one decode path) at every step boundary while fewer than
`batch.max_batch` run, and steps the batch. A request carries
its own cancel flag (set by the consumer that stopped listening) and an `emit` callback that hands
events back to the consumer's event loop; the worker never blocks on a consumer.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..errors import QueueFullError, ServeError

log = logging.getLogger("mlxseek.serve")

DONE = object()  # emitted after a request's last event (or its error)


class Cancelled(Exception):
    """Raised inside the worker when a request's consumer went away mid-prefill or mid-decode."""


@dataclass(eq=False)
class Request:
    """One generation: prompt token ids, sampling parameters and the consumer's channel."""

    prompt: list[int]
    params: Any
    emit: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Scheduler:
    """A bounded FIFO of Requests drained by one worker thread into `batch` (admit, step, close, cancel_all)."""

    def __init__(self, *, batch: Any, max_queue: int, setup: Callable[[], None] | None = None):
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ServeError(f"max_queue must be a positive integer, got {max_queue!r}")
        self.max_queue = max_queue
        self._setup, self._batch = setup, batch
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None

    @property
    def active(self) -> int:
        """Requests being decoded now."""
        return self._batch.active

    @property
    def depth(self) -> int:
        """Requests waiting (not the one running)."""
        return len(self._queue)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mlxseek-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._setup_error is not None:
            raise self._setup_error

    def submit(self, req: Request) -> None:
        with self._cond:
            if self._thread is None or self._stopping:
                raise ServeError("the engine is not running: call Engine.start() first")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"the request queue is full ({self.max_queue} waiting); retry later "
                                     "or start the server with a larger --max-queue")
            self._queue.append(req)
            self._cond.notify()

    def withdraw(self, req: Request) -> None:
        """Drop a cancelled request that is still waiting, so its slot frees at once."""
        with self._cond:
            try:
                self._queue.remove(req)
            except ValueError:
                pass

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            waiting = list(self._queue)
            self._queue.clear()
            self._batch.cancel_all()
            self._cond.notify_all()
        for req in waiting:
            req.cancel()
            req.emit(ServeError("the engine stopped before this request ran"))
            req.emit(DONE)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            # MLX keeps per-thread streams; a thread that used MLX must destroy them before it ends, or the
            # process can abort at exit ("terminate called without an active exception", MLX issue 3126).
            mx.clear_streams()

    def _serve(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
        except Exception as e:  # noqa: BLE001 (reported to start()'s caller)
            self._setup_error = e
            self._ready.set()
            return
        self._ready.set()
        self._batch_loop()

    def _batch_loop(self) -> None:
        batch = self._batch
        while True:
            with self._cond:
                while not self._queue and not batch.active and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    batch.close()
                    return
                joiners = []
                while self._queue and batch.active + len(joiners) < batch.max_batch:
                    joiners.append(self._queue.popleft())
            for req in joiners:  # prefilled one by one; each joins the batch at this step boundary
                batch.admit(req)
            batch.step()

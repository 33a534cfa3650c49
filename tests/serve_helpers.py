"""Shared server fixtures for the serve tests: a live uvicorn server on a free loopback port, run in a
background thread and stopped by the test, and the engine to put behind it.

Until the real engine (mlxseek.serve.engine) is on this branch, `FakeEngine` stands in for it: it follows the
engine contract by running mlxseek.stream_generate on a worker thread.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import uvicorn

FIXTURES = Path(__file__).parent / "fixtures"
TRAINED = FIXTURES / "trained_v3"
START_TIMEOUT_S = 20


@dataclass(frozen=True)
class _SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple = ()
    top_logprobs: Optional[int] = None
    draft: Optional[str] = None


@dataclass(frozen=True)
class _TokenEvent:
    token: int
    text: str
    logprob: Optional[float]
    top_logprobs: Optional[tuple]
    finish_reason: Optional[str]
    prompt_tokens: int
    cached_tokens: int
    generation_tokens: int


def _real_engine_module():
    try:
        import mlxseek.serve.engine as engine

        return engine
    except ImportError:
        return None


def _install_fake_engine_module() -> None:
    # only while the real engine is not merged: lets `from .engine import SamplingParams` resolve
    mod = types.ModuleType("mlxseek.serve.engine")
    mod.SamplingParams, mod.TokenEvent, mod.Engine = _SamplingParams, _TokenEvent, FakeEngine
    sys.modules["mlxseek.serve.engine"] = mod


class FakeEngine:
    """The engine contract over mlxseek.stream_generate: one request at a time, no prefix cache."""

    def __init__(self, model, tokenizer, *, model_id: str, max_queue: int = 16, **_):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.context_length = model.config.max_position_embeddings
        self.queue_depth = 0
        self.lock = threading.Lock()

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict:
        return {"requests": 0}

    async def generate(self, prompt_tokens, params):
        import mlx.core as mx

        import mlxseek

        loop, q, stop = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def work():
            with self.lock:
                try:
                    for r in mlxseek.stream_generate(self.model, self.tokenizer, list(prompt_tokens),
                                                     max_tokens=params.max_tokens, stop=list(params.stop)):
                        lp = None if params.top_logprobs is None else float(r.logprobs[r.token])
                        tops = None
                        if params.top_logprobs:
                            idx = mx.argsort(-r.logprobs)[: params.top_logprobs].tolist()
                            tops = tuple((i, self.tokenizer.decode([i]), float(r.logprobs[i])) for i in idx)
                        ev = _TokenEvent(r.token, r.text, lp, tops, r.finish_reason, r.prompt_tokens, 0,
                                         r.generation_tokens)
                        loop.call_soon_threadsafe(q.put_nowait, ev)
                        if stop.is_set():
                            break
                except Exception as e:  # handed to the consumer
                    loop.call_soon_threadsafe(q.put_nowait, e)

        threading.Thread(target=work, daemon=True).start()
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, Exception):
                    raise ev
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            stop.set()


def make_engine(model, tokenizer, *, model_id: str, **kw):
    real = _real_engine_module()
    if real is None:
        _install_fake_engine_module()
        return FakeEngine(model, tokenizer, model_id=model_id, **kw)
    return real.Engine(model, tokenizer, model_id=model_id, **kw)


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a daemon thread."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve_model(model, tokenizer, *, model_id: str, chat_style: Optional[str] = None, api_key: Optional[str] = None,
                limits=None, **engine_kw):
    """(LiveServer, engine) for `model`; use as `with server: ...` and stop the engine after."""
    from mlxseek.serve import Limits, create_app

    engine = make_engine(model, tokenizer, model_id=model_id, **engine_kw)
    engine.start()
    app = create_app(model=model, tokenizer=tokenizer, engine=engine, model_id=model_id, api_key=api_key,
                     limits=limits or Limits(), chat_style=chat_style)
    return LiveServer(app), engine

"""Shared server fixtures for the serve tests: a live uvicorn server on a free loopback port, run in a
background thread and stopped by the test, and the engine to put behind it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import uvicorn

FIXTURES = Path(__file__).parent / "fixtures"
TRAINED = FIXTURES / "trained_v3"
START_TIMEOUT_S = 20


def make_engine(model, tokenizer, *, model_id: str, **kw):
    from mlxseek.serve.engine import Engine

    return Engine(model, tokenizer, model_id=model_id, **kw)


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

    def __enter__(self):
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


@contextlib.contextmanager
def running_server(model, tokenizer, *, model_id: str, chat_style: Optional[str] = None,
                   api_key: Optional[str] = None, limits=None, log_prompts: bool = False, wrap=None,
                   model_names=None, cors_origins=(), **engine_kw):
    """Yields (LiveServer, Engine) for `model` behind the real engine; stops both on exit.
    wrap: a function of the engine returning what the app should call instead (a test double around it)."""
    from mlxseek.serve import Limits, create_app

    engine = make_engine(model, tokenizer, model_id=model_id, **engine_kw)
    engine.start()
    try:
        app = create_app(model=model, tokenizer=tokenizer, engine=wrap(engine) if wrap else engine,
                         model_id=model_id, api_key=api_key, limits=limits or Limits(), chat_style=chat_style,
                         log_prompts=log_prompts, model_names=model_names, cors_origins=cors_origins)
        with LiveServer(app) as server:
            yield server, engine
    finally:
        engine.stop()


@contextlib.contextmanager
def deadline(seconds: float):
    """Bound a whole test module: past `seconds`, dump every thread's stack and end the process, so a hung
    server fails the run instead of stalling it."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()

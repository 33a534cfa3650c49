"""Real agent programs from npm at pinned versions (Codex CLI, Claude Code, opencode), and a live `mlxseek
serve` for them whose scripted model calls a tool first and answers once the tool's result is in its prompt.

The programs live in a cache folder (MLXSEEK_CLIENTS_DIR, default ~/.cache/mlxseek/clients) that `.ci/run`
fills (`python tests/clients/agents.py`); a test installs a missing one itself, and is skipped only when
npm is missing or its registry unreachable. A Recorder around the app keeps each request's path, status and
byte sizes for benchmarks/clients.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from scripted_model import BranchingScriptedModel, real_tokenizer, servable  # noqa: E402
from serve_helpers import LiveServer, make_engine  # noqa: E402

PINS = {"codex": ("@openai/codex", "0.171.0"), "claude": ("@anthropic-ai/claude-code", "2.1.332"),
        "opencode": ("opencode-ai", "1.18.33")}
CLIENTS_DIR = Path(os.environ.get("MLXSEEK_CLIENTS_DIR") or Path.home() / ".cache" / "mlxseek" / "clients")
INSTALL_TIMEOUT_S = 900
TURN_TIMEOUT_S = 180
MODEL_ID = "scripted"
MAX_TOKENS = 4096           # a shared machine's cap: Claude Code asks for 32000, which must be clamped, not refused
CONTEXT = 200_000           # agents send long system prompts and tool lists; the scripted model reads none
FILE_NAME = "hello.txt"
FILE_TEXT = "written by the scripted model"
FINAL = "Done: hello.txt holds the greeting."
OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"  # in a v3 / v3.1 prompt only once a tool result came back
THINK = "<think>"
THOUGHT = "The user wants a file; I will write it."


class Unavailable(Exception):
    """npm is missing or its registry cannot be reached, so a client program cannot be installed."""


def installed_version(name: str) -> str | None:
    package = CLIENTS_DIR / "node_modules" / PINS[name][0] / "package.json"
    return json.loads(package.read_text()).get("version") if package.is_file() else None


def install(names=tuple(PINS)) -> None:
    """npm install the pinned programs into CLIENTS_DIR; Unavailable when npm cannot."""
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed (Node.js 20+ provides it)")
    ping = subprocess.run([npm, "ping"], capture_output=True, text=True, timeout=60)
    if ping.returncode != 0:
        raise Unavailable(f"the npm registry is unreachable: {ping.stderr.strip()[-300:]}")
    CLIENTS_DIR.mkdir(parents=True, exist_ok=True)
    specs = [f"{PINS[n][0]}@{PINS[n][1]}" for n in names]
    # their install scripts must run: Claude Code's and opencode's put the platform binary in place (no download)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(CLIENTS_DIR), *specs], check=True,
                   timeout=INSTALL_TIMEOUT_S)


def binary(name: str) -> Path:
    """The pinned program's executable, installed first if missing."""
    if installed_version(name) != PINS[name][1]:
        install((name,))
    return CLIENTS_DIR / "node_modules" / ".bin" / name


def tool_call_text(name: str, arguments: dict, style: str) -> str:
    """A tool call as a v3- or v3.1-format model writes it."""
    if style == "v3.1":
        return (f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{json.dumps(arguments)}"
                "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    return (f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n"
            f"{json.dumps(arguments)}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


@dataclass
class Exchange:
    method: str
    path: str
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0


class Recorder:
    """ASGI wrapper that records every request's path, status and body sizes."""

    def __init__(self, app):
        self.app, self.exchanges = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ex = Exchange(scope["method"], scope["path"])
        self.exchanges.append(ex)

        async def counted_receive():
            msg = await receive()
            ex.request_bytes += len(msg.get("body", b""))
            return msg

        async def counted_send(msg):
            if msg["type"] == "http.response.start":
                ex.status = msg["status"]
            ex.response_bytes += len(msg.get("body", b""))
            await send(msg)

        await self.app(scope, counted_receive, counted_send)


@contextlib.contextmanager
def agent_server(tool: str, arguments: dict, style: str = "v3"):
    """Yields (LiveServer, Recorder): its model calls `tool` with `arguments` until a tool result is in the
    prompt, then writes FINAL; where the prompt opens a reasoning block (v3.1 in thinking mode) it first
    reasons (THOUGHT) and closes the block."""
    from mlxseek.serve import Limits, create_app

    tok = real_tokenizer()
    call = tool_call_text(tool, arguments, style)

    def choose(prompt_ids):
        prompt = tok.decode(prompt_ids[-4000:])
        reply = FINAL if OUTPUT_BEGIN in prompt else call
        if prompt.endswith(THINK):
            reply = THOUGHT + "</think>" + reply
        return tok.encode(reply, add_special_tokens=False)

    model = servable(BranchingScriptedModel(choose, len(tok.get_vocab())), tok, context=CONTEXT)
    engine = make_engine(model, tok, model_id=MODEL_ID, prompt_cache_bytes=0)
    engine.start()
    try:
        app = Recorder(create_app(model=model, tokenizer=tok, engine=engine, model_id=MODEL_ID, chat_style=style,
                                    limits=Limits(max_tokens=MAX_TOKENS)))
        with LiveServer(app) as server:
            yield server, app
    finally:
        engine.stop()


@dataclass
class Turn:
    done: subprocess.CompletedProcess
    work: Path
    exchanges: list
    seconds: float


def agent_turn(program, exe: Path, tmp: Path) -> Turn:
    """One headless turn of `program` (programs.Program) in tmp/work against a fresh agent server."""
    work = tmp / "work"
    work.mkdir()
    with agent_server(program.tool, program.arguments(work), program.style) as (srv, recorder):
        argv, env = program.command(exe, srv.url, tmp, work)
        t0 = time.perf_counter()
        done = run(argv, cwd=work, env=env)
        seconds = time.perf_counter() - t0
    return Turn(done, work, list(recorder.exchanges), seconds)


def run(argv: list, *, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run a client headless; its whole environment is `env` plus PATH and HOME (the test's temp folder)."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd.parent / "home"), "PWD": str(cwd), "NO_COLOR": "1"}
    Path(base["HOME"]).mkdir(exist_ok=True)
    return subprocess.run([str(a) for a in argv], cwd=cwd, env={**base, **env}, capture_output=True, text=True,
                          timeout=TURN_TIMEOUT_S, stdin=subprocess.DEVNULL)


if __name__ == "__main__":  # .ci/run: fill the cache folder; without npm the client tests skip themselves
    try:
        install()
    except Unavailable as e:
        print(f"client programs not installed: {e}")

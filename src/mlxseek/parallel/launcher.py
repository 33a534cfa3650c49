"""A deadline-bounded local launcher: N ranks of one command on this machine, over MLX's ring backend
on 127.0.0.1 (free ports picked per run; no ssh).

Unlike `mlx.launch` (which exits 0 when a rank fails), it returns the first failing rank's exit code:
when a rank fails the others get `grace` seconds to notice and exit on their own (their watchdogs
name the failure), then are killed; past `deadline` seconds every rank is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .watchdog import EXIT_CODE, HEARTBEAT_ENV, LAUNCHER_ENV

DEADLINE_EXIT = 124  # what `timeout` returns


@dataclass
class RankResult:
    rank: int
    pid: int
    returncode: Optional[int] = None  # negative: killed by that signal
    stdout: str = ""
    stderr: str = ""
    killed: bool = False  # by the launcher, after another rank failed or the deadline passed


@dataclass
class LaunchResult:
    returncode: int  # 0, the first failing rank's code (128 + signal if it was killed), or 124
    ranks: list[RankResult] = field(default_factory=list)
    failed_rank: Optional[int] = None
    reason: str = ""

    def summary(self) -> str:
        lines = [self.reason or "all ranks exited 0"]
        for r in self.ranks:
            how = "killed by the launcher" if r.killed else _describe(r.returncode)
            lines.append(f"  rank {r.rank} (pid {r.pid}): {how}")
        return "\n".join(lines)


def _describe(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit {code}"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pump(stream, sink: list, echo: Optional[Callable[[str], None]]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if echo:
            echo(line)
    stream.close()


def launch(command: Sequence[str], n: int, *, deadline: float = 600.0, grace: float = 10.0,
           env: Optional[dict] = None, cwd: Optional[str | Path] = None,
           echo: Optional[Callable[[int, str, str], None]] = None) -> LaunchResult:
    """Run `command` as ranks 0..n-1 and wait for all of them (see the module docstring).

    Each rank gets MLX_RANK, MLX_HOSTFILE (ring on 127.0.0.1), MLX_WORLD_SIZE and the watchdog's
    heartbeat folder. `echo(rank, "stdout"|"stderr", line)` sees output as it arrives; all of it is
    also in the result."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with tempfile.TemporaryDirectory(prefix="mlxseek-launch-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(n)]))
        beats = Path(tmp) / "heartbeats"
        beats.mkdir()
        base = {**os.environ, **(env or {}), "MLX_HOSTFILE": str(hostfile), "MLX_WORLD_SIZE": str(n),
                HEARTBEAT_ENV: str(beats), LAUNCHER_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        procs, results, pumps, sinks = [], [], [], {}
        for r in range(n):
            p = subprocess.Popen(list(command), env={**base, "MLX_RANK": str(r)}, cwd=cwd, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            procs.append(p)
            res = RankResult(r, p.pid)
            results.append(res)
            for name in ("stdout", "stderr"):
                sinks[r, name] = []
                cb = (lambda line, r=r, name=name: echo(r, name, line)) if echo else None
                t = threading.Thread(target=_pump, args=(getattr(p, name), sinks[r, name], cb), daemon=True)
                t.start()
                pumps.append(t)
        result = _supervise(procs, results, deadline, grace)
        for t in pumps:
            t.join(timeout=5)
        for res in results:
            res.stdout, res.stderr = "".join(sinks[res.rank, "stdout"]), "".join(sinks[res.rank, "stderr"])
        return result


def _kill(p: subprocess.Popen, res: RankResult) -> None:
    if p.poll() is None:
        res.killed = True
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the rank's whole session: it may have children
        except ProcessLookupError:
            pass


def _supervise(procs, results, deadline: float, grace: float) -> LaunchResult:
    t0, failed, fail_time = time.monotonic(), None, None
    while True:
        for r, p in enumerate(procs):
            results[r].returncode = p.poll()
        bad = [r for r in range(len(procs)) if results[r].returncode not in (None, 0)]
        # The cause is a rank that did not exit through its watchdog: EXIT_CODE means "a peer failed",
        # a reaction. A dying process closes its sockets before it can be reaped, so its peer's reaction
        # may be seen first; the cause then replaces it.
        causes = [r for r in bad if results[r].returncode != EXIT_CODE and not results[r].killed]
        if bad and (failed is None or (results[failed].returncode == EXIT_CODE and causes)):
            failed = (causes or bad)[0]
            fail_time = fail_time or time.monotonic()
        if all(p.poll() is not None for p in procs):
            break
        now = time.monotonic()
        if failed is not None and now - fail_time > grace:
            for p, res in zip(procs, results):
                _kill(p, res)
        if now - t0 > deadline:
            for p, res in zip(procs, results):
                _kill(p, res)
            for p, res in zip(procs, results):
                res.returncode = p.wait()
            return LaunchResult(DEADLINE_EXIT, results, None, f"deadline of {deadline:.0f} s passed; killed all ranks")
        time.sleep(0.05)
    for p, res in zip(procs, results):
        res.returncode = p.wait()
    if failed is None:
        return LaunchResult(0, results)
    code = results[failed].returncode
    reason = f"rank {failed} failed first ({_describe(code)})"
    return LaunchResult(code if code > 0 else 128 - code, results, failed, reason)


def python_command(*args: str) -> list[str]:
    """`python args...` with this interpreter (the venv's), as ranks should run."""
    return [sys.executable, *args]

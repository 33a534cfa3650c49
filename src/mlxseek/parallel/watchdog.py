"""Per-rank watchdog: a rank whose peer dies, never starts or stops answering exits with an error that
names the rank, instead of blocking forever in a collective.

MLX's ring backend blocks forever while connecting to a peer that never starts, and a hung peer (alive
but stuck) blocks its neighbours forever too; a peer whose process dies closes its sockets, which the
ring backend reports only after a burst of retries. So each rank runs a daemon thread (MLX releases
the GIL while it waits on the network, so the thread keeps running) that:
- fails when an armed deadline passes (`with watchdog.deadline("connecting", 60): ...`);
- writes `rank{r}.json` (pid, host, time) into a shared heartbeat folder every `interval` seconds, and
  fails when a peer's heartbeat goes stale or, on the same host, its process is gone;
- fails when the launcher that started it is gone (no orphaned ranks).
Failing prints `mlxseek distributed: rank R of N: <why>` to stderr and ends the process with
`os._exit(EXIT_CODE)`: the main thread may be blocked inside MLX, where no exception can reach it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

EXIT_CODE = 3
HEARTBEAT_ENV = "MLXSEEK_HEARTBEAT_DIR"
LAUNCHER_ENV = "MLXSEEK_LAUNCHER_PID"


# The helper of `native_deadline`: waits for EOF on stdin (the block finished) or the deadline.
_SIDECAR = """
import os, select, signal, sys
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    sys.stderr.write(message + chr(10))
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


@contextmanager
def native_deadline(message: str, seconds: float) -> Iterator[None]:
    """A deadline for calls that block inside MLX while holding the GIL (`mx.distributed.init` does,
    unlike evaluations): no thread of this process can run then, so a helper process prints `message`
    and kills this one (SIGKILL) if the block has not finished within `seconds`."""
    helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SIDECAR, str(os.getpid()), str(seconds), message],
                              stdin=subprocess.PIPE)
    try:
        yield
    finally:
        helper.stdin.close()  # EOF: the helper exits quietly
        helper.wait()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (on this host) is running; an exited, not yet reaped one (zombie) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state field follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Watchdog:
    """See the module docstring. `rank`/`size` may be updated once the group is known."""

    def __init__(self, rank: int, size: Optional[int], *, heartbeat_dir: Optional[str | Path] = None,
                 peer_timeout: float = 20.0, interval: float = 0.25, launcher_pid: Optional[int] = None):
        self.rank, self.size = rank, size
        self.heartbeat_dir = Path(heartbeat_dir) if heartbeat_dir else None
        self.peer_timeout, self.interval, self.launcher_pid = peer_timeout, interval, launcher_pid
        self._armed: Optional[tuple[str, float, float]] = None  # (what, started, deadline)
        self._lock = threading.Lock()
        self._seen: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlxseek-watchdog", daemon=True)

    @classmethod
    def from_env(cls, rank: int, size: Optional[int], **kw) -> "Watchdog":
        pid = os.environ.get(LAUNCHER_ENV)
        beats = os.environ.get(HEARTBEAT_ENV)
        return cls(rank, size, heartbeat_dir=beats, launcher_pid=int(pid) if pid else None, **kw)

    def start(self) -> "Watchdog":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @contextmanager
    def deadline(self, what: str, seconds: float) -> Iterator[None]:
        """Fail the process if the block has not finished within `seconds`."""
        now = time.monotonic()
        with self._lock:
            previous, self._armed = self._armed, (what, now, now + seconds)
        try:
            yield
        finally:
            with self._lock:
                self._armed = previous

    def guard(self, items: Iterable, what: str, seconds: float) -> Iterator:
        """Iterate `items`, failing if any one item takes longer than `seconds` to arrive. Time spent by
        the consumer between items does not count (an interactive pause is not a hang)."""
        it = iter(items)
        while True:
            with self.deadline(what, seconds):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def wait_for_peers(self) -> None:
        """Return once every peer has written a heartbeat (at once without a heartbeat folder). Run it
        under a `deadline`, which then names the ranks that never started."""
        while self._peers() and any(info is None for info in self._peers().values()):
            time.sleep(self.interval)

    def prefix(self) -> str:
        return f"mlxseek distributed: rank {self.rank}" + (f" of {self.size}" if self.size else "")

    def fail(self, why: str) -> None:
        try:
            sys.stderr.write(f"{self.prefix()}: {why}\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_CODE)

    def dead_peers(self, wait: float = 2.0) -> list[str]:
        """Peers known to be gone (process gone on this host, or heartbeat stale), as 'rank R (pid P)'.
        Waits up to `wait` seconds for the evidence: a socket can close just before its process ends."""
        end = time.monotonic() + wait
        while True:
            out = []
            for r, info in sorted(self._peers().items()):
                if info is None:
                    continue
                gone = info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"]))
                if gone or time.time() - float(info["time"]) > 4 * self.interval + 1:
                    out.append(f"rank {r} (pid {info['pid']})")
            if out or time.monotonic() > end:
                return out
            time.sleep(self.interval)

    def _peers(self) -> dict[int, Optional[dict]]:
        if self.heartbeat_dir is None or not self.size:
            return {}
        out = {}
        for r in range(self.size):
            if r == self.rank:
                continue
            try:
                out[r] = json.loads((self.heartbeat_dir / f"rank{r}.json").read_text())
            except (OSError, ValueError):
                out[r] = None  # not started yet, or caught mid-write: judged by the deadlines
        return out

    def _beat(self) -> None:
        if self.heartbeat_dir is None:
            return
        tmp = self.heartbeat_dir / f".rank{self.rank}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}))
        os.replace(tmp, self.heartbeat_dir / f"rank{self.rank}.json")  # atomic: peers never read half a file

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            armed = self._armed
        if armed and now > armed[2]:
            missing = [r for r, info in self._peers().items() if info is None]
            hint = f"; ranks that never started: {missing}" if missing else ""
            self.fail(f"{armed[0]} did not finish within {armed[2] - armed[1]:g} s{hint}")
        if self.launcher_pid and not pid_alive(self.launcher_pid):
            self.fail(f"the launcher (pid {self.launcher_pid}) is gone")
        for r, info in self._peers().items():
            if info is None:
                if r in self._seen:
                    self.fail(f"peer rank {r}'s heartbeat file disappeared")
                continue
            self._seen[r] = info
            if info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"])):
                self.fail(f"peer rank {r} (pid {info['pid']}) exited")
            if time.time() - float(info["time"]) > self.peer_timeout:
                self.fail(f"peer rank {r} (pid {info['pid']}) sent no heartbeat for {self.peer_timeout:.0f} s")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except OSError as e:
                self.fail(f"cannot write the heartbeat into {self.heartbeat_dir} ({e.strerror}): the launcher is gone?")
            self._check()

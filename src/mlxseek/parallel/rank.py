"""The rank side of a distributed run: join MLX's group under a deadline, with a watchdog running.

Any launcher works: `mlxseek launch` / `mlxseek generate --distributed ...` (local ranks), `mlx.launch`
(ring over TCP/Thunderbolt, MPI), `mpirun`. A process that was not launched as a rank (or is the only
one) gets `group=None`, and `mlxseek.load(..., group=None)` loads the whole model as usual.

    rank = mlxseek.parallel.rank.join()
    model, tok = mlxseek.load(path, group=rank.group, parallel="expert")
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from .watchdog import Watchdog, native_deadline

# Rank variables of the launchers we know: MLX's ring/JACCL backends, Open MPI, MPICH/PMI.
RANK_ENVS = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
# How the ring backend reports a dead peer (a closed socket) from inside an evaluation.
_LOST_PEER = ("[ring]", "[mpi]", "connection to a peer")


def launched_as_rank() -> bool:
    return any(v in os.environ for v in RANK_ENVS)


def _env_rank() -> int:
    for v in RANK_ENVS:
        if v in os.environ:
            return int(os.environ[v])
    return 0


@dataclass
class Rank:
    """This process's place in the group; `group` and `watchdog` are None for a single process."""

    group: mx.distributed.Group | None
    watchdog: Watchdog | None

    @property
    def rank(self) -> int:
        return self.group.rank() if self.group is not None else 0

    @property
    def size(self) -> int:
        return self.group.size() if self.group is not None else 1

    def barrier(self, what: str = "waiting for every rank", timeout: float = 120.0) -> None:
        """Return once every rank got here; a dead or stuck peer ends this process (named) instead."""
        if self.size == 1:
            return
        with self.lost_peer_is_fatal(), self.watchdog.deadline(what, timeout):
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=self.group, stream=mx.cpu))

    @contextmanager
    def lost_peer_is_fatal(self) -> Iterator[None]:
        """Turn MLX's 'connection to a peer was lost' errors into the watchdog's named exit."""
        try:
            yield
        except RuntimeError as e:
            if self.watchdog is None or not any(s in str(e) for s in _LOST_PEER):
                raise
            dead = self.watchdog.dead_peers()
            self.watchdog.fail(f"lost the connection to {', '.join(dead) or 'a peer'} ({e})")


def join(*, backend: str = "any", connect_timeout: float = 120.0, peer_timeout: float = 20.0) -> Rank:
    """Join the distributed group this process was launched into (or a group of one).

    Connecting must finish within `connect_timeout` seconds (a peer that never starts would otherwise
    block forever); afterwards a peer whose heartbeat stops for `peer_timeout` seconds, or whose process
    is gone, ends this process with a named error (see `mlxseek.parallel.watchdog`)."""
    if not launched_as_rank() or _world_size() == 1:
        return Rank(None, None)  # (MLX's init fails on mlx.launch's empty hostfile for one host)
    wd = Watchdog.from_env(_env_rank(), _world_size(), peer_timeout=peer_timeout).start()
    what = f"connecting to the other ranks (backend {backend})"
    t0 = time.monotonic()
    with wd.deadline(what, connect_timeout):
        wd.wait_for_peers()  # with our launcher's heartbeats: never enter init while a peer is missing
        left = max(connect_timeout - (time.monotonic() - t0), 1.0)
        # init blocks holding the GIL (the watchdog thread cannot run): a helper process keeps the deadline.
        with native_deadline(f"{wd.prefix()}: {what} did not finish within {connect_timeout:g} s "
                             "(blocked in mx.distributed.init: is every rank started, and the hostfile right?)", left):
            group = mx.distributed.init(strict=True, backend=backend)
        wd.rank, wd.size = group.rank(), group.size()
        rank = Rank(group, wd)
        rank.barrier(what, connect_timeout)  # returns once every rank is up and connected
    return rank


def _world_size() -> int | None:
    for v in ("MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if v in os.environ:
            return int(os.environ[v])
    hostfile = os.environ.get("MLX_HOSTFILE")
    if hostfile == "":  # mlx.launch with a single host
        return 1
    if hostfile:
        import json

        try:
            with open(hostfile) as f:
                return len(json.load(f))
        except (OSError, ValueError):
            return None
    return None

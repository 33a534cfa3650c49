"""File-system failures of a conversion, as one-line ConversionErrors that say what to do.

A full disk, a read-only or immutable output folder, a parent that is a file or lacks permissions are
the user's to fix, not tracebacks. Whatever fails, nothing half-written stays behind: the shard being
written (`*.tmp`) and an unfinished manifest are removed, and `DST.partial/` is removed too unless it
holds finished, verified shards, which a re-run of the same command resumes from. The source is only
ever read.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..errors import ConversionError

_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or choose another --mlx-path",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another --mlx-path",
    errno.EROFS: "the file system is read-only; choose a writable --mlx-path",
    errno.EACCES: "permission denied; choose a --mlx-path you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted (an immutable or protected folder?); choose another --mlx-path",
    errno.ENOTDIR: "a component of the path is a file, not a folder; choose another --mlx-path",
    errno.EEXIST: "something is already there; remove it or choose another --mlx-path",
}


def check_output_parent(dst: Path) -> None:
    """Refuse up front an --mlx-path whose nearest existing ancestor is a file or cannot be written."""
    parent = dst.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConversionError(f"--mlx-path {dst}: {parent} is a file, not a folder; choose another --mlx-path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConversionError(f"--mlx-path {dst}: cannot create it in {parent} (not writable: read-only, "
                              "immutable or without permission); choose a writable --mlx-path")


def as_conversion_error(e: OSError, dst: Path) -> ConversionError:
    """An OSError met while writing `dst` -> a one-line ConversionError naming the file and the fix."""
    where = e.filename or dst
    advice = _ADVICE.get(e.errno, f"{e.strerror or e}; check --mlx-path {dst}")
    return ConversionError(f"{where}: cannot write the conversion output: {advice}")


def clean_up(partial: Path, finished: int | None) -> str:
    """Remove what a failed run half-wrote; returns a note on what is kept, for the error message.
    `finished`: shards recorded in DST.partial's manifest, None when this run never opened it (a folder
    it did not open is not its to remove)."""
    shutil.rmtree(partial.with_name(f"{partial.name}.new-{os.getpid()}"), ignore_errors=True)  # unborn manifest
    if finished is None or not partial.is_dir():
        return ""
    if not finished:
        shutil.rmtree(partial, ignore_errors=True)
        return ""
    for p in partial.glob("*.tmp"):
        p.unlink(missing_ok=True)
    return f" ({finished} finished shard(s) kept in {partial}: the same command resumes from them)"

"""Resumable conversion: a progress manifest inside `DST.partial/`.

The manifest names the conversion it belongs to (a fingerprint of the source headers, the options and
the output layout) and every finished shard with its sha256 and its report entries. A shard is
written as `NAME.tmp`, flushed, renamed to NAME and only then recorded, so a recorded shard is
complete; on a re-run it is reused only if its bytes still hash to the recorded value. A partial
folder from a different source, different options or another mlxseek version is wiped and the
conversion restarts from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ConversionError
from .writer import sha256_file, write_json

PROGRESS_NAME = ".mlxseek-progress.json"


class Progress:
    def __init__(self, folder: Path, fingerprint: str, shards: dict | None = None):
        self.folder, self.fingerprint = folder, fingerprint
        self.shards: dict[str, dict] = shards or {}

    @classmethod
    def open(cls, folder: Path, fingerprint: str, log) -> Progress:
        """Resume `folder` if it belongs to this conversion, else start it afresh (created atomically)."""
        manifest = folder / PROGRESS_NAME
        if folder.exists():
            if not manifest.exists():
                raise ConversionError(
                    f"{folder}: exists but holds no {PROGRESS_NAME}, so it was not left by `mlxseek convert`; "
                    "remove it or choose another --mlx-path"
                )
            try:
                state = json.loads(manifest.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("fingerprint") == fingerprint:
                return cls(folder, fingerprint, state.get("shards", {}))
            log(f"{folder}: left by a conversion with other inputs or options; starting afresh")
            shutil.rmtree(folder)
        tmp = folder.with_name(f"{folder.name}.new-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        progress = cls(folder, fingerprint)
        progress._save(tmp / PROGRESS_NAME)
        os.replace(tmp, folder)
        return progress

    def finished(self, name: str) -> bool:
        """True if shard `name` was recorded and its file still has the recorded hash."""
        entry = self.shards.get(name)
        path = self.folder / name
        if entry is None or not path.exists():
            return False
        return path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]

    def record(self, name: str, report: dict) -> None:
        path = self.folder / name
        self.shards[name] = {"sha256": sha256_file(path), "size": path.stat().st_size, "report": report}
        self._save(self.folder / PROGRESS_NAME)

    def forget(self, name: str) -> None:
        self.shards.pop(name, None)

    def _save(self, path: Path) -> None:
        write_json(path, {"fingerprint": self.fingerprint, "shards": self.shards}, indent=1)

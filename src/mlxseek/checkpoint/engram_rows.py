"""Engram table rows read from the shards by position, never the whole table (DeepSeek-V4.1-Flash: two
tables of 384M rows x 264 B = ~203 GB, kept 8-bit: 256 FP8 e4m3 values + 8 E8M0 scales per row).

`DiskRows` keeps a hot-row LRU under a byte budget and reads the missing rows of a request sorted, with one
positional read per run of adjacent rows (per tensor); `ResidentRows` holds whole tables (the reference the
disk path must match bit for bit). Both answer `fetch(table, rows)` with the stored bytes:
(weights (n, hd) uint8, scales (n, hd/32) uint8), and `fetch_async` with a Future of them: the rows depend
only on token ids, so a forward starts every Engram layer's reads before layer 0 and each layer waits only
for its own. `stats` only counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import CheckpointError
from .safetensors import read_header, read_rows

READ_THREADS = 8  # concurrent positional reads per fetch


@dataclass
class EngramReadStats:
    lookups: int = 0  # rows asked for, duplicates included
    unique: int = 0  # distinct rows asked for, per fetch
    disk_rows: int = 0  # rows read from the shards (LRU misses)
    reads: int = 0  # positional reads issued
    fetch_s: float = 0.0  # seconds spent fetching (LRU lookups and reads), on whichever thread
    wait_s: float = 0.0  # seconds a forward stood waiting for rows: fetch_s minus what compute hid


@dataclass(frozen=True)
class TableSource:
    """Where one table lives: its shard, tensor names, and the scale's shard when it is another one."""

    path: Path
    weight_key: str
    scale_key: str
    scale_path: Path | None = None

    @property
    def scales_in(self) -> Path:
        return self.scale_path or self.path


def table_sources(cfg: ModelConfig, store) -> list[TableSource]:
    out = []
    for layer in cfg.engram_layer_ids or []:
        for prefix in (f"layers.{layer}.engram.embed", f"model.layers.{layer}.engram.embed"):
            w, s = f"{prefix}.weight", f"{prefix}.scale"
            if w in store and s in store:
                break
        else:
            raise CheckpointError(f"{store.folder}: config.json engram_layer_ids names layer {layer}, but no "
                                  f"shard holds layers.{layer}.engram.embed.weight and .scale; re-download or "
                                  "re-convert the Engram shards")
        out.append(TableSource(store.file_of(w), w, s, store.file_of(s)))
    return out


class ResidentRows:
    def __init__(self, tables: list[tuple[np.ndarray, np.ndarray]]):
        self.tables, self.stats = tables, EngramReadStats()

    @classmethod
    def from_sources(cls, sources: list[TableSource]) -> "ResidentRows":
        out = []
        for s in sources:
            out.append((read_rows(s.path, read_header(s.path), s.weight_key),
                        read_rows(s.scales_in, read_header(s.scales_in), s.scale_key)))
        return cls(out)

    def fetch(self, table: int, rows: np.ndarray, asked: int = 0) -> tuple[np.ndarray, np.ndarray]:
        self.stats.lookups += asked or rows.size
        self.stats.unique += rows.size
        w, s = self.tables[table]
        return w[rows], s[rows]

    def fetch_async(self, table: int, rows: np.ndarray, asked: int = 0) -> Future:
        done: Future = Future()  # in RAM already: nothing to overlap
        done.set_result(self.fetch(table, rows, asked))
        return done


class DiskRows:
    """Hot rows in an LRU of at most `budget_bytes` (row bytes only; a row is hd + hd/32 bytes)."""

    def __init__(self, sources: list[TableSource], budget_bytes: int):
        self.sources, self.stats = sources, EngramReadStats()
        self._where = []  # per table: (weight path, offset, row bytes, scale path, offset, row bytes, rows)
        for s in sources:
            hw = read_header(s.path)  # a truncated shard fails here, naming the file
            hs = hw if s.scales_in == s.path else read_header(s.scales_in)
            for h, key, path in ((hw, s.weight_key, s.path), (hs, s.scale_key, s.scales_in)):
                if key not in h.tensors:
                    raise CheckpointError(f"{path}: no tensor {key!r}; this is not the Engram table's shard: "
                                          "re-convert the model")
            w, sc = hw.tensors[s.weight_key], hs.tensors[s.scale_key]
            n, hd = w["shape"]
            self._where.append((s.path, hw.data_start + w["data_offsets"][0], hd,
                                s.scales_in, hs.data_start + sc["data_offsets"][0], sc["shape"][1], n))
        row_bytes = max(w[2] + w[5] for w in self._where) if self._where else 1
        self.capacity = max(0, int(budget_bytes) // row_bytes)
        self._lru: OrderedDict = OrderedDict()  # (table, row) -> (weights, scales) bytes
        self._executor: ThreadPoolExecutor | None = None
        self._prefetcher: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the LRU and stats: one fetch at a time, background or not

    def fetch_async(self, table: int, rows: np.ndarray, asked: int = 0) -> Future:
        """`fetch` on a background thread. One thread, so fetches run in the order asked (a forward asks for
        its layers in order) and the LRU sees the same sequence of hits and misses as synchronous fetches."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-prefetch")
        return self._prefetcher.submit(self.fetch, table, rows, asked)

    def fetch(self, table: int, rows: np.ndarray, asked: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """rows (n,) distinct, sorted row ids (`asked`: how many lookups they dedupe) -> their stored bytes;
        misses are read in sorted runs."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                return self._fetch(table, rows, asked)
            finally:
                self.stats.fetch_s += time.perf_counter() - t0

    def _fetch(self, table: int, rows: np.ndarray, asked: int) -> tuple[np.ndarray, np.ndarray]:
        self.stats.lookups += asked or rows.size
        self.stats.unique += rows.size
        path, _, hd, _, _, sd, n = self._where[table]
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise CheckpointError(f"{path}: Engram row {int(rows.max())} asked for, the table has {n} rows; "
                                  "config.json's engram keys do not match this checkpoint")
        w, s = np.empty((rows.size, hd), np.uint8), np.empty((rows.size, sd), np.uint8)
        missing = []
        for i, r in enumerate(rows.tolist()):
            hit = self._lru.get((table, r))
            if hit is None:
                missing.append(i)
            else:
                self._lru.move_to_end((table, r))
                w[i], s[i] = hit
        if missing:
            self._read(table, rows, np.array(missing), w, s)
        return w, s

    def _read(self, table: int, rows: np.ndarray, missing: np.ndarray, w: np.ndarray, s: np.ndarray) -> None:
        w_path, w_off, hd, s_path, s_off, sd, _ = self._where[table]
        ids = rows[missing]
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1  # runs of adjacent rows: one read each
        runs = np.split(np.arange(ids.size), breaks)
        w_fd, s_fd = os.open(w_path, os.O_RDONLY), os.open(s_path, os.O_RDONLY)

        def read(run: np.ndarray) -> None:  # positional reads share no file offset: safe across threads
            first, count = int(ids[run[0]]), run.size
            wb = _pread(w_fd, w_path, w_off + first * hd, count * hd)
            sb = _pread(s_fd, s_path, s_off + first * sd, count * sd)
            w[missing[run]] = np.frombuffer(wb, np.uint8).reshape(count, hd)
            s[missing[run]] = np.frombuffer(sb, np.uint8).reshape(count, sd)

        try:
            # An SSD serves many small reads at once (a decode step's 24 rows per table are scattered over
            # ~100 GB); pread releases the GIL, so a few threads keep its queue full.
            if len(runs) > 1:
                list(self._pool().map(read, runs))
            else:
                read(runs[0])
        finally:
            os.close(w_fd)
            os.close(s_fd)
        self.stats.reads += 2 * len(runs)
        self.stats.disk_rows += ids.size
        for i in missing.tolist():
            if self.capacity == 0:
                break
            self._lru[(table, int(rows[i]))] = (w[i].copy(), s[i].copy())
            if len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="engram-read")
        return self._executor

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes + b.nbytes for a, b in self._lru.values())


def _pread(fd: int, path: Path, offset: int, n: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise CheckpointError(f"{path}: truncated: {n} bytes at offset {offset} asked for, {len(data)} read; "
                              "re-download or re-convert this Engram shard")
    return data

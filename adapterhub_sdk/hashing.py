"""The fingerprint's hashing engine and its cache: tensor bytes hashed in 8 MiB chunks on a
thread pool (hashlib releases the GIL), each tensor's entry digest, and the per-file
cache keyed by (path, size, mtime, ctime, inode, device). The definition these implement
is in :mod:`adapterhub_sdk.fingerprint`'s docstring."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ._sqlite import enable_wal

CHUNK = 8 * 1024 * 1024
ALGO = "v1"
PROGRESS_MIN_BYTES = 256 * 1024 * 1024


def _entry_digest(name: str, dtype: str, shape: tuple[int, ...], content: bytes) -> bytes:
    # the shape as json.dumps(list(shape), separators=(",", ":")) writes it, without json
    h = hashlib.sha256(b"adapterhub-tensor-v1\0")
    h.update(f"{name}\0{dtype}\0[{','.join(map(str, shape))}]\0".encode())
    h.update(content)
    return h.digest()


# --------------------------------------------------------------------------- hashing engine


class _Progress:
    def __init__(self, total: int, enabled: bool | None, desc: str):
        self._bar = None
        self._lock = threading.Lock()
        if enabled is False or (enabled is None and (total < PROGRESS_MIN_BYTES or not _is_tty(sys.stderr))):
            return  # tqdm would draw nothing off a terminal (disable=None): not worth its import
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)

    def add(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _work_units(jobs: list[tuple[str, str, tuple[int, ...], memoryview]]) -> list[list[tuple[int, memoryview]]]:
    """Every tensor's CHUNK pieces, in order, grouped into units of about CHUNK bytes: a big
    tensor's pieces are units of their own, runs of small tensors share one, so the thread
    pool's cost (a future, a queue hand-off, a GIL switch) is paid per 8 MiB, not per tensor."""
    units: list[list[tuple[int, memoryview]]] = []
    unit: list[tuple[int, memoryview]] = []
    size = 0
    for i, (_, _, _, buf) in enumerate(jobs):
        for off in range(0, len(buf), CHUNK):  # an empty tensor has no piece
            piece = buf[off:off + CHUNK]
            if size and size + len(piece) > CHUNK:
                units.append(unit)
                unit, size = [], 0
            unit.append((i, piece))
            size += len(piece)
    if unit:
        units.append(unit)
    return units


def _workers(workers: int | None) -> int:
    if workers:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cpusets)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return min(32, cores)


@contextlib.contextmanager
def _serial() -> Iterator[Any]:
    """Stands in for the thread pool where one thread does the work."""
    yield SimpleNamespace(map=map)


def _hash_buffers(jobs: list[tuple[str, str, tuple[int, ...], memoryview]], workers: int | None,
                  progress: bool | None, desc: str) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Hash each tensor's bytes in CHUNK pieces on a thread pool (hashlib releases the GIL)."""
    units = _work_units(jobs)
    bar = _Progress(sum(len(b) for *_, b in jobs), progress, desc)
    sha256 = hashlib.sha256

    def work(unit: list[tuple[int, memoryview]]) -> list[bytes]:
        digests = [sha256(piece).digest() for _, piece in unit]
        bar.add(sum(len(piece) for _, piece in unit))
        return digests

    n = min(_workers(workers), len(units))
    chunk_digests: list[list[bytes]] = [[] for _ in jobs]
    try:
        with ThreadPoolExecutor(n, thread_name_prefix="adapterhub-hash") if n > 1 else _serial() as ex:
            for unit, digests in zip(units, ex.map(work, units)):
                for (i, _), d in zip(unit, digests):
                    chunk_digests[i].append(d)
    finally:
        bar.close()
    out = []
    for (name, dtype, shape, _), digests in zip(jobs, chunk_digests):
        content = sha256(b"".join(digests)).digest()
        out.append((name, dtype, shape, _entry_digest(name, dtype, shape, content)))
    return out


# --------------------------------------------------------------------------- cache


class _Cache:
    """Per-file results keyed by (real path, size, mtime_ns, inode, device)."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                enable_wal(db, 30)
                db.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._db = db
            except (OSError, sqlite3.Error):
                return None
        return self._db

    @staticmethod
    def key(path: Path) -> str:
        st = path.stat()
        # ctime too: a file rewritten in place with its mtime put back (os.utime, touch -r,
        # cp -p) keeps size, mtime and inode, but no one can set its ctime
        return f"{ALGO}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"

    def get(self, key: str) -> Any:
        db = self._conn()
        if db is None:
            return None
        try:
            row = db.execute("SELECT value FROM files WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        db = self._conn()
        if db is None:
            return
        try:
            db.execute("INSERT OR REPLACE INTO files (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _default_cache() -> _Cache:
    from .home import cache_dir

    return _Cache(cache_dir() / "fingerprints.sqlite")

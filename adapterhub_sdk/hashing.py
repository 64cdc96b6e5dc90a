"""The fingerprint's hashing engine and its cache: tensor bytes hashed in 8 MiB chunks on a
thread pool (hashlib releases the GIL), each tensor's entry digest, and the per-file
cache keyed by (path, size, mtime, ctime, inode, device). The definition these implement
is in :mod:`adapterhub_sdk.fingerprint`'s docstring."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .errors import CorruptFileError

if TYPE_CHECKING:
    import sqlite3

CHUNK = 8 * 1024 * 1024
#: the sub-read feeding a CHUNK's sha256 from a file: small enough to stay in a core's cache
READ = 1024 * 1024
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
    tensor's pieces are units of their own, runs of small tensors share one, so the threads'
    cost (a hand-off, a GIL switch) is paid per 8 MiB, not per tensor."""
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


#: one piece of a file: (file descriptor, offset, length, tensor index, piece index in the tensor)
Piece = tuple[int, int, int, int, int]


def _range_units(ranges: list[tuple[int, int, int]]) -> tuple[list[list[Piece]], list[int]]:
    """The pieces of each (fd, start, end) byte range, grouped into units of about CHUNK bytes
    as :func:`_work_units` groups buffers; and how many pieces each range has."""
    units: list[list[Piece]] = []
    unit: list[Piece] = []
    counts: list[int] = []
    size = 0
    for i, (fd, start, end) in enumerate(ranges):
        k = 0
        for off in range(start, end, CHUNK):
            n = min(CHUNK, end - off)
            if size and size + n > CHUNK:
                units.append(unit)
                unit, size = [], 0
            unit.append((fd, off, n, i, k))
            size += n
            k += 1
        counts.append(k)
    if unit:
        units.append(unit)
    return units, counts


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
    """Stands in for a thread pool where one thread does the work."""
    yield SimpleNamespace(map=map)


def _run(units: list[Any], make_worker: Callable[[], Callable[[Any], None]], n: int) -> None:
    """``worker(unit)`` for every unit on ``n`` threads, the caller's one of them: each thread
    takes the next unit when it is done with its last (balanced, no future per unit), with a
    worker of its own from ``make_worker`` (its own read buffer). The first error stops the
    others after their current unit and is raised here."""
    it = iter(units)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            work = make_worker()
            while not errors:
                with lock:
                    unit = next(it, None)
                if unit is None:
                    return
                work(unit)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, name=f"adapterhub-hash-{i}", daemon=True) for i in range(n - 1)]
    for t in threads:
        t.start()
    try:
        loop()
    except BaseException as exc:  # e.g. an interrupt between two units: the others stop too
        errors.append(exc)
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _content_digests(chunk_digests: list[list[bytes]]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(b"".join(d)).digest() for d in chunk_digests]


def _hash_buffers(jobs: list[tuple[str, str, tuple[int, ...], memoryview]], workers: int | None,
                  progress: bool | None, desc: str) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Hash each tensor's bytes (in memory) in CHUNK pieces on threads (hashlib releases the GIL)."""
    units = _work_units(jobs)
    bar = _Progress(sum(len(b) for *_, b in jobs), progress, desc)
    sha256 = hashlib.sha256
    slots: list[list[Any]] = [[None] * -(-len(b) // CHUNK) for *_, b in jobs]
    counters = [0] * len(jobs)
    placed: list[list[tuple[int, int, memoryview]]] = []
    for unit in units:  # each piece's place in its tensor, known before the threads start
        placed.append([])
        for i, piece in unit:
            placed[-1].append((i, counters[i], piece))
            counters[i] += 1

    def make_worker() -> Callable[[list[tuple[int, int, memoryview]]], None]:
        def work(unit: list[tuple[int, int, memoryview]]) -> None:
            n = 0
            for i, k, piece in unit:
                slots[i][k] = sha256(piece).digest()
                n += len(piece)
            bar.add(n)
        return work

    try:
        _run(placed, make_worker, min(_workers(workers), len(placed)))
    finally:
        bar.close()
    return [(name, dtype, shape, _entry_digest(name, dtype, shape, content))
            for (name, dtype, shape, _), content in zip(jobs, _content_digests(slots))]


def _hash_ranges(ranges: list[tuple[int, int, int]], workers: int | None, progress: bool | None,
                 desc: str, names: dict[int, str] | None = None) -> list[bytes]:
    """The content digest of each (fd, start, end) byte range of an open file, in order:
    each CHUNK piece read with ``os.preadv`` in READ-byte sub-reads into a buffer of the
    thread's own (the bytes stay in the core's cache between the read and the hash; no
    page-table cost of a mapping) and hashed on threads. A file cut short while being read
    is an error, never a digest of fewer bytes."""
    units, counts = _range_units(ranges)
    units.sort(key=lambda u: -sum(p[2] for p in u))  # largest first: the last ones fill the gaps
    bar = _Progress(sum(end - start for _, start, end in ranges), progress, desc)
    slots: list[list[Any]] = [[None] * c for c in counts]
    sha256 = hashlib.sha256
    preadv = os.preadv

    def make_worker() -> Callable[[list[Piece]], None]:
        buf = bytearray(READ)
        view = memoryview(buf)
        whole = [view]

        def work(unit: list[Piece]) -> None:
            total = 0
            for fd, off, n, i, k in unit:
                h = sha256()
                end = off + n
                while off < end:
                    want = end - off
                    got = preadv(fd, whole if want >= READ else [view[:want]], off)
                    if got <= 0:
                        what = (names or {}).get(fd, "a weight file")
                        raise CorruptFileError(f"{what} ended at byte {off:,} while being read, before the "
                                               f"{end:,} its header promised (changed on disk?)",
                                               hint="wait until the file is written in full, then retry")
                    h.update(view if got == READ else view[:got])
                    off += got
                slots[i][k] = h.digest()
                total += n
            bar.add(total)
        return work

    try:
        _run(units, make_worker, min(_workers(workers), len(units)))
    finally:
        bar.close()
    return _content_digests(slots)


# --------------------------------------------------------------------------- cache


class _Cache:
    """Per-file results keyed by (real path, size, mtime_ns, inode, device)."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        import sqlite3  # only a cached call pays its import

        from ._sqlite import enable_wal

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
        import sqlite3

        try:
            row = db.execute("SELECT value FROM files WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        db = self._conn()
        if db is None:
            return
        import sqlite3

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

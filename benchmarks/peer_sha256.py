"""The peers of ``adapterhub fingerprint DIR``: the short scripts a user would write to hash a
model's safetensors files, run as fresh processes by ``bench_fingerprint.py``. Standard
library only at import time (``blake3`` is imported by its own mode), so process start
costs what such a script costs.

    python benchmarks/peer_sha256.py pool|chunks|one|blake3 FILE...

* ``pool``:   ``hashlib.sha256`` of each file, one file per thread (``ThreadPoolExecutor``)
* ``chunks``: ``hashlib.sha256`` of each 8 MiB chunk (``os.pread`` into a per-thread buffer)
              on a thread pool: the chunk digests, not one per file
* ``one``:    ``hashlib.sha256`` of each file on one thread, 1 MiB ``readinto``
* ``blake3``: ``blake3`` (PyPI) of each file, ``max_threads=AUTO`` over its mmap (context only)

Prints one hex digest per file (chunks: per chunk).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK = 8 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def chunks(files: list[str]) -> list[str]:
    local = threading.local()
    fds = [os.open(f, os.O_RDONLY) for f in files]
    jobs = [(fd, off) for fd in fds for off in range(0, os.fstat(fd).st_size, CHUNK)]

    def one(job: tuple[int, int]) -> str:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(CHUNK))
        n = os.preadv(job[0], [buf], job[1])
        return hashlib.sha256(buf[:n]).hexdigest()

    try:
        with ThreadPoolExecutor() as ex:
            return list(ex.map(one, jobs))
    finally:
        for fd in fds:
            os.close(fd)


def blake3_file(path: str) -> str:
    import blake3

    return blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest()


def main(argv: list[str]) -> None:
    mode, files = argv[0], argv[1:]
    if mode == "pool":
        with ThreadPoolExecutor() as ex:
            out = list(ex.map(sha256_file, files))
    elif mode == "chunks":
        out = chunks(files)
    elif mode == "one":
        out = [sha256_file(f) for f in files]
    elif mode == "blake3":
        out = [blake3_file(f) for f in files]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.write("".join(d + "\n" for d in out))


if __name__ == "__main__":
    main(sys.argv[1:])

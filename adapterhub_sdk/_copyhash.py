"""Copy a file into a store's staging file and hash the copy, the two overlapped: the kernel
copies piece i+1 (``copy_file_range``) while a second thread hashes piece i, read back from
the copy (page cache). The digest is of exactly the bytes in the copy, as a copy followed by
a hash of it gives, in about the time of the slower of the two instead of their sum."""

from __future__ import annotations

import hashlib
import os
import queue
import threading

PIECE = 4 << 20  # bytes per piece: big enough that the hand-off costs nothing
MIN_OVERLAP = 2 * PIECE  # smaller files: the plain copy then hash (no thread)


def copy_and_hash(src: int, dst: int) -> tuple[int, str] | None:
    """Copy all of ``src`` into the empty ``dst`` (both at offset 0) and return (size,
    sha256 hex of the copy); None where this cannot be done (a small file, no
    ``copy_file_range``, a filesystem that refuses it or copies short): the caller then
    truncates ``dst`` and copies and hashes it its own way."""
    size = os.fstat(src).st_size
    if size < MIN_OVERLAP or not hasattr(os, "copy_file_range"):
        return None
    h = hashlib.sha256()
    todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def hasher() -> None:
        buf = memoryview(bytearray(1 << 20))
        try:
            while (job := todo.get()) is not None:
                off, n = job
                while n > 0:
                    k = os.preadv(dst, [buf[:min(n, len(buf))]], off)
                    if k <= 0:
                        raise OSError(f"short read of the staged copy at {off}")
                    h.update(buf[:k])
                    off, n = off + k, n - k
        except BaseException as exc:  # noqa: BLE001 - re-raised by the copying thread
            failed.append(exc)

    t = threading.Thread(target=hasher, name="adapterhub-stage-hash", daemon=True)
    t.start()
    copied = 0
    try:
        while copied < size:
            k = os.copy_file_range(src, dst, min(PIECE, size - copied), copied, copied)
            if k <= 0:
                break
            todo.put((copied, k))
            copied += k
            if failed:
                break
    except OSError:
        copied = -1
    finally:
        todo.put(None)
        t.join()
    if failed:
        raise failed[0]
    if copied != size or os.fstat(src).st_size != size:
        return None  # refused, short, or the source changed size meanwhile: the caller's way
    return size, h.hexdigest()

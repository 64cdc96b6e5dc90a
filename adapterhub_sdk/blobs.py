"""Content-addressed blob store: ``<root>/sha256/ab/cdef...``.

This is the built-in ``file`` storage. Storage plugins (hook ``register_storage``)
provide other stores with the same methods: ``put_file``, ``copy_verified``, ``verify``,
``size``, ``iter_digests``, ``age``, ``delete`` and ``clean_temp``.

A blob is written to a temp file under ``<root>/tmp``, hashed while it is copied,
fsynced, renamed into place and made read-only; if the bytes do not hash to the expected
digest nothing is stored. Reads re-hash and refuse a blob whose bytes changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import IntegrityError, NotFoundError

_HEX = re.compile(r"[0-9a-f]{64}")
BUF = 1 << 20


def _check(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def path(self, digest: str) -> Path:
        d = _check(digest)
        return self.root / "sha256" / d[:2] / d[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def _tmpdir(self) -> Path:
        t = self.root / "tmp"
        t.mkdir(parents=True, exist_ok=True)
        return t

    def put_file(self, source: str | os.PathLike[str], digest: str) -> int:
        """Store ``source`` under ``digest``. Returns the bytes written (0 if already stored)."""
        final = self.path(digest)
        if final.is_file():
            return 0
        with open(source, "rb") as src:
            return self._put_stream(src, digest, final)

    def _put_stream(self, src: BinaryIO, digest: str, final: Path) -> int:
        fd, tmp_name = tempfile.mkstemp(prefix=digest[:16] + ".", suffix=".incomplete", dir=self._tmpdir())
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            n = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(BUF):
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != digest:
                raise IntegrityError(f"content changed while it was stored: expected sha256 {digest[:12]}, "
                                     f"got {h.hexdigest()[:12]}", hint="do not modify the adapter while publishing")
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return n
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def open_verified(self, digest: str) -> bytes:
        data = self._read(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"blob sha256:{digest[:12]} is corrupt: its bytes no longer match its digest")
        return data

    def _read(self, digest: str) -> bytes:
        p = self.path(digest)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob sha256:{digest[:12]} is missing from {self.root}",
                                hint="run 'adapterhub verify' and re-publish the affected versions") from None

    def copy_verified(self, digest: str, out: BinaryIO) -> int:
        """Stream a blob into ``out``, hashing as it goes; IntegrityError if it does not match.
        The caller must discard ``out`` on error (pull writes into a temp dir)."""
        p = self.path(digest)
        h = hashlib.sha256()
        n = 0
        try:
            src = open(p, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise NotFoundError(f"blob sha256:{digest[:12]} is missing from {self.root}",
                                hint="run 'adapterhub verify' and re-publish the affected versions") from None
        with src:
            while chunk := src.read(BUF):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if h.hexdigest() != digest:
            raise IntegrityError(f"blob sha256:{digest[:12]} is corrupt: its bytes no longer match its digest")
        return n

    def verify(self, digest: str) -> str | None:
        """None if the blob is intact, else what is wrong."""
        p = self.path(digest)
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while chunk := f.read(BUF):
                    h.update(chunk)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
        return None if h.hexdigest() == digest else "corrupt (digest mismatch)"

    def iter_digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                d = sub.name + f.name
                if _HEX.fullmatch(d):
                    yield d

    def delete(self, digest: str) -> int:
        p = self.path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
            return size
        except FileNotFoundError:
            return 0

    def age(self, digest: str) -> float:
        try:
            return time.time() - self.path(digest).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def clean_temp(self, older_than: float, *, dry_run: bool = False) -> int:
        """Remove temp files of interrupted writes older than ``older_than`` seconds."""
        t = self.root / "tmp"
        if not t.is_dir():
            return 0
        now = time.time()
        n = 0
        for f in t.iterdir():
            try:
                if now - f.stat().st_mtime < older_than:
                    continue
            except FileNotFoundError:
                continue
            n += 1
            if not dry_run:
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)
        return n


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

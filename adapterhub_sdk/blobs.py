"""Content-addressed blob store: ``<root>/sha256/ab/cdef...``.

This is the built-in ``file`` storage, registered here through ``register_storage``
like a plugin's. Storage plugins provide other stores with the same interface,
:class:`~adapterhub_sdk.interfaces.BlobStorage`; this one also stages
(:class:`~adapterhub_sdk.interfaces.StagingBlobStorage`) and quarantines
(:class:`~adapterhub_sdk.interfaces.QuarantiningBlobStorage`).

A blob is copied to a temp file under ``<root>/tmp``, that copy is hashed and fsynced,
then renamed into place and made read-only; if the copy does not hash to the expected
digest nothing is stored. Reads re-hash and refuse a blob whose bytes changed.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

from . import quarantine as _gc
from ._copyhash import copy_and_hash
from .adapter_files import open_regular, staged_copy_removed
from .errors import IntegrityError, NotFoundError
from .hookspecs import hookimpl
from .store_owner import OwnerFile

if TYPE_CHECKING:
    from .interfaces import QuarantiningBlobStorage, StagingBlobStorage

_HEX = re.compile(r"[0-9a-f]{64}")
BUF = 1 << 20


def _check(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest



class BlobStore(OwnerFile):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._held: dict[Path, int] = {}  # quarantine tokens -> their locked descriptors

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

    def put_file(self, source: str | os.PathLike[str] | BinaryIO, digest: str) -> int:
        """Store ``source`` under ``digest``. Returns the bytes written (0 if already stored).
        IntegrityError, and nothing stored, if the bytes do not hash to ``digest``. A path
        must name a regular file; a link there is not followed (see :meth:`stage`)."""
        if self._intact(digest):
            self._touch(digest)
            return 0
        staged = self.stage(source)
        if staged.sha256 != digest:
            self.discard(staged)
            raise IntegrityError(f"content changed while it was stored: expected sha256 {digest[:12]}, "
                                 f"got {staged.sha256[:12]}", hint="do not modify the adapter while publishing")
        return self.put_staged(staged)

    def stage(self, source: str | os.PathLike[str] | BinaryIO) -> StagedBlob:
        """Copy ``source`` (a path, or a file opened for reading, copied from its start) into
        a private temp file and hash the copy. A path is opened without following a link in
        its last component and must be a regular file (NotRegularFileError otherwise): a
        store never takes in bytes from wherever a link points. What is stored later is
        exactly what was hashed, whatever happens to ``source`` meanwhile. The kernel copies
        (``copy_file_range``, no trip through Python), the hash reads the copy from the page
        cache, and a second thread starts flushing it to disk at the same time. Finish with
        :meth:`put_staged` or :meth:`discard`."""
        fd, tmp_name = tempfile.mkstemp(prefix="staged.", suffix=".incomplete", dir=self._tmpdir())
        tmp = Path(tmp_name)
        syncer: _Syncer | None = None
        try:
            try:
                if hasattr(source, "fileno"):
                    src_fd = source.fileno()
                    os.lseek(src_fd, 0, os.SEEK_SET)
                    size, digest = _copy_hashed(src_fd, fd)
                else:
                    with open_regular(source, what="file") as src:
                        size, digest = _copy_hashed(src.fileno(), fd)
                syncer = _Syncer(fd)
            finally:
                os.close(fd)
            return StagedBlob(tmp, digest, size, syncer)
        except BaseException:
            if syncer is not None:
                syncer.abandon()
            tmp.unlink(missing_ok=True)
            raise

    def receive(self, fill: Callable[[BinaryIO], object], digest: str, size: int) -> StagedBlob:
        """Stage a blob that ``fill`` writes (a download streamed into a private temp file
        here, so that storing it later is a rename, not another copy). ``fill`` must hash
        the bytes as it writes them and raise unless they are ``size`` bytes hashing to
        ``digest`` (``OciClient.fetch_blob`` does); then the staged copy is exactly what was
        hashed, as with :meth:`stage`. Nothing is left behind when ``fill`` raises."""
        _check(digest)
        fd, tmp_name = tempfile.mkstemp(prefix="received.", suffix=".incomplete", dir=self._tmpdir())
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb", closefd=False) as out:
                fill(out)
            if os.fstat(fd).st_size != size:
                raise IntegrityError(f"blob sha256:{digest[:12]}: {os.fstat(fd).st_size} bytes received, "
                                     f"{size} expected; nothing stored")
            syncer = _Syncer(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return StagedBlob(tmp, digest, size, syncer)

    def put_staged(self, staged: StagedBlob) -> int:
        """Move a staged copy into place under its digest (0 bytes written if already stored)."""
        final = self.path(staged.sha256)
        if self._intact(staged.sha256, staged.size):
            self._touch(staged.sha256)
            self.discard(staged)
            return 0
        try:
            staged.syncer.wait()
            try:  # no exists() first: gc may remove it between that check and the rename
                os.chmod(staged.path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged.path, final)
            except FileNotFoundError:
                if staged.path.exists():
                    raise
                raise staged_copy_removed(staged.sha256) from None
            _fsync_dir(final.parent)
            return staged.size
        except BaseException:
            staged.path.unlink(missing_ok=True)
            raise

    def holds(self, staged: StagedBlob) -> bool:
        """Whether the blob ``staged`` would write is already stored intact (then refreshed:
        its mtime is the grace period ``gc`` honours)."""
        if self._intact(staged.sha256, staged.size):
            self._touch(staged.sha256)
            return True
        return False

    def _touch(self, digest: str) -> None:
        try:
            os.utime(self.path(digest))
        except OSError:
            pass

    def quarantine(self, digest: str) -> Path | None:
        """Move a blob out of its address (gc's first step): a publish that looks for it from
        now on writes its own copy. Returns where it went, or None if it was not there (or
        another gc has it). Locked until released (:mod:`~adapterhub_sdk.quarantine`)."""
        return _gc.quarantine(self, digest)

    def release(self, token: Path, digest: str, *, keep: bool) -> int:
        """Finish a quarantine: put the blob back (``keep``: a version referenced it
        meanwhile) or delete it. Returns the bytes freed."""
        return _gc.release(self, token, digest, keep=keep)

    def _intact(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is stored with the right bytes. Checked (a hash of the stored
        file) before deduplicating against it, so that publishing the same content again
        repairs a corrupt or missing blob instead of pointing a new version at it."""
        p = self.path(digest)
        try:
            st = p.stat()
        except FileNotFoundError:
            return False
        if size is not None and st.st_size != size:
            return False
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            return False
        try:
            return _hash_fd(fd, st.st_size) == digest
        finally:
            os.close(fd)

    def discard(self, staged: StagedBlob) -> None:
        staged.syncer.abandon()
        staged.path.unlink(missing_ok=True)

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
                                hint="run 'adapterhub verify', then publish the same files again under the same name@version") from None

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
                                hint="run 'adapterhub verify', then publish the same files again under the same name@version") from None
        with src:
            while chunk := src.read(BUF):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if h.hexdigest() != digest:
            raise IntegrityError(f"blob sha256:{digest[:12]} is corrupt: its bytes no longer match its digest")
        return n

    def copy_fresh(self, digest: str, out: BinaryIO, size: int) -> int:
        """Copy a blob that this process has just stored from bytes it verified as they
        arrived (:meth:`receive`: a remote pull's layers), or has just re-hashed, into ``out``, a new file, inside
        the kernel and without hashing it a second time; its size is checked. Every other
        read goes through :meth:`copy_verified`."""
        try:
            src = open_regular(self.path(digest), what="blob")
        except FileNotFoundError:
            raise NotFoundError(f"blob sha256:{digest[:12]} is missing from {self.root}",
                                hint="pull it again") from None
        with src:
            out.flush()
            n = _copy_fd(src.fileno(), out.fileno())
        if n != size:
            raise IntegrityError(f"blob sha256:{digest[:12]} is {n} bytes, not {size}: it changed after it was stored")
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
        """Remove temp files of interrupted writes older than ``older_than`` seconds, and put
        back blobs a gc that died left in quarantine (the next gc judges them again against
        the catalog, rather than deleting what a version may reference)."""
        t = self.root / "tmp"
        if not t.is_dir():
            return 0
        now = time.time()
        n = 0
        for f in t.iterdir():
            try:
                age = now - f.stat().st_mtime
            except FileNotFoundError:
                continue
            digest = _gc.token_digest(f.name)
            if digest is not None:
                n += _gc.clean_token(self, f, digest, age, older_than, dry_run=dry_run)
                continue
            if age < older_than:
                continue
            n += 1
            if not dry_run:
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)
        return n


def _copy_hashed(src: int, dst: int) -> tuple[int, str]:
    """Copy ``src`` into ``dst`` and hash the copy: overlapped for big files
    (:func:`~adapterhub_sdk._copyhash.copy_and_hash`), else a copy then a hash of it."""
    done = copy_and_hash(src, dst)
    if done is not None:
        return done
    os.ftruncate(dst, 0)
    size = _copy_fd(src, dst)
    return size, _hash_fd(dst, size)


def _copy_fd(src: int, dst: int) -> int:
    """Copy all of ``src`` into ``dst`` (both at offset 0), inside the kernel when it can.
    Falls back to plain reads and writes where ``copy_file_range`` is missing or refused,
    and whenever it copied less than the source's size (or nothing: files whose size the
    filesystem reports as 0)."""
    n = 0
    try:
        size = os.fstat(src).st_size
        while True:
            k = os.copy_file_range(src, dst, 1 << 30)
            if k == 0:
                break
            n += k
        if n and n >= size:
            return n
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
    except AttributeError:  # no copy_file_range on this platform
        pass
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    n = 0
    while chunk := os.read(src, BUF):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        n += len(chunk)
    return n


def _hash_fd(fd: int, size: int) -> str:
    """sha256 of the first ``size`` bytes of ``fd``: through mmap (no copy out of the page
    cache), or plain reads where the filesystem refuses to map."""
    h = hashlib.sha256()
    if size:
        try:
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
                h.update(m)
            return h.hexdigest()
        except (OSError, ValueError):
            h = hashlib.sha256()
        left = size
        pos = 0
        while left > 0:
            chunk = os.pread(fd, min(BUF, left), pos)
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
            left -= len(chunk)
    return h.hexdigest()


class _Syncer:
    """fsync a file in a background thread, on its own duplicate of the descriptor, which
    it closes when done."""

    def __init__(self, fd: int):
        self.fd = os.dup(fd)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="adapterhub-fsync", daemon=True)
        try:
            self.thread.start()
        except BaseException:
            os.close(self.fd)
            raise

    def _run(self) -> None:
        try:
            os.fsync(self.fd)
        except BaseException as exc:  # re-raised by wait()
            self.error = exc
        finally:
            os.close(self.fd)

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """The file is being thrown away. POSIX can unlink it while the flush finishes on its
        own; Windows cannot delete a file that is still open, so wait there."""
        if os.name == "nt":
            self.thread.join()


@dataclass
class StagedBlob:
    """A private, hashed copy under the store's temp dir, waiting to be put in place."""

    path: Path
    sha256: str
    size: int
    syncer: _Syncer


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


def _file_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise NotFoundError(f"{url}: file:// URLs name a local path (file:///path)")
    return BlobStore(Path(unquote(parsed.path)))


@hookimpl
def register_storage(register):
    register("file", _file_store)


if TYPE_CHECKING:  # mypy checks that the built-in store has both optional capabilities
    _staging: type[StagingBlobStorage] = BlobStore
    _quarantining: type[QuarantiningBlobStorage] = BlobStore

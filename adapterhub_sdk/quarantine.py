"""gc's quarantine on a directory store (:class:`~adapterhub_sdk.blobs.BlobStore`).

gc moves an unreferenced blob out of its address to ``<root>/tmp/gc.<digest>.<pid>.<ns>``
(a token), asks the catalog again, and puts it back or deletes it. A gc killed in between
leaves the token behind, and a version may reference that blob by then (a publish reused
it just before gc moved it): so a leftover token is put back at its address, never simply
deleted, and the next gc judges the blob again.

Which tokens are leftovers: a live gc holds an exclusive ``flock`` on the blob's file from
before it moves it until it is done with it, so the lock is free only once that gc has
finished or died. Where the filesystem has no such locks, a token counts as a leftover once
it is older than the grace period (as on S3); putting back a token a live gc still holds is
harmless either way (that gc then finds its token gone and frees nothing).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .blobs import BlobStore

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers are told by their age
    fcntl = None  # type: ignore[assignment]

PREFIX = "gc."
HELD, FREE, UNKNOWN = "held", "free", "unknown"
_TOKEN = re.compile(r"gc\.([0-9a-f]{64})\..*")


def token_digest(name: str) -> str | None:
    """The digest a token's file name carries, or None if ``name`` is not a token's."""
    m = _TOKEN.fullmatch(name)
    return m.group(1) if m else None


def lock(path: Path) -> tuple[int | None, str]:
    """Open ``path`` and try to take its exclusive lock without waiting. Returns the open
    descriptor (None if the file is gone) and HELD (another process has it: the descriptor
    is closed), FREE (taken: close the descriptor to let it go) or UNKNOWN (no locks here;
    the descriptor, if any, is to be closed too)."""
    if fcntl is None:  # nothing to hold (and Windows cannot rename a file that is open)
        return None, UNKNOWN
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None, FREE
    except OSError:
        return None, UNKNOWN
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, HELD
    except OSError as exc:  # ENOLCK, EBADF (NFS emulating flock with write locks), ...
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            return None, HELD
        return fd, UNKNOWN
    return fd, FREE


def quarantine(store: BlobStore, digest: str) -> Path | None:
    """:meth:`BlobStore.quarantine <adapterhub_sdk.blobs.BlobStore.quarantine>`: the blob's
    file is locked before it moves, and stays locked (``store._held``) until released."""
    address = store.path(digest)
    fd, state = lock(address)
    if fd is None and state != UNKNOWN:  # not there, or another gc is moving it aside
        return None
    token = store._tmpdir() / f"{PREFIX}{digest}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(address, token)
    except FileNotFoundError:
        if fd is not None:
            os.close(fd)
        return None
    if fd is not None:
        store._held[token] = fd
    try:
        os.utime(token)  # fresh: where there are no locks, another gc's temp cleanup honours its grace
    except OSError:
        pass
    return token


def release(store: BlobStore, token: Path, digest: str, *, keep: bool) -> int:
    """:meth:`BlobStore.release <adapterhub_sdk.blobs.BlobStore.release>`; the lock ends
    once the token is gone from the temp dir."""
    fd = store._held.pop(token, None)
    try:
        if keep:
            final = store.path(digest)
            if final.exists():  # a publish wrote it again meanwhile: same bytes
                token.unlink(missing_ok=True)
            else:
                os.rename(token, final)
            return 0
        try:
            size = token.stat().st_size
        except FileNotFoundError:
            return 0
        token.unlink(missing_ok=True)
        return size
    finally:
        if fd is not None:
            os.close(fd)


def put_back(store: BlobStore, token: Path, digest: str) -> None:
    """Put a leftover quarantined blob back at its address: only bytes that hash to its
    digest, never over an intact blob there (then the token is just dropped). A token whose
    bytes do not match is worthless and removed."""
    h = hashlib.sha256()
    try:
        with open(token, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:  # the gc that held it finished with it meanwhile
        return
    if h.hexdigest() != digest or store._intact(digest):
        token.unlink(missing_ok=True)
        return
    final = store.path(digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(token, final)  # never replaces what is there
    except FileExistsError:
        if store._intact(digest):  # a publish wrote it again just now
            token.unlink(missing_ok=True)
            return
        os.replace(token, final)  # over a corrupt copy
    except FileNotFoundError:  # the gc that held it finished with it meanwhile
        return
    except OSError:  # no hard links on this filesystem (nothing intact there: checked above)
        os.replace(token, final)
    else:
        token.unlink(missing_ok=True)
    try:
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def clean_token(store: BlobStore, token: Path, digest: str, age: float, older_than: float, *,
                dry_run: bool) -> bool:
    """Put back ``token`` if it is a leftover of a gc that died (see the module); whether it
    was one (counted with the temp files cleaned)."""
    fd, state = lock(token)
    try:
        if state == HELD or (fd is None and state == FREE):  # a live gc's, or gone (its gc is done)
            return False
        if state == UNKNOWN and age < older_than:
            return False
        if not dry_run:
            put_back(store, token, digest)
        return True
    finally:
        if fd is not None:
            os.close(fd)

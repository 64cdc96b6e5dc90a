"""Where an S3 store stages its private, hashed copies before uploading them: one directory per
user under the system's temp directory, so that gc (``clean_temp``) finds what a killed
publish left there (a file of the adapter's full size each), as the local store's gc finds its
own ``tmp/``. The directory is used only when it is a real directory owned by this user and
closed to others; a link or another user's directory there is never followed: staging then
goes to a fresh private temp file, as before.

A live publish holds an exclusive ``flock`` on each of its staged copies until it is done
with it: gc removes only copies nobody holds (a killed publish's), whatever its grace
period, so ``gc --grace 0`` never pulls a staged copy from under a running publish."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): the grace period alone protects
    fcntl = None  # type: ignore[assignment]

PREFIX = "adapterhub-s3."
SUFFIX = ".incomplete"


def staging_dir() -> str | None:
    """This user's staging directory (made 0700 if missing), or None where it cannot be trusted."""
    d = Path(tempfile.gettempdir()) / f"adapterhub-s3-staging-{os.getuid()}"
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(d)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return str(d)


def lock_staged(path: str) -> int:
    """An fd holding an exclusive flock on the staged copy at ``path`` (closing it releases
    the lock; a killed process's lock goes with it); -1 where flock does not exist."""
    if fcntl is None:
        return -1
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and private: nobody else holds it
    except BaseException:
        os.close(fd)
        raise
    return fd


def _held(path: str) -> bool:
    """Whether a live process holds the staged copy at ``path`` (its publish is running)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def clean_staging(older_than: float, *, dry_run: bool = False) -> int:
    """Remove staged copies not written to for ``older_than`` seconds (a killed publish's);
    the number removed (or that would be)."""
    import time

    d = staging_dir()
    if d is None:
        return 0
    now, n = time.time(), 0
    with os.scandir(d) as entries:
        for e in entries:
            if not (e.name.startswith(PREFIX) and e.name.endswith(SUFFIX)):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < older_than or _held(e.path):
                continue
            n += 1
            if not dry_run:
                try:
                    os.unlink(e.path)
                except FileNotFoundError:
                    pass
    return n

"""One atomic directory write, used by pull and export: the destination is complete or
untouched, whatever fails or dies when.

    with atomic_dir(dest, overwrite=True) as staging:
        ...  # write the new tree into staging

The tree is written into a sibling ``.<name>.<random>.incomplete``, held under an
exclusive ``flock`` while its writer lives. On success every file and directory in it is
fsynced, then it takes the final path:

- no destination, or an empty directory: one ``rename``;
- a non-empty one, only with ``overwrite``: swapped with the staging directory in one
  ``renameat2(RENAME_EXCHANGE)`` (Linux), so the final path holds the old or the new tree
  at every instant; the old tree, left under the staging name, is then removed. Where the
  swap is not available the old tree is renamed to ``.<name>.<random>.old`` (locked), the
  new one renamed in, and the old one put back if that fails; a crash between those two
  renames leaves the old tree under the ``.old`` name, which the next writer of the path
  puts back before it starts.

On failure the staging directory is removed and the old tree is still there, whole. What a
killed writer leaves behind (a ``.incomplete`` or ``.old`` sibling whose lock no process
holds) is cleaned up by the next writer of the same path; where ``flock`` does not exist,
such leftovers are removed after an hour.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import DestinationError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: leftovers are judged by age
    fcntl = None  # type: ignore[assignment]

STAGING = ".incomplete"
ASIDE = ".old"
ABANDONED_AFTER_S = 3600.0  # without flock: how old an unlocked-looking leftover must be
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def check_destination(dest: Path, overwrite: bool, purpose: str = "to write to") -> None:
    """Refuse a destination that is a file or link, or a non-empty directory without
    ``overwrite``. Called again when the new tree is put in place."""
    if dest.is_symlink():  # never written through: the tree would land wherever it points
        raise FileExistsError(f"{dest} is a symbolic link; pass the directory's own path {purpose}")
    if dest.is_file():
        raise FileExistsError(f"{dest} is a file; pass a directory path {purpose}")
    if not overwrite and dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty; pass overwrite=True to replace it")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str], *, overwrite: bool = False, mode: int | None = None,
               purpose: str = "to write to") -> Iterator[Path]:
    """Yield an empty staging directory; when the block returns, its tree replaces ``dest``
    (see the module docstring). ``mode`` is the new directory's mode (default: what a plain
    ``mkdir`` makes under the umask)."""
    check_destination(Path(dest), overwrite, purpose)
    dest = Path(os.path.normpath(Path(dest).absolute()))  # 'out/..' names its parent, not a '..' entry
    if dest == dest.parent:
        raise DestinationError(f"cannot write a tree over {dest}; pass a directory below it {purpose}")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create {parent}: {exc.strerror or exc}") from None
    clean_leftovers(dest)
    check_destination(dest, overwrite, purpose)  # an old tree a crash left aside may be back
    staging, lock = _make_staging(parent, dest.name)
    try:
        if mode is not None:
            os.chmod(staging, mode)
        yield staging
        _fsync_tree(staging)
        try:
            _commit(staging, dest, overwrite, purpose)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EINVAL):  # a mount point, an ancestor of ...
                raise
            raise DestinationError(f"cannot replace {dest}: {exc.strerror}; pass a new directory path "
                                   f"{purpose}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _unlock(lock)


# --------------------------------------------------------------------------- leftovers


#: the random part of a staging or aside name this module makes (``secrets.token_hex(6)``)
_TOKEN = "[0-9a-f]{12}"
#: what an older release's ``tempfile.mkdtemp`` made for an aside (``.NAME.XXXXXXXX.old/x``)
_LEGACY_TOKEN = "[a-z0-9_]{8}"


def _leftover_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(?:(?P<token>{_TOKEN})|{_LEGACY_TOKEN})"
                      rf"(?P<kind>{re.escape(STAGING)}|{re.escape(ASIDE)})$")


def clean_leftovers(dest: Path) -> None:
    """Remove what killed writers of ``dest`` left beside it; put an old tree that a crash
    left aside back at ``dest`` if nothing is there. Only names this module makes are
    touched (12 hex digits between the destination's name and the suffix; an older
    release's aside only when it has that release's layout, and then only put back): a
    user's own ``.NAME.backup.old`` or ``.NAME.v1.incomplete`` is never moved or removed."""
    pattern = _leftover_re(dest.name)
    try:
        entries = [(p, m) for p in dest.parent.iterdir() if (m := pattern.match(p.name))]
    except OSError:
        return
    for p, m in entries:
        ours = m.group("token") is not None
        if not ours and (m.group("kind") != ASIDE or not _is_legacy_aside(p) or os.path.lexists(dest)):
            continue  # not a name this release makes, nor an older release's aside to put back
        lock = _try_lock(p)
        if lock is False:
            continue  # a live writer's
        try:
            if p.name.endswith(ASIDE) and not os.path.lexists(dest):
                old = p / "x" if not ours else p  # an older release kept the tree at .old/x
                os.rename(old, dest)
                if old != p:
                    os.rmdir(p)
                continue
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue
        finally:
            _unlock(lock)


def _is_legacy_aside(p: Path) -> bool:
    try:
        return [e.name for e in os.scandir(p)] == ["x"] and (p / "x").is_dir()
    except OSError:
        return False


# --------------------------------------------------------------------------- locks


_HELD, _NO_LOCKS = "held", "no locks"
_BUSY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def _flock(path: Path, *, wait: bool = False) -> int | str:
    """An fd holding an exclusive flock on the directory ``path``; ``_HELD`` if another
    process holds it (or ``path`` is gone); ``_NO_LOCKS`` where this system or filesystem
    has no flock for directories (some network filesystems)."""
    if fcntl is None:
        return _NO_LOCKS
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return _HELD
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        return _HELD if exc.errno in _BUSY_ERRNOS else _NO_LOCKS
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock(path: Path) -> int | None | bool:
    """For a cleaner: an fd holding ``path``'s lock; False if a live writer may still own
    it; None where there are no locks and ``path`` is older than ABANDONED_AFTER_S."""
    lock = _flock(path)
    if isinstance(lock, int):
        return lock
    if lock == _HELD:
        return False
    try:
        return None if time.time() - path.stat().st_mtime > ABANDONED_AFTER_S else False
    except OSError:
        return False


def _unlock(lock: object) -> None:
    if isinstance(lock, int) and not isinstance(lock, bool):
        os.close(lock)  # closing the last fd releases the flock


def _make_staging(parent: Path, name: str) -> tuple[Path, int | None]:
    """A new, locked ``.<name>.<random>.incomplete`` in ``parent``. A cleaner that took the
    lock between our mkdir and our flock removes the directory: then make another."""
    for _ in range(100):
        staging = parent / f".{name}.{secrets.token_hex(6)}{STAGING}"
        try:
            os.mkdir(staging)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DestinationError(f"cannot write into {parent}: {exc.strerror or exc}") from None
        lock = _flock(staging)
        if lock == _NO_LOCKS:
            return staging, None  # leftovers are then judged by age
        if isinstance(lock, int):
            try:
                if os.fstat(lock).st_ino == os.lstat(staging).st_ino:
                    return staging, lock
            except FileNotFoundError:
                pass
            _unlock(lock)
        with contextlib.suppress(OSError):
            os.rmdir(staging)  # a cleaner's, or already gone
    raise DestinationError(f"cannot make a staging directory in {parent}")


# --------------------------------------------------------------------------- commit


def _fsync_path(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_tree(root: Path) -> None:
    """Every file's bytes and every directory's entries on disk, before the tree is named."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                _fsync_path(p)
        _fsync_dir(Path(dirpath))


def _commit(staging: Path, dest: Path, overwrite: bool, purpose: str) -> None:
    try:
        os.rename(staging, dest)  # dest absent, or an empty directory (replaced atomically)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise FileExistsError(f"{dest} is a file; pass a directory path {purpose}") from None
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{dest} exists and is not empty; pass overwrite=True to replace it") from None
        check_destination(dest, overwrite, purpose)
        if _exchange(staging, dest):
            _fsync_dir(dest.parent)
            shutil.rmtree(staging, ignore_errors=True)  # the old tree, now under the staging name
            return
        _replace_aside(staging, dest)
        return
    _fsync_dir(dest.parent)


def _replace_aside(staging: Path, dest: Path) -> None:
    """Without an atomic swap: the old tree aside (locked, so no cleaner takes it), the new
    one in, the old one back if that fails."""
    aside = dest.parent / f".{dest.name}.{secrets.token_hex(6)}{ASIDE}"
    lock = _flock(dest, wait=True)
    try:
        os.rename(dest, aside)
        try:
            os.rename(staging, dest)
        except BaseException:
            os.rename(aside, dest)
            raise
        _fsync_dir(dest.parent)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        _unlock(lock)


_renameat2_fn: object = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2``); False where that is not
    available (another OS, an old kernel or C library, a filesystem without it)."""
    global _renameat2_fn
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2_fn is None:
        try:
            _renameat2_fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2_fn = False
    if _renameat2_fn is False:
        return False
    fn = _renameat2_fn
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:  # type: ignore[operator]
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


__all__ = ["atomic_dir", "check_destination", "clean_leftovers"]

"""Read what an adapter directory holds, and nothing else.

In a directory the user names, only regular files inside it are ever read. Every entry is
opened relative to the directory's own descriptor with ``O_NOFOLLOW`` and checked with
``fstat`` to be a regular file, so a symbolic link (``README.md -> /etc/passwd``), a FIFO,
a socket or a device is never opened as adapter content, even if it appears between the
listing and the open. The rules:

* The top directory the user names may itself be a link (or sit under links): it is the
  user's own path, and it is followed once, when it is opened.
* Entries inside may not be links, whatever they point to: outside the directory, another
  file inside it, a directory. An entry that is part of the adapter and is not a regular
  file is refused by name; one that is not part of the adapter is skipped with a warning
  naming it. A subfolder (``--subfolder``, or one found holding the adapter) that is a
  link is refused.
* A hard link is a regular file: it cannot be told apart from any other name of the
  same file, and its bytes are what the directory holds. It is read like any file; where
  a later rewrite through its other name would matter, callers hash and use a private
  copy (the blob store's staging, ``ah.load_adapter``), never the file twice.

Also here: the scan for NaN and Inf values in safetensors tensors, streamed per tensor from
an mmap of the file (the header gives each tensor's place), never the whole file in memory.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from .errors import AdapterFormatError, CorruptFileError, IntegrityError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FD = os.open in os.supports_dir_fd and os.scandir in os.supports_fd
_LINK_HINT = ("replace the link with a copy of the file it points to (cp --remove-destination "
              "\"$(readlink -f NAME)\" NAME), or remove it")


class AdapterContentWarning(UserWarning):
    """Something in an adapter directory or its tensors the user should know about."""


class SkippedEntryWarning(AdapterContentWarning):
    """An entry that is not a regular file (a link, a FIFO, ...) was left out of a package."""


class NonFiniteWarning(AdapterContentWarning):
    """An adapter's tensors hold NaN or Inf values (pulled or imported, not refused)."""


class NotRegularFileError(AdapterFormatError):
    """An entry of an adapter directory that would be read is not a regular file."""

    hint = _LINK_HINT


class NonFiniteError(AdapterFormatError):
    """An adapter's tensors hold NaN or Inf values."""


def describe(st: os.stat_result, path: str | os.PathLike[str] | None = None, *, dir_fd: int | None = None) -> str:
    """What a non-regular entry is, in words ('a symbolic link to /etc/passwd', 'a FIFO')."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path, dir_fd=dir_fd) if path is not None else None
        except OSError:
            target = None
        return f"a symbolic link to {target!r}" if target is not None else "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def refusal_hint(display: str | os.PathLike[str], kind: str) -> str:
    """What to do about an entry that is ``kind`` (describe's words) where a file is read."""
    name = os.path.basename(os.fspath(display)) or os.fspath(display)
    if kind.startswith("a symbolic link"):
        return _LINK_HINT.replace("NAME", name)
    if kind == "a directory":
        return f"{name} must be a regular file: move the directory away and put the file there"
    special = "FIFO" if "FIFO" in kind else "socket" if "socket" in kind else "device"
    return (f"put the regular file itself at {name} (a {special} is never read as adapter content), "
            "or remove it")


def refuse(display: str | os.PathLike[str], kind: str, what: str = "adapter file") -> NoReturn:
    links = " and never follows links there" if kind.startswith("a symbolic link") else ""
    raise NotRegularFileError(
        f"{what} {os.fspath(display)} is {kind}; adapterhub reads only regular files inside the adapter "
        f"directory{links}", hint=refusal_hint(display, kind))


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None,
                 display: str | os.PathLike[str] | None = None, what: str = "adapter file") -> BinaryIO:
    """Open ``path`` (relative to ``dir_fd`` when given) for reading, without following a
    link in its last component, and only if it is a regular file (NotRegularFileError
    otherwise, naming ``display``). A FIFO is not waited on: it is opened non-blocking and
    refused."""
    shown = display if display is not None else path
    if not O_NOFOLLOW:  # no O_NOFOLLOW (Windows): check first; the fstat below still applies
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            refuse(shown, describe(st, path, dir_fd=dir_fd), what)
    flags = os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EOPNOTSUPP):
            try:
                found: os.stat_result | None = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                found = None
            if found is not None and not stat.S_ISREG(found.st_mode):
                refuse(shown, describe(found, path, dir_fd=dir_fd), what)
        if exc.errno == errno.EISDIR:
            refuse(shown, "a directory", what)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            refuse(shown, describe(st), what)
        if flags & getattr(os, "O_NONBLOCK", 0) and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Entry:
    name: str
    regular: bool
    directory: bool  # a real directory (not a link to one)
    kind: str  # in words, for messages: 'a regular file', 'a symbolic link to ...', 'a FIFO', ...


class DirReader:
    """An open directory: its entries (never following links) and its regular files."""

    def __init__(self, path: Path, *, display: Path | None = None, _fd: int | None = None):
        self.path = Path(path)
        self.display = display if display is not None else self.path
        if _fd is not None:
            self.fd: int | None = _fd
        elif _DIR_FD:
            # the user's own path: a link here (or above) is followed, once
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        else:
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DirReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, name: str) -> tuple[str, int | None]:
        return (name, self.fd) if self.fd is not None else (str(self.path / name), None)

    def entries(self) -> list[Entry]:
        out = []
        with os.scandir(self.fd if self.fd is not None else self.path) as it:
            for e in it:
                where, dir_fd = self._where(e.name)
                try:
                    st = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                regular = stat.S_ISREG(st.st_mode)
                out.append(Entry(e.name, regular, stat.S_ISDIR(st.st_mode),
                                 "a regular file" if regular else describe(st, where, dir_fd=dir_fd)))
        return sorted(out, key=lambda e: e.name)

    def entry(self, name: str) -> Entry | None:
        where, dir_fd = self._where(name)
        try:
            st = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        regular = stat.S_ISREG(st.st_mode)
        return Entry(name, regular, stat.S_ISDIR(st.st_mode),
                     "a regular file" if regular else describe(st, where, dir_fd=dir_fd))

    def open(self, name: str, what: str = "adapter file") -> BinaryIO:
        where, dir_fd = self._where(name)
        return open_regular(where, dir_fd=dir_fd, display=self.display / name, what=what)

    def subdir(self, name: str) -> DirReader:
        """The subfolder ``name``, which must be a real directory (a link is refused)."""
        where, dir_fd = self._where(name)
        shown = self.display / name
        if self.fd is None:
            st = os.stat(where, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                refuse(shown, describe(st, where), "adapter subfolder")
            return DirReader(Path(where), display=shown)
        try:
            fd = os.open(where, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                st = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
                refuse(shown, describe(st, where, dir_fd=dir_fd), "adapter subfolder")
            raise
        return DirReader(self.path / name, display=shown, _fd=fd)


def skipped(display: Path, kind: str) -> None:
    warnings.warn(f"skipped {display}: it is {kind}, not a regular file, and not part of the adapter",
                  SkippedEntryWarning, stacklevel=4)


def sha256_file(path: str | os.PathLike[str], bufsize: int = 1 << 20) -> tuple[str, int]:
    """(sha256 hex digest, size) of a file's bytes (a path the caller has checked)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def copy_and_hash(src: BinaryIO, dest: Path, bufsize: int = 1 << 20) -> tuple[str, int]:
    """Copy an open file (from its start) to a new file ``dest``; (sha256, size) of what was written."""
    h = hashlib.sha256()
    n = 0
    src.seek(0)
    with open(dest, "xb") as out:
        while chunk := src.read(bufsize):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------- NaN / Inf

# per dtype: the unsigned integer view and the bit mask whose bits are all set exactly in
# the NaN and Inf encodings (IEEE: the exponent; float8_e4m3fn has no Inf and one NaN,
# S.1111.111; e8m0's only NaN is 0xFF). Integer, bool and fp4 tensors have no such values.
_NONFINITE = {
    "F64": ("<u8", 0x7FF0000000000000),
    "F32": ("<u4", 0x7F800000),
    "C64": ("<u4", 0x7F800000),  # a complex64 is two float32s
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F8_E5M2": ("u1", 0x7C),
    "F8_E4M3": ("u1", 0x7F),
    "F8_E8M0": ("u1", 0xFF),
}
_CHUNK = 1 << 22  # elements per step: a few MB of temporaries however large the tensor


@dataclass(frozen=True)
class NonFinite:
    tensor: str
    count: int  # NaN and Inf values together
    dtype: str


def nonfinite_tensors(path: str | os.PathLike[str], *, display: str | os.PathLike[str] | None = None
                      ) -> list[NonFinite]:
    """The tensors of a safetensors file holding NaN or Inf values, in file order, with how
    many. Streams each tensor from an mmap of the file (nothing is loaded whole)."""
    return list(_scan(path, display))


_ITEMSIZE = {"F64": 8, "F32": 4, "C64": 4, "F16": 2, "BF16": 2, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1}
#: prefilter before numpy counts: None = only where numpy is not imported yet (it then never is,
#: for a clean file); numpy's count alone is ~1 ms faster per 17 MB once it is loaded
_PREFILTER: bool | None = None
_PREFILTER_STEP = 1 << 26  # bytes of a tensor looked at per strided slice


def _may_hold_nonfinite(mm: mmap.mmap, start: int, nbytes: int, dtype: str) -> bool:
    """Whether any element's most significant byte (little-endian: its last) has every bit of
    the NaN/Inf mask's top byte set. False proves the tensor finite without numpy (a strided
    slice and a memchr per candidate byte value); True only says numpy must count."""
    size = _ITEMSIZE[dtype]
    top = _NONFINITE[dtype][1] >> (8 * (size - 1))
    values = [bytes([v]) for v in range(256) if v & top == top]
    step = _PREFILTER_STEP - _PREFILTER_STEP % size
    for pos in range(start, start + nbytes, step):
        hi = mm[pos + size - 1:min(pos + step, start + nbytes):size]
        if any(v in hi for v in values):
            return True
    return False


def _scan(path: str | os.PathLike[str], display: str | os.PathLike[str] | None) -> Iterator[NonFinite]:
    from .safetensors_io import read_header

    header = read_header(path, display=display)
    todo = sorted((t for t in header.tensors.values() if t.dtype in _NONFINITE and t.nbytes),
                  key=lambda t: t.start)
    if not todo:
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:  # gone since its header was read
        raise CorruptFileError(f"{display or path}: cannot read ({exc.strerror or exc})") from exc
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if _PREFILTER if _PREFILTER is not None else "numpy" not in sys.modules:  # numpy loaded: it counts faster
            todo = [t for t in todo if _may_hold_nonfinite(mm, t.start, t.nbytes, t.dtype)]
            if not todo:  # the common case: numpy is never imported
                return
        import numpy as np

        for t in todo:
            view, mask = _NONFINITE[t.dtype]
            dt = np.dtype(view)
            values = np.frombuffer(mm, dtype=dt, count=t.nbytes // dt.itemsize, offset=t.start)
            m = dt.type(mask)
            count = 0
            for i in range(0, values.size, _CHUNK):
                part = values[i:i + _CHUNK]
                count += int(np.count_nonzero((part & m) == m))
            del values, part  # the mmap cannot close while numpy holds views of it
            if count:
                yield NonFinite(t.name, count, t.dtype)


def staged_copy_removed(sha256: str) -> IntegrityError:
    """The error for a publish whose private staged copy of a blob (a temp file in the blob
    store) was removed before it was stored: gc with no grace takes such files for leftovers."""
    return IntegrityError(f"the staged copy of blob sha256:{sha256[:12]} was removed while publishing "
                          "(by 'adapterhub gc --grace 0'?)",
                          hint="publish again; run gc with its default grace while others publish")


def nonfinite_message(file: str, found: list[NonFinite]) -> str:
    first = found[0]
    more = f" (and {len(found) - 1} more tensor{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
    return (f"{file}: tensor {first.tensor!r} holds {first.count:,} non-finite value"
            f"{'s' if first.count != 1 else ''} (NaN or Inf){more}")


nonfinite_tail = "; using it would make this adapter's outputs NaN"
nonfinite_hint = ("publish a fixed version (retrain or re-save the adapter); to load it anyway for debugging, "
                  "ah.load_adapter(model, pulled_dir, allow_nonfinite=True)")


def refuse_nonfinite(ref: str, tensors: Mapping[str, object], file: str = "adapter_model.safetensors") -> None:
    """NonFiniteError, naming the tensor, if any of ``tensors`` (torch tensors already in
    memory: the weights an attach is about to use) holds NaN or Inf values."""
    import torch

    found = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                found.append(NonFinite(name, bad, str(t.dtype).removeprefix("torch.")))
    if found:
        raise NonFiniteError(f"{ref}: " + nonfinite_message(file, found) + nonfinite_tail, hint=nonfinite_hint)


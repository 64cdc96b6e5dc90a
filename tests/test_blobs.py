"""The built-in blob store's staging path on real files: kernel copy, hash of the private
copy, background fsync, and the fallbacks for filesystems that refuse ``copy_file_range``
or ``mmap`` (simulated by making those calls fail, since every filesystem here supports
them)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from pathlib import Path

import pytest

from adapterhub_sdk import blobs as blobs_mod
from adapterhub_sdk.blobs import BlobStore
from adapterhub_sdk.errors import IntegrityError


@pytest.fixture
def source(tmp_path) -> Path:
    p = tmp_path / "src.bin"
    p.write_bytes(os.urandom(3 * blobs_mod.BUF + 12345))  # several chunks and a tail
    return p


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tmp_files(store: BlobStore) -> list[str]:
    t = store.root / "tmp"
    return sorted(p.name for p in t.iterdir()) if t.is_dir() else []


def check_stored(store: BlobStore, src: Path) -> None:
    d = digest(src)
    assert store.put_file(src, d) == src.stat().st_size
    assert store.path(d).read_bytes() == src.read_bytes()
    assert store.verify(d) is None
    assert not os.access(store.path(d), os.W_OK) or os.geteuid() == 0  # read-only (root ignores modes)
    assert store.path(d).stat().st_mode & 0o222 == 0
    assert tmp_files(store) == []
    assert store.put_file(src, d) == 0  # stored once


def test_stage_then_put_or_discard(tmp_path, source):
    store = BlobStore(tmp_path / "blobs")
    staged = store.stage(source)
    assert staged.sha256 == digest(source) and staged.size == source.stat().st_size
    source.write_bytes(b"changed after staging")  # the staged copy is what gets stored
    assert store.put_staged(staged) == staged.size
    assert hashlib.sha256(store.path(staged.sha256).read_bytes()).hexdigest() == staged.sha256
    again = store.stage(source)
    store.discard(again)
    assert tmp_files(store) == []
    assert not store.has(again.sha256)


def test_put_file_refuses_the_wrong_digest(tmp_path, source):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(IntegrityError, match="content changed"):
        store.put_file(source, "0" * 64)
    assert tmp_files(store) == []
    assert list(store.iter_digests()) == []


def test_empty_file(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    check_stored(store, empty)


@pytest.mark.parametrize("err", [errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_copy_falls_back_when_the_kernel_refuses(tmp_path, source, monkeypatch, err):
    def refuse(*_a, **_k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    check_stored(BlobStore(tmp_path / "blobs"), source)


def test_copy_falls_back_when_refused_half_way(tmp_path, source, monkeypatch):
    real = os.copy_file_range
    calls = []

    def half(src, dst, count, *a):
        calls.append(count)
        if len(calls) == 1:
            return real(src, dst, blobs_mod.BUF)
        raise OSError(errno.EIO, "device went away")

    monkeypatch.setattr(os, "copy_file_range", half)
    check_stored(BlobStore(tmp_path / "blobs"), source)
    assert len(calls) == 2


def test_short_kernel_copy_is_redone(tmp_path, source, monkeypatch):
    real = os.copy_file_range
    state = {"n": 0}

    def short(src, dst, count, *a):  # copies one chunk, then claims end of file
        state["n"] += 1
        return real(src, dst, blobs_mod.BUF) if state["n"] == 1 else 0

    monkeypatch.setattr(os, "copy_file_range", short)
    check_stored(BlobStore(tmp_path / "blobs"), source)


def test_no_space_is_not_papered_over(tmp_path, source, monkeypatch):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(OSError, match="No space"):
        store.put_file(source, digest(source))
    assert tmp_files(store) == []


def test_hash_falls_back_when_mmap_is_refused(tmp_path, source, monkeypatch):
    def refuse(*_a, **_k):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    check_stored(BlobStore(tmp_path / "blobs"), source)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file an fd is")
def test_fsync_failure_stores_nothing(tmp_path, source, monkeypatch):
    real = os.fsync

    def failing(fd):
        if Path(f"/proc/self/fd/{fd}").resolve().name.startswith("staged."):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(OSError, match="Input/output"):
        store.put_file(source, digest(source))
    assert tmp_files(store) == []
    assert list(store.iter_digests()) == []

"""The staging copy that hashes while the kernel copies (adapterhub_sdk/_copyhash.py): the
digest is always the sha256 of the bytes in the copy, whatever the size, and anything it
cannot do (a small file, a source that changes size) falls back to copy-then-hash."""

from __future__ import annotations

import hashlib
import os

import pytest

from adapterhub_sdk import _copyhash
from adapterhub_sdk.blobs import BlobStore, _copy_hashed

P = _copyhash.PIECE


@pytest.mark.parametrize("size", [0, 1, P - 1, P, 2 * P - 1, 2 * P, 2 * P + 1, 3 * P + 5, 5 * P + (1 << 20) + 3])
def test_the_copy_and_its_digest_match_the_source(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        n, digest = _copy_hashed(src, dst)
    finally:
        os.close(src)
        os.close(dst)
    assert n == size
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "dst").read_bytes() == data


def test_big_files_take_the_overlapped_path(tmp_path):
    data = os.urandom(3 * P + 7)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        assert _copyhash.copy_and_hash(src, dst) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        os.close(src)
        os.close(dst)


def test_a_source_that_grows_while_copied_falls_back(tmp_path, monkeypatch):
    data = os.urandom(2 * P + 11)
    (tmp_path / "src").write_bytes(data)
    real = os.copy_file_range
    calls = []

    def growing(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) == 1:
            with open(tmp_path / "src", "ab") as f:
                f.write(b"more")
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(_copyhash.os, "copy_file_range", growing)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        assert _copyhash.copy_and_hash(src, dst) is None  # the caller copies and hashes again
    finally:
        os.close(src)
        os.close(dst)


def test_a_staged_blob_is_what_was_hashed(tmp_path):
    data = os.urandom(2 * P + 123)
    (tmp_path / "f").write_bytes(data)
    store = BlobStore(tmp_path / "blobs")
    staged = store.stage(tmp_path / "f")
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.size == len(data)
    store.put_staged(staged)
    assert store.path(staged.sha256).read_bytes() == data

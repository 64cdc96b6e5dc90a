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
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


# --------------------------------------------------------------------------- hard links


def _rewritten(weights: bytes) -> bytes:
    """Valid safetensors bytes of the same tensors, every value changed."""
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save as save_bytes

    return save_bytes({k: v + 1.0 for k, v in load_bytes(weights).items()}, metadata={"format": "pt"})


def test_a_hard_linked_file_rewritten_after_the_check_does_not_change_what_load_adapter_loads(
        tmp_path, adapter, base_dir, monkeypatch):
    """A pulled weights file with a second name elsewhere (st_nlink 2) is rewritten through
    that name after ah.load_adapter has checked it, just before PEFT reads it: what is
    loaded is still the verified bytes (load_adapter loads a private copy it hashed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(adapter, name="acme/linked", version="1.0.0", base=base_dir)
    pulled = reg.pull("acme/linked@1.0.0", tmp_path / "pulled")
    reg.close()
    weights = pulled / WEIGHTS
    published = weights.read_bytes()
    (pulled / WEIGHTS).chmod(0o644)
    other = tmp_path / "other-name.safetensors"
    os.link(weights, other)
    assert os.stat(weights).st_nlink == 2

    real = PeftModel.from_pretrained.__func__

    def rewrite_then_load(cls, model, path, *args, **kw):
        with open(other, "wb") as f:  # the same inode: the pulled name sees it too
            f.write(_rewritten(published))
        return real(cls, model, path, *args, **kw)

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(rewrite_then_load))
    model = ah.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir).eval(), pulled)
    assert weights.read_bytes() != published  # the rewrite happened, through the other name
    expected = load_file(adapter / WEIGHTS)
    state = model.state_dict()
    for key, value in expected.items():
        loaded = state[key.replace(".weight", ".default.weight")]
        assert torch.equal(loaded, value), key  # the verified bytes, not the rewritten ones
    assert not any(p.name.startswith("adapterhub-load-") for p in Path(tempfile.gettempdir()).iterdir()
                   if p.stat().st_mtime >= os.stat(pulled).st_mtime)  # the private copy is gone

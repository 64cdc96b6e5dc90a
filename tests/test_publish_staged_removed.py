"""A publish whose staged copies (private temp files in the blob store, ``tmp/staged.*``) are
removed by ``adapterhub gc --grace 0`` before it has read them says so in one line, naming the
blob and the likely cause, instead of a raw ``[Errno 2] ... staged.xxx.incomplete`` or a
'cannot read' that blames the user's own file; nothing is recorded. The removal is the real
CLI gc, run at each point where a publish reads its staged copies."""

from __future__ import annotations

import pytest

import adapterhub_sdk as ah
import adapterhub_sdk.registry.publish as publishing
from adapterhub_sdk.errors import CorruptFileError, IntegrityError

from conftest import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::adapterhub_sdk.registry.UnpinnedPublishWarning")


def _gc_grace_0(reg: ah.Registry) -> None:
    staged = [p for p in (reg.blobs.root / "tmp").iterdir() if p.name.startswith("staged.")]
    assert staged
    run_cli("--registry", str(reg.engine.url), "--blobs", str(reg.blobs.root), "gc", "--grace", "0",
            check=True)
    assert not any(p.exists() for p in staged)


def _publish_fails_naming_the_staged_copy(reg: ah.Registry, lora_dir) -> None:
    with pytest.raises(IntegrityError) as info:
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
    text = str(info.value)
    assert "\n" not in text and "the staged copy of blob sha256:" in text, text
    assert "was removed while publishing (by 'adapterhub gc --grace 0'?)" in text, text
    assert "Errno" not in text and "cannot read" not in text and ".incomplete" not in text, text
    assert "run gc with its default grace" in info.value.hint
    assert reg.list() == []
    assert [p.name for p in (reg.blobs.root / "tmp").iterdir() if p.name.startswith("staged.")] == []


@pytest.mark.parametrize("when", ["after each file", "after the last file"])
def test_staged_copies_removed_while_packing(registry, lora_dir, monkeypatch, when):
    """gc runs while the package is being staged (config read next: it used to fail with
    '[Errno 2] No such file or directory: .../staged.*.incomplete') or once every file is
    staged, before the weights' header is read (it used to say 'adapter_model.safetensors:
    cannot read')."""
    real = registry.blobs.stage
    calls = []

    def stage_then_gc(source):
        staged = real(source)
        calls.append(staged)
        if when == "after each file" or len(calls) == 2:
            _gc_grace_0(registry)
        return staged

    monkeypatch.setattr(registry.blobs, "stage", stage_then_gc)
    _publish_fails_naming_the_staged_copy(registry, lora_dir)


def test_staged_copies_removed_before_the_weights_are_scanned(registry, lora_dir, monkeypatch):
    """gc runs once the package is made, before publish scans the weights for NaN/Inf (it used
    to say 'adapter_model.safetensors: cannot read (No such file or directory)')."""
    real = publishing.pack

    def pack_then_gc(*a, **kw):
        pkg = real(*a, **kw)
        _gc_grace_0(registry)
        return pkg

    monkeypatch.setattr(publishing, "pack", pack_then_gc)
    _publish_fails_naming_the_staged_copy(registry, lora_dir)


def test_staged_copies_removed_just_before_they_are_stored(registry, lora_dir, monkeypatch):
    """gc runs after every check, just before the staged copies are moved into the store
    (put_staged: the message it always gave, now from the rename itself, with no window
    between a check and the rename)."""
    real = registry._existing_digest

    def gc_then_look(*a, **kw):
        _gc_grace_0(registry)
        return real(*a, **kw)

    monkeypatch.setattr(registry, "_existing_digest", gc_then_look)
    _publish_fails_naming_the_staged_copy(registry, lora_dir)


def test_scan_of_a_file_that_vanished_is_one_line(tmp_path, lora_dir, monkeypatch):
    """nonfinite_tensors on a file removed after its header was read: the file named, one line
    (it was a raw FileNotFoundError)."""
    import shutil

    from adapterhub_sdk import adapter_files, safetensors_io

    copy = tmp_path / "w.safetensors"
    shutil.copy(lora_dir / "adapter_model.safetensors", copy)
    real = safetensors_io.read_header

    def header_then_remove(path, **kw):
        header = real(path, **kw)
        copy.unlink()
        return header

    monkeypatch.setattr(safetensors_io, "read_header", header_then_remove)
    with pytest.raises(CorruptFileError, match=r"mine\.safetensors: cannot read \(No such file or directory\)$"):
        adapter_files.nonfinite_tensors(copy, display=tmp_path / "mine.safetensors")

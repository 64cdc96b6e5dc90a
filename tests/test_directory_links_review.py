"""Links in an adapter directory where a pin or a signature is read (found by a security
review): a ``model.sig`` that is a link (to a bundle outside, to /etc/passwd) is refused,
never followed or read; an ``adapterhub_manifest.json`` that is a link is refused by a
server's directory attach, not dropped (which served the directory as unpinned).

Before: the signature link was followed and its target read (unbounded); the linked
manifest was ignored and the directory served as a plain PEFT directory."""

from __future__ import annotations

import os
import shutil

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.deploy_dir import attach_directory
from adapterhub_sdk.errors import AdapterHubError, IntegrityError
from adapterhub_sdk.loading import MANIFEST_FILE


@pytest.fixture
def pulled(tmp_path, base_dir, lora_dir):
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(lora_dir, name="acme/linked", version="1.0.0", base=base_dir)
    out = reg.pull("acme/linked@1.0.0", tmp_path / "pulled")
    yield reg, out
    reg.close()


def test_a_signature_link_is_refused_unread(pulled, tmp_path):
    reg, out = pulled
    outside = tmp_path / "outside.sig"
    outside.write_text("{}")
    for target in (outside, "/etc/passwd"):
        link = out / "model.sig"
        link.unlink(missing_ok=True)
        os.symlink(target, link)
        with pytest.raises(AdapterHubError, match="model.sig"):
            reg.directory_signatures(out)


def test_a_manifest_link_is_refused_by_a_directory_attach(pulled, tmp_path, base_dir):
    reg, out = pulled
    kept = tmp_path / "manifest-elsewhere.json"
    shutil.move(out / MANIFEST_FILE, kept)
    os.symlink(kept, out / MANIFEST_FILE)
    dep = ah.Deployment(str(base_dir), registry=reg)
    with pytest.raises(IntegrityError, match=f"{MANIFEST_FILE} is a link"):
        attach_directory(dep, out, name="linked")
    assert "linked" not in dep.adapters

"""The pin of a pulled directory is its adapterhub_manifest.json; where the registry holds
that version, the manifest must be the one it holds. A manifest edited after the pull to pin
other base weights (the files untouched, so every sha256 it lists still matches) is refused
by load_adapter, check_pulled and a deployment's directory attach (the server's), naming both digests, with the registry
given or as the default registry (ADAPTERHUB_REGISTRY_URL); an unedited pull still loads as
exact, and a directory whose version the registry does not hold is not blamed.

Before: the edited pin was taken at its word: load_adapter and attach on the other base
called the adapter exact (no StructuralMatchWarning, strict=True accepted it)."""

from __future__ import annotations

import json
import warnings

import pytest
from transformers import AutoModelForCausalLM

import adapterhub_sdk as ah
from adapterhub_sdk.deploy import StructuralMatchWarning
from adapterhub_sdk.deploy_dir import attach_directory
from adapterhub_sdk.errors import IntegrityError
from adapterhub_sdk.loading import MANIFEST_FILE, UnpinnedAdapterWarning, check_pulled
from adapterhub_sdk.manifest import Manifest


@pytest.fixture
def pulled(tmp_path, base_dir, base_other_weights, lora_dir):
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(lora_dir, name="acme/pinned", version="1.0.0", base=base_dir)
    out = reg.pull("acme/pinned@1.0.0", tmp_path / "pulled")
    yield reg, out
    reg.close()


def _repin(out, base_path, *, keep_digest: bool) -> None:
    """Rewrite the pulled manifest's pin to another base's fingerprint, as an edit would: its
    digest recomputed (``keep_digest``), or the digest field left out (a manifest without one
    is read)."""
    import dataclasses

    m = Manifest.from_json((out / MANIFEST_FILE).read_bytes())
    m = dataclasses.replace(m, base=dataclasses.replace(m.base, fingerprint=ah.fingerprint(base_path).digest))
    doc = m.to_dict()
    if not keep_digest:
        del doc["digest"]
    (out / MANIFEST_FILE).write_text(json.dumps(doc))


def test_an_unedited_pull_loads_exact(pulled, base_dir):
    reg, out = pulled
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ah.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), out, strict=True, registry=reg)
    assert not [w for w in seen if issubclass(w.category, (StructuralMatchWarning, UnpinnedAdapterWarning))]
    assert check_pulled(AutoModelForCausalLM.from_pretrained(base_dir), out, registry=reg) == "exact"


@pytest.mark.parametrize("keep_digest", [True, False], ids=["digest-recomputed", "digest-dropped"])
def test_a_pin_edited_after_the_pull_is_refused(pulled, base_other_weights, monkeypatch, keep_digest):
    reg, out = pulled
    _repin(out, base_other_weights, keep_digest=keep_digest)
    model = AutoModelForCausalLM.from_pretrained(base_other_weights)
    with pytest.raises(IntegrityError, match=r"is not the manifest acme/pinned@1\.0\.0 has in the registry"):
        ah.load_adapter(model, out, strict=True, registry=reg)
    with pytest.raises(IntegrityError, match="changed since it was pulled"):
        check_pulled(model, out, registry=reg)
    dep = ah.Deployment(str(base_other_weights), registry=reg)
    with pytest.raises(IntegrityError, match=r"is not the manifest acme/pinned@1\.0\.0"):
        attach_directory(dep, out, name="edited")  # what the server's POST /v1/adapters runs
    assert "edited" not in dep.adapters

    # the default registry (no registry= given) is the one consulted
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", reg.url)
    monkeypatch.setenv("ADAPTERHUB_BLOBS", str(reg.blobs.root))
    with pytest.raises(IntegrityError, match="changed since it was pulled"):
        ah.load_adapter(model, out, strict=True)


def test_a_version_the_registry_does_not_hold_is_not_blamed(pulled, base_dir, tmp_path):
    _, out = pulled
    elsewhere = ah.Registry.open(f"sqlite:///{tmp_path / 'elsewhere.db'}", blobs=tmp_path / "eblobs")
    try:
        assert check_pulled(AutoModelForCausalLM.from_pretrained(base_dir), out, registry=elsewhere) == "exact"
    finally:
        elsewhere.close()


def test_a_manifest_renamed_to_another_build_of_a_held_version_is_refused(pulled, base_other_weights):
    """Found by a security review: the edited manifest named 1.0.0+rebuilt where the registry
    holds 1.0.0; the lookup's build-metadata twin error was taken for 'not held here' and the
    forged pin was served as exact."""
    import dataclasses

    reg, out = pulled
    m = Manifest.from_json((out / MANIFEST_FILE).read_bytes())
    m = dataclasses.replace(m, version="1.0.0+rebuilt",
                            base=dataclasses.replace(m.base, fingerprint=ah.fingerprint(base_other_weights).digest))
    (out / MANIFEST_FILE).write_bytes(m.to_json())
    model = AutoModelForCausalLM.from_pretrained(base_other_weights)
    with pytest.raises(IntegrityError, match=r"names acme/pinned@1\.0\.0\+rebuilt, but the registry holds that "
                                             r"version as another build \(acme/pinned@1\.0\.0\)"):
        ah.load_adapter(model, out, strict=True, registry=reg)
    dep = ah.Deployment(str(base_other_weights), registry=reg)
    with pytest.raises(IntegrityError, match="another build"):
        attach_directory(dep, out, name="rebuilt")

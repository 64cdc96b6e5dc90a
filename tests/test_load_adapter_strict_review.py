"""ah.load_adapter and a directory that carries no base fingerprint (review: strict=True loaded
a plain PEFT directory, or a pulled one whose adapterhub_manifest.json was deleted, onto other
weights without a word, while a strict Deployment refuses the same directory).

Under strict=True such a directory is refused in one line (what is wrong, what to do), before
anything is put on the model, as ``Deployment(strict=True)`` refuses it; without strict it is
loaded exactly as PEFT loads it, with an UnpinnedAdapterWarning (adapterhub_sdk.loading)
saying nothing pins it to these weights (not a StructuralMatchWarning: no fingerprint was
compared, see test_load_adapter_pin.py::test_a_plain_peft_directory_has_no_pin). The same
holds for a version published without a base, pulled or loaded by spec.

Real PEFT adapters (conftest.save_lora), a real SQLite registry, real pulls."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk import loading
from adapterhub_sdk.errors import IncompatibleAdapterError
from adapterhub_sdk.loading import MANIFEST_FILE, check_pulled

IDS = torch.tensor([[1, 7, 3, 9, 4]])


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _peft_logits(base, adapter):
    from peft import PeftModel

    ref = PeftModel.from_pretrained(_model(base), str(adapter)).eval()
    with torch.no_grad():
        return ref(input_ids=IDS).logits


@pytest.fixture
def registry(tmp_path):
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    yield reg
    reg.close()


@pytest.fixture
def stripped(tmp_path, registry, base_dir, lora_dir):
    """A pulled directory whose adapterhub_manifest.json was deleted afterwards."""
    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    pulled = registry.pull("acme/a@1.0.0", tmp_path / "pulled")
    (pulled / MANIFEST_FILE).unlink()
    return pulled


def _assert_one_line_refusal(err, where):
    msg, hint = str(err.value), err.value.hint or ""
    assert msg.startswith(f"{where}: it carries no base fingerprint") and "(strict)" in msg
    assert "nothing pins it to these weights" in msg
    assert "\n" not in msg and "\n" not in hint
    assert "--base" in hint and "without strict=True" in hint  # what to do, both ways


@pytest.mark.parametrize("which", ["plain", "stripped"])
def test_strict_refuses_a_directory_without_a_base_fingerprint(which, lora_dir, stripped, base_dir,
                                                               base_other_weights):
    d = lora_dir if which == "plain" else stripped
    for base in (base_other_weights, base_dir):  # nothing pins it: refused whatever the weights
        model = _model(base)
        with pytest.raises(IncompatibleAdapterError) as err:
            ah.load_adapter(model, d, strict=True)
        _assert_one_line_refusal(err, str(d))
        assert not hasattr(model, "peft_config")  # refused before PEFT put anything on the model


def test_the_refusal_says_what_a_strict_deployment_says(stripped, base_other_weights, registry):
    from adapterhub_sdk.deploy_dir import attach_directory

    with pytest.raises(IncompatibleAdapterError) as loaded:
        ah.load_adapter(_model(base_other_weights), stripped, strict=True)
    dep = ah.Deployment(base_other_weights, registry=registry, strict=True)
    with pytest.raises(IncompatibleAdapterError) as attached:
        attach_directory(dep, stripped, name="a")
    assert loaded.value.reasons == ["it carries no base fingerprint (no adapterhub_manifest.json)"]
    assert attached.value.reasons[0].startswith(loaded.value.reasons[0])  # the same words for the same finding


@pytest.mark.parametrize("which", ["plain", "stripped"])
def test_without_strict_it_loads_as_peft_does_and_says_nothing_pins_it(which, lora_dir, stripped,
                                                                       base_other_weights):
    d = lora_dir if which == "plain" else stripped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ah.load_adapter(_model(base_other_weights), d)
    ours = [w for w in caught if issubclass(w.category, loading.UnpinnedAdapterWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert msg.startswith(f"{d}: it carries no base fingerprint") and "nothing pins it to these weights" in msg
    assert ours[0].filename == __file__  # pointed at the caller's line, not at the SDK
    assert not [w for w in caught if issubclass(w.category, ah.StructuralMatchWarning)]  # nothing was compared
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, _peft_logits(base_other_weights, d))


def test_a_version_published_without_a_base_is_refused_under_strict_and_warns_otherwise(
        tmp_path, registry, lora_dir, base_dir, base_other_weights, monkeypatch):
    with pytest.warns(ah.UnpinnedPublishWarning):
        registry.publish(lora_dir, name="acme/u", version="1.0.0")
    pulled = registry.pull("acme/u@1.0.0", tmp_path / "u")
    assert (pulled / MANIFEST_FILE).is_file()
    with pytest.raises(IncompatibleAdapterError) as err:
        ah.load_adapter(_model(base_dir), pulled, strict=True)
    _assert_one_line_refusal(err, "acme/u@1.0.0")
    assert err.value.reasons == ["it carries no base fingerprint (published without a base)"]
    monkeypatch.chdir(tmp_path)  # 'acme/u@1.0.0' is no directory here: a spec, pulled privately
    with pytest.raises(IncompatibleAdapterError, match=r"^acme/u@1\.0\.0: it carries no base fingerprint"):
        ah.load_adapter(_model(base_dir), "acme/u@1.0.0", registry=registry, strict=True)
    with pytest.raises(IncompatibleAdapterError):  # a strict Deployment refuses it too
        ah.Deployment(base_dir, registry=registry, strict=True).attach("acme/u@1.0.0")

    with pytest.warns(loading.UnpinnedAdapterWarning, match=r"^acme/u@1\.0\.0: it carries no base fingerprint"):
        model = ah.load_adapter(_model(base_other_weights), pulled)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, _peft_logits(base_other_weights, lora_dir))


def test_check_pulled_under_strict_refuses_a_directory_without_a_pin(tmp_path, registry, lora_dir, stripped,
                                                                     base_dir, base_other_weights):
    with pytest.raises(IncompatibleAdapterError, match="no base fingerprint"):
        check_pulled(_model(base_dir), stripped, strict=True)
    with pytest.warns(loading.UnpinnedAdapterWarning) as caught:
        assert check_pulled(_model(base_dir), stripped) is None
    assert caught[0].filename == __file__
    pinned = registry.pull("acme/a@1.0.0", tmp_path / "again")
    with pytest.warns(ah.StructuralMatchWarning) as caught:  # and its other warning points here too
        assert check_pulled(_model(base_other_weights), pinned) == "structural"
    assert caught[0].filename == __file__


def test_a_pinned_directory_keeps_its_verdicts_with_no_unpinned_warning(tmp_path, registry, lora_dir, base_dir,
                                                                         base_other_weights):
    registry.publish(lora_dir, name="acme/p", version="1.0.0", base=base_dir)
    pulled = registry.pull("acme/p@1.0.0", tmp_path / "p")
    keep = tmp_path / "keep"
    shutil.copytree(pulled, keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error", loading.UnpinnedAdapterWarning)
        warnings.simplefilter("error", ah.StructuralMatchWarning)
        model = ah.load_adapter(_model(base_dir), keep, strict=True)  # exact: loads under strict
        with pytest.raises(IncompatibleAdapterError, match="other base weights"):
            ah.load_adapter(_model(base_other_weights), keep, strict=True)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, _peft_logits(base_dir, lora_dir))

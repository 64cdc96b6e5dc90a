"""ah.load_adapter (the documented way to run methods a Deployment does not serve) keeps the
pin: a pulled directory's files are checked against its manifest and the model against the
pinned base fingerprint before PEFT loads anything (issue 8: no path bypasses the pin)."""

from __future__ import annotations

import warnings

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError, IntegrityError

from conftest import save_lora


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture
def registry(tmp_path):  # the check is the same whatever database the version came from
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    yield reg
    reg.close()


@pytest.fixture
def pulled(tmp_path, registry, base_dir, lora_dir):
    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    return registry.pull("acme/a@1.0.0", tmp_path / "pulled")


IDS = torch.tensor([[1, 7, 3, 9, 4]])


def test_exact_base_loads_without_warning_and_equals_peft(pulled, base_dir, lora_dir):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.StructuralMatchWarning)
        model = ah.load_adapter(_model(base_dir), pulled)
    ref = PeftModel.from_pretrained(_model(base_dir), lora_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, ref(input_ids=IDS).logits)


def test_other_weights_warn_and_strict_refuses(pulled, base_other_weights):
    with pytest.warns(ah.StructuralMatchWarning, match="differ"):
        ah.load_adapter(_model(base_other_weights), pulled)
    with pytest.raises(IncompatibleAdapterError, match="other base weights"):
        ah.load_adapter(_model(base_other_weights), pulled, strict=True)


def test_other_shape_is_refused_before_peft_loads(pulled, base_other_shape):
    with pytest.raises(IncompatibleAdapterError, match="does not fit"):
        ah.load_adapter(_model(base_other_shape), pulled)


def test_a_changed_file_is_refused(pulled, base_dir):
    target = pulled / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        ah.load_adapter(_model(base_dir), pulled)


def test_second_adapter_on_a_peft_model_is_checked_against_its_base(tmp_path, registry, pulled, base_dir,
                                                                    base_other_weights):
    other = save_lora(base_dir, tmp_path / "b", seed=5, targets=("k_proj",))
    registry.publish(other, name="acme/b", version="1.0.0", base=base_dir)
    second = registry.pull("acme/b@1.0.0", tmp_path / "b_pulled")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.StructuralMatchWarning)
        model = ah.load_adapter(_model(base_dir), pulled)
        model = ah.load_adapter(model, second, adapter_name="b")  # base under the tuner layers: exact
    assert set(model.peft_config) == {"default", "b"}
    with pytest.warns(ah.StructuralMatchWarning):
        peft_other = ah.load_adapter(_model(base_other_weights), tmp_path / "pulled")
    with pytest.warns(ah.StructuralMatchWarning):
        ah.load_adapter(peft_other, second, adapter_name="b")


def test_a_plain_peft_directory_has_no_pin(lora_dir, base_other_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.StructuralMatchWarning)
        ah.load_adapter(_model(base_other_weights), lora_dir)

"""ah.load_adapter refuses what a Deployment refuses, in one line (review of issues 8 and 10):
weights holding NaN or Inf (the same NonFiniteError as ``Deployment.attach``, with
``allow_nonfinite=True`` to load them for debugging), and a registry spec given where a
directory is expected (it says how to get one).

Real PEFT adapters (conftest.save_lora), a real SQLite registry, real pulls."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub_sdk as ah
from adapterhub_sdk.adapter_files import NonFiniteError, NonFiniteWarning

WEIGHTS = "adapter_model.safetensors"


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture
def registry(tmp_path):
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    yield reg
    reg.close()


def poison(adapter) -> str:
    tensors = load_file(adapter / WEIGHTS)
    name = sorted(n for n in tensors if "lora_B" in n)[0]
    t = tensors[name].clone()
    t.view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    tensors[name] = t
    save_file(tensors, adapter / WEIGHTS, metadata={"format": "pt"})
    return name


@pytest.fixture
def nan_adapter(tmp_path, lora_dir):
    d = tmp_path / "nan"
    shutil.copytree(lora_dir, d)
    return d, poison(d)


def test_a_pulled_directory_with_nonfinite_weights_is_refused_as_attach_refuses(
        tmp_path, registry, base_dir, nan_adapter):
    adapter, tensor = nan_adapter
    registry.publish(adapter, name="acme/nan", version="1.0.0", base=base_dir, allow_nonfinite=True)
    with pytest.warns(NonFiniteWarning):
        pulled = registry.pull("acme/nan@1.0.0", tmp_path / "pulled")
    with pytest.raises(NonFiniteError) as attach_err:
        ah.Deployment(base_dir, registry=registry).attach("acme/nan@1.0.0")
    model = _model(base_dir)
    with pytest.raises(NonFiniteError) as err:
        ah.load_adapter(model, pulled)
    msg = str(err.value)
    assert msg.startswith(f"acme/nan@1.0.0: {WEIGHTS}: tensor {tensor!r} holds 2 non-finite values (NaN or Inf)")
    assert "\n" not in msg and "allow_nonfinite=True" in (err.value.hint or "")
    assert msg.split(";")[0] == str(attach_err.value).split(";")[0]  # the same finding, the same words
    assert "allow_nonfinite=True" in (attach_err.value.hint or "")  # attach's hint names the escape
    assert not hasattr(model, "peft_config")  # nothing was put on the model

    # the escape: loaded as PEFT loads it, with a warning naming the tensor
    with pytest.warns(NonFiniteWarning, match=f"tensor {tensor!r} holds 2"):
        loaded = ah.load_adapter(_model(base_dir), pulled, allow_nonfinite=True)
    assert set(loaded.peft_config) == {"default"}


def test_a_plain_peft_directory_with_nonfinite_weights_is_refused_too(base_dir, nan_adapter, lora_dir):
    adapter, tensor = nan_adapter
    with pytest.raises(NonFiniteError, match=rf"{adapter}: {WEIGHTS}: tensor {tensor!r}"):
        ah.load_adapter(_model(base_dir), adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        ah.load_adapter(_model(base_dir), lora_dir)  # clean weights: no warning

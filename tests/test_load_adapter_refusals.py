"""ah.load_adapter refuses what a Deployment refuses, in one line (review of issues 8 and 10):
weights holding NaN or Inf (the same NonFiniteError as ``Deployment.attach``, with
``allow_nonfinite=True`` to load them for debugging), and a registry spec given where a
directory is expected (it says how to get one).

Real PEFT adapters (conftest.save_lora), a real SQLite registry, real pulls."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

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


# --------------------------------------------------------------------------- a spec, not a directory

IDS = torch.tensor([[1, 7, 3, 9, 4]])


def test_a_registry_spec_is_pulled_privately_and_loaded_as_a_pulled_directory(
        tmp_path, registry, base_dir, lora_dir, base_other_weights, monkeypatch):
    """``ah.load_adapter(model, "acme/a@^1", registry=reg)``: verified, pin-checked and
    loaded exactly as the pulled directory would be; the default registry serves a spec
    without ``registry=``; nothing is left on disk."""
    import tempfile

    from adapterhub_sdk.home import home_dir

    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    pulled = registry.pull("acme/a@1.0.0", tmp_path / "pulled")
    monkeypatch.chdir(tmp_path)  # 'acme/a@^1' is no directory here
    before = set(Path(tempfile.gettempdir()).iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.StructuralMatchWarning)
        from_spec = ah.load_adapter(_model(base_dir), "acme/a@^1", registry=registry)
    from_dir = ah.load_adapter(_model(base_dir), pulled)
    with torch.no_grad():
        assert torch.equal(from_spec(input_ids=IDS).logits, from_dir(input_ids=IDS).logits)
    assert not {p for p in set(Path(tempfile.gettempdir()).iterdir()) - before if "adapterhub" in p.name}

    default = ah.Registry.open()  # the default registry of this test's home
    default.publish(lora_dir, name="acme/home", version="2.0.0", base=base_dir)
    default.close()
    assert (home_dir() / "registry.db").is_file()
    model = ah.load_adapter(_model(base_dir), "acme/home@2.0.0")
    assert set(model.peft_config) == {"default"}
    with pytest.raises(ah.IncompatibleAdapterError, match="acme/a@1.0.0 was trained on other base weights"):
        ah.load_adapter(_model(base_other_weights), "acme/a@1.0.0", registry=registry, strict=True)


def test_what_is_neither_a_directory_nor_a_spec_here_is_one_line_saying_how_to_get_one(
        tmp_path, registry, base_dir, lora_dir, monkeypatch):
    from adapterhub_sdk.errors import AdapterFormatError, NotFoundError

    monkeypatch.chdir(tmp_path)
    model = _model(base_dir)
    # a spec, and no registry here at all: how to get a directory
    with pytest.raises(AdapterFormatError) as err:
        ah.load_adapter(model, "acme/sentiment@1.0.0")
    msg, hint = str(err.value), err.value.hint or ""
    assert "acme/sentiment@1.0.0 is not a directory" in msg and "no registry" in msg and "\n" not in msg
    assert "adapterhub pull acme/sentiment@1.0.0 --out DIR" in hint and "Registry.pull" in hint
    # a spec the registry does not hold
    registry.publish(lora_dir, name="acme/sentiment", version="1.0.0", base=base_dir)
    with pytest.raises(NotFoundError) as err:
        ah.load_adapter(model, "acme/sentimnt@1.0.0", registry=registry)
    assert "acme/sentimnt@1.0.0 is not a directory" in str(err.value) and "\n" not in str(err.value)
    assert "acme/sentiment" in (err.value.hint or "")  # the registry's did-you-mean
    # a file, a missing path, a Hub URL: each says it takes a directory and how to get one
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    for given in (tmp_path / "weights.safetensors", tmp_path / "missing", "./missing", "hf://acme/repo"):
        with pytest.raises(AdapterFormatError) as err:
            ah.load_adapter(model, given, registry=registry)
        msg, hint = str(err.value), err.value.hint or ""
        assert f"{given} is not a directory" in msg and "\n" not in msg, msg
        assert "adapterhub pull" in hint and "--out DIR" in hint, hint
    assert not hasattr(model, "peft_config")


def test_a_plain_peft_directory_with_pickled_weights_is_refused_never_unpickled(base_dir, lora_dir, tmp_path):
    """PEFT saved with ``safe_serialization=False`` (adapter_model.bin): PEFT would
    ``torch.load`` it; load_adapter refuses it in one line with the conversion hint, before PEFT
    sees the directory (before: it loaded, through the unpickler)."""
    from peft import PeftModel

    from adapterhub_sdk.errors import UnsafeFormatError

    d = tmp_path / "bin"
    PeftModel.from_pretrained(_model(base_dir), lora_dir).save_pretrained(d, safe_serialization=False)
    assert (d / "adapter_model.bin").is_file() and not (d / WEIGHTS).exists()
    with pytest.raises(UnsafeFormatError, match="adapter_model.bin.*pickle") as err:
        ah.load_adapter(_model(base_dir), d)
    assert "safetensors" in (err.value.hint or "")


def test_the_hint_for_a_changed_pulled_file_names_an_option_pull_has(registry, base_dir, lora_dir, tmp_path):
    """A pulled file changed after the pull: the hint's command runs as written (it said
    --overwrite, which pull does not have)."""
    import subprocess
    import sys

    from adapterhub_sdk.errors import IntegrityError

    registry.publish(lora_dir, name="acme/p", version="1.0.0", base=base_dir)
    out = tmp_path / "pulled"
    registry.pull("acme/p@1.0.0", out)
    data = bytearray((out / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (out / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        ah.load_adapter(_model(base_dir), out)
    hint = err.value.hint or ""
    assert hint.startswith("pull it again: adapterhub pull acme/p@1.0.0 --out "), hint
    cmd = hint.removeprefix("pull it again: ").split()
    env = {"ADAPTERHUB_REGISTRY_URL": f"sqlite:///{tmp_path / 'r.db'}", "ADAPTERHUB_BLOBS": str(tmp_path / "blobs")}
    import os

    r = subprocess.run([sys.executable, "-m", "adapterhub_sdk", *cmd[1:]], capture_output=True, text=True,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    ah.load_adapter(_model(base_dir), out)  # whole again

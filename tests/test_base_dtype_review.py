"""A deployment's base is checked against its checkpoint whatever dtype is asked for.

The defect: a base directory holding its own files plus a stray adapter_config.json and
adapter_model.safetensors (as many Hub repos ship) fingerprints as the base, but
from_pretrained also applies that adapter. Without a dtype the loaded-model check caught
it; with ``dtype=`` (even the stored one) it was skipped, a strict deployment attached the
pinned adapter as exact (0.89 logits off PEFT on the pinned base) and said the model "was
cast" though nothing was. Now the loaded model must be the checkpoint's tensors cast to
the dtype asked for, and a directory with adapter files is flagged before it loads.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk import base_loading
from adapterhub_sdk.base_loading import LoadedBaseWarning
from adapterhub_sdk.errors import UnsafeFormatError

from conftest import save_base, save_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DTYPES = [None, "float32", "bfloat16"]  # none, the stored one, a real cast
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dtype_review")
    base = save_base(root / "base", seed=0)
    stray = save_lora(base, root / "stray", seed=5, targets=("q_proj", "v_proj"))
    with_adapter = shutil.copytree(base, root / "with_adapter")
    for name in ADAPTER_FILES:
        shutil.copy(stray / name, with_adapter / name)
    mine = save_lora(base, root / "mine", seed=1, targets=("o_proj",))
    missing = shutil.copytree(base, root / "missing")  # transformers initialises the tensor the file lacks
    from safetensors.torch import load_file, save_file

    sd = load_file(missing / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(missing / "model.safetensors"), metadata={"format": "pt"})
    return {"root": root, "base": base, "with_adapter": with_adapter, "mine": mine, "missing": missing}


@pytest.fixture
def registry(world, reg):
    reg.publish(str(world["mine"]), name="acme/mine", version="1.0.0", base=str(world["base"]))
    return reg


def ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 20, 33, 7], [3, 2, 60, 11, 0, 42]])


def peft_logits(base: Path, adapter: Path | None, dtype: Any) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype) if dtype else torch.float32)
    ref = (model if adapter is None else PeftModel.from_pretrained(model, adapter)).eval()
    with torch.no_grad():
        return ref(input_ids=ids()).logits.float()


def ours(dep: Any, name: str | None) -> torch.Tensor:
    return dep.forward(ids(), [name] * len(ids())).float()


def adapterhub_warnings(caught: list[Any]) -> list[str]:
    return [str(w.message) for w in caught if w.category.__module__.startswith("adapterhub_sdk")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_strict_refuses_a_base_directory_holding_adapter_files(world, registry, dtype):
    with pytest.raises(base_loading.LoadedBaseError) as info:
        ah.Deployment(str(world["with_adapter"]), registry=registry, strict=True, dtype=dtype)
    message = str(info.value)
    assert "holds adapter files (adapter_config.json, adapter_model.safetensors)" in message
    assert "from_pretrained applies that adapter" in message and "\n" not in message
    assert "the base's own directory, without the adapter files" in info.value.hint


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_strict_the_applied_adapter_is_told_and_the_pinned_adapter_is_not_exact(world, registry, dtype):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dep = ah.Deployment(str(world["with_adapter"]), registry=registry, dtype=dtype)
    told = adapterhub_warnings(caught)
    assert any("holds adapter files" in m for m in told), told
    assert any("differs from its checkpoint" in m and "not in the checkpoint" in m for m in told), told
    base = dep.describe()["base"]
    assert base["fingerprint"] == base["loaded"]["fingerprint"] != base["checkpoint"]["fingerprint"]
    assert base["loaded"]["cast"] is False and "cast to" not in base["fingerprint_of"]
    assert base["fingerprint_of"].startswith("the model as loaded")
    with pytest.warns(ah.StructuralMatchWarning):
        assert dep.attach("acme/mine").verdict == "structural"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_transformers_changed_at_a_requested_dtype_is_caught(world, registry, dtype):
    """No adapter files: a tensor the file lacks, initialised by from_pretrained. With a
    dtype asked for this was not looked at (the pinned adapter attached as exact)."""
    with pytest.raises(base_loading.LoadedBaseError, match=f"differs from its checkpoint cast to {dtype}.*not in the checkpoint "
                                              r"\(added or initialised while loading\): model.layers.1.mlp.up_proj"):
        ah.Deployment(str(world["missing"]), registry=registry, strict=True, dtype=dtype)
    with pytest.warns(LoadedBaseWarning, match="differs from its checkpoint"):
        dep = ah.Deployment(str(world["missing"]), registry=registry, dtype=dtype)
    assert dep.describe()["base"]["loaded"]["cast"] is False
    with pytest.raises(ah.WeightsNotFoundError, match="lacks 1 tensor"):  # no pin to files that do not load as stored
        registry.publish(str(world["mine"]), name="acme/on-missing", version="1.0.0", base=str(world["missing"]))


def test_a_clean_base_cast_to_bfloat16_is_exact_and_equals_peft_on_the_same_cast(world, registry):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dep = ah.Deployment(str(world["base"]), registry=registry, strict=True, dtype="bfloat16")
        assert dep.attach("acme/mine").verdict == "exact"
    assert not adapterhub_warnings(caught)
    base = dep.describe()["base"]
    assert base["fingerprint"] == base["checkpoint"]["fingerprint"] == ah.fingerprint(world["base"]).digest
    assert base["loaded"]["cast"] is True and "cast to bfloat16" in base["fingerprint_of"]
    for name, adapter in (("acme/mine", world["mine"]), (None, None)):
        want = peft_logits(world["base"], adapter, "bfloat16")
        tol = 2.0 ** -7 * float(want.abs().max()) / 4  # a quarter of one bfloat16 step
        assert (ours(dep, name) - want).abs().max().item() <= tol, name


def test_the_stored_dtype_asked_for_is_no_cast(world, registry):
    dep = ah.Deployment(str(world["base"]), registry=registry, strict=True, dtype="float32")
    base = dep.describe()["base"]
    assert base["loaded"]["requested_dtype"] == "float32" and base["loaded"]["cast"] is False
    assert base["fingerprint_of"].startswith("the checkpoint, as loaded (no cast)")
    assert dep.attach("acme/mine").verdict == "exact"
    assert (ours(dep, "acme/mine") - peft_logits(world["base"], world["mine"], None)).abs().max().item() < 1e-5


def test_pickled_adapter_weights_beside_a_base_are_never_loaded(world, tmp_path):
    """adapter_config.json with only adapter_model.bin: from_pretrained would unpickle it."""
    from safetensors.torch import load_file

    d = shutil.copytree(world["with_adapter"], tmp_path / "pickled")
    torch.save(load_file(d / "adapter_model.safetensors"), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(UnsafeFormatError, match="would unpickle the adapter weights"):
        ah.Deployment(str(d))
    with pytest.raises(base_loading.LoadedBaseError, match="holds adapter files"):
        ah.Deployment(str(d), strict=True)

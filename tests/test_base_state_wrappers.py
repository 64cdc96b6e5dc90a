"""The pin of an adapter loaded onto a PeftModel is checked against the bare base's weights
whatever PEFT wrappers the adapters already loaded put on the model.

After a ``trainable_token_indices`` adapter, the base's embedding sat under PEFT's
TrainableTokensWrapper (``token_adapter.base_layer``), which the fingerprint of the model's
base weights (adapterhub_sdk.loading._base_state) did not unwrap: it named the embedding
``model.embed_tokens.token_adapter.weight`` and dropped ``model.embed_tokens.weight``, so a
second adapter pinned to the same base was refused under strict ("trained on other base
weights") and warned StructuralMatchWarning without.

Real PEFT adapters saved by PEFT, a real SQLite registry, real pulls."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.deploy import StructuralMatchWarning
from adapterhub_sdk.loading import UnpinnedAdapterWarning, _base_state, check_pulled

from conftest import save_base

IDS = torch.tensor([[1, 3, 7, 5, 9, 4]])


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _logits(model, adapter: str | None = None):
    if adapter is not None:
        model.set_adapter(adapter)
    with torch.no_grad():
        return model(input_ids=IDS).logits


@contextlib.contextmanager
def _no_pin_warnings():
    """A StructuralMatchWarning or UnpinnedAdapterWarning is an error inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructuralMatchWarning)
        warnings.simplefilter("error", UnpinnedAdapterWarning)
        yield


def _save_adapter(base: Path, out: Path, seed: int, **config) -> Path:
    """A real PEFT LoRA adapter, every trained tensor perturbed (LoRA and trainable tokens)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(base), LoraConfig(r=4, lora_alpha=8, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "trainable_tokens_delta" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(out)
    return out


TTI = {"target_modules": ["q_proj", "v_proj"], "trainable_token_indices": [3, 5, 7]}
KINDS = {
    "lora": {"target_modules": ["q_proj", "v_proj"]},
    "modules_to_save": {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    "trainable_tokens": TTI,
    "trainable_tokens_dict": {"target_modules": ["k_proj"], "trainable_token_indices": {"embed_tokens": [2, 4]}},
}


@pytest.fixture(scope="module", params=["untied", "tied"])
def base(request, tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("b") / request.param, seed=3, tie=request.param == "tied")


@pytest.mark.parametrize("kinds", [("lora",), ("modules_to_save",), ("trainable_tokens",),
                                   ("trainable_tokens", "trainable_tokens_dict"),
                                   ("modules_to_save", "trainable_tokens")])
def test_the_base_state_under_peft_wrappers_is_the_bare_base(kinds, base, tmp_path):
    from peft import PeftModel

    model = None
    for i, kind in enumerate(kinds):
        d = _save_adapter(base, tmp_path / kind, seed=i, **KINDS[kind])
        if model is None:
            model = PeftModel.from_pretrained(_model(base), str(d))
        else:
            model.load_adapter(str(d), adapter_name=kind)
    assert ah.fingerprint(_base_state(model), progress=False).digest == ah.fingerprint(base).digest


def test_a_second_pinned_adapter_after_trainable_tokens_is_exact(base, tmp_path):
    """Load a trainable_token_indices adapter, then a second one pinned to the same base under
    strict=True: accepted without a warning; both give PEFT's output loading both."""
    from peft import PeftModel

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        one = _save_adapter(base, tmp_path / "one", seed=1, **TTI)
        two = _save_adapter(base, tmp_path / "two", seed=2, **TTI)
        pulled = {}
        for name, d in (("one", one), ("two", two)):
            reg.publish(d, name=f"acme/{name}", version="1.0.0", base=base)
            pulled[name] = reg.pull(f"acme/{name}@1.0.0", tmp_path / f"pulled-{name}")
        with _no_pin_warnings():  # no StructuralMatchWarning, strict or not
            got = ah.load_adapter(_model(base), pulled["one"], strict=True, registry=reg)
            got = ah.load_adapter(got, pulled["two"], adapter_name="second", strict=True, registry=reg)
            assert check_pulled(got, pulled["two"], strict=True) == "exact"
            ah.load_adapter(got, pulled["two"], adapter_name="third", registry=reg)
    finally:
        reg.close()
    want = PeftModel.from_pretrained(_model(base), str(one)).eval()
    want.load_adapter(str(two), adapter_name="second")
    got.eval()
    assert torch.equal(_logits(got, "second"), _logits(want, "second"))
    assert torch.equal(_logits(got, "default"), _logits(want, "default"))
    assert not torch.equal(_logits(want, "second"), _logits(want, "default"))

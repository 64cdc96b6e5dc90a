"""LoRA on ``lm_head`` (an nn.Linear): PEFT saves the layer's base weights beside its LoRA
(``lm_head.base_layer.weight``, save_embedding_layers) and from_pretrained loads them there.
Where that copy is this base's own weights, a Deployment serves the adapter (as
``resolve --runtime transformers`` says it will) and each row of a mixed batch is PEFT's
logits for that row's adapter, on an untied and on a tied base; where the copy differs,
attach refuses it saying why.

Before: attach refused every such adapter ('tensor ...lm_head.base_layer.weight is not a
LoRA weight or a modules_to_save copy this runtime can serve') while resolve called it exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError

from conftest import run_cli, save_perturbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _base(out: Path, tied: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=tied)).eval().save_pretrained(out)
    return out


def _adapter(base: Path, out: Path, seed: int, targets: list[str]) -> Path:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    return save_perturbed(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, lora_alpha=8, target_modules=targets), out, seed=seed)


def _peft(base: Path, adapter: Path | None, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model = (model if adapter is None else PeftModel.from_pretrained(model, str(adapter))).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lm_head_lora_is_served_as_peft_computes_it(tmp_path, tied):
    base = _base(tmp_path / "base", tied)
    dirs = {"head": _adapter(base, tmp_path / "head", 7, ["q_proj", "lm_head"]),
            "plain": _adapter(base, tmp_path / "plain", 8, ["v_proj"])}
    assert "base_model.model.lm_head.base_layer.weight" in load_file(str(dirs["head"] / "adapter_model.safetensors"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ah.Registry.open(url, blobs=tmp_path / "blobs") as reg:
        for k, path in dirs.items():
            reg.publish(path, name=f"acme/{k}", version="1.0.0", base=base)
        r = run_cli("--registry", url, "--blobs", str(tmp_path / "blobs"), "resolve", "--base", str(base),
                    "--runtime", "transformers", "--json", check=True)
        assert "acme/head" in r.stdout and '"exact"' in r.stdout
        dep = ah.Deployment(str(base), registry=reg)
        for k in dirs:
            dep.attach(f"acme/{k}@1.0.0", name=k)
        rows = ["head", None, "plain", "head"]
        ids = torch.randint(0, 128, (len(rows), 7), generator=torch.Generator().manual_seed(3))
        got = dep.forward(ids, rows)
        for i, kind in enumerate(rows):
            want = _peft(base, dirs.get(kind) if kind else None, ids[i:i + 1])
            assert torch.allclose(got[i:i + 1], want, atol=1e-5, rtol=0), (i, kind)
        assert not torch.allclose(_peft(base, dirs["head"], ids[:1]), _peft(base, None, ids[:1]))


def test_a_copy_of_other_base_weights_is_refused(tmp_path):
    base = _base(tmp_path / "base", False)
    src = _adapter(base, tmp_path / "head", 7, ["lm_head"])
    weights = load_file(str(src / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.base_layer.weight"] = weights["base_model.model.lm_head.base_layer.weight"] + 1
    save_file(weights, str(src / "adapter_model.safetensors"))
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs") as reg:
        reg.publish(src, name="acme/head", version="1.0.0")  # unpinned: its copy is not this base's
        dep = ah.Deployment(str(base), registry=reg)
        with pytest.raises(IncompatibleAdapterError, match=r"lm_head: the adapter's saved copy of the layer's base "
                                                           r"weights differs from this base's"):
            dep.attach("acme/head@1.0.0", name="h")

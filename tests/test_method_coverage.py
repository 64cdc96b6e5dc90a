"""Every method that wraps the modules its config's ``target_modules`` selects (LoHa, LoKr,
OFT, BOFT, VeRA, IA3, as LoRA already did) is refused at publish on a base with modules it
selects but has no weights for: trained on 2 layers, pinned to a 3-layer base of the same
widths. PEFT would put a freshly initialised layer on layer 2 (two loads differ where the
init is not a no-op), so that base is no exact pin. On its own base each publishes pinned.

Before: only LoRA and AdaLoRA checked coverage; the others were pinned to the 3-layer base
and load_adapter(strict=True) loaded them there as exact. Found by a review helper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah

from conftest import save_perturbed


def _base(out: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    return out


def _configs() -> dict:
    from peft import BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, OFTConfig, VeraConfig

    qv = ["q_proj", "v_proj"]
    return {
        "loha": LoHaConfig(r=4, alpha=8, target_modules=qv),
        "lokr": LoKrConfig(r=4, alpha=8, target_modules=qv),
        "oft": OFTConfig(r=0, oft_block_size=16, target_modules=qv),
        "boft": BOFTConfig(boft_block_size=16, target_modules=qv),
        "vera": VeraConfig(r=4, target_modules=["q_proj", "o_proj"]),
        "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("coverage")
    return _base(d / "two", 2), _base(d / "three", 3)


@pytest.mark.parametrize("method", list(_configs()))
def test_a_base_with_selected_modules_the_adapter_lacks_is_no_pin(method, bases, tmp_path):
    from transformers import AutoModelForCausalLM

    two, three = bases
    save_perturbed(AutoModelForCausalLM.from_pretrained(two), _configs()[method], tmp_path / "adapter", seed=1)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs") as reg:
        with pytest.raises(ah.AdapterHubError, match=r"missing adapter weights: model\.layers\.2\."):
            reg.publish(tmp_path / "adapter", name=f"acme/{method}", version="1.0.0", base=three)
        assert reg.list() == []
        reg.publish(tmp_path / "adapter", name=f"acme/{method}", version="1.0.0", base=two)
        assert [m.verdict for m in reg.resolve(two)] == ["exact"]

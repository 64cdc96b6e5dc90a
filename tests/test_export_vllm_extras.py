"""A vLLM export that has to rewrite the files (per-module scales folded into lora_B) keeps
every tensor vLLM reads besides the linear layers' lora_A/lora_B: an embedding's LoRA
(``lora_embedding_A``/``lora_embedding_B``, its scale folded like the rest), the embedding
PEFT saved beside it, and a ``modules_to_save`` classifier head (``score``). The exported
directory, loaded by PEFT, gives the original adapter's logits.

Before: the rewrite wrote only the linear layers' pairs: the embedding LoRA was dropped
(PEFT then re-initialised it to a zero delta: logits off by 0.7, and the export called
itself exact) and a ``score`` head went missing (PEFT failed to load the export)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapterhub_sdk as ah
from adapterhub_sdk.export import export

from conftest import save_perturbed

IDS = torch.tensor([[1, 5, 9, 33, 70, 100, 127, 2]])


def _base(out: Path, classifier: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)
    (LlamaForSequenceClassification if classifier else LlamaForCausalLM)(cfg).save_pretrained(out)
    return out


def _model(base: Path, classifier: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return (AutoModelForSequenceClassification if classifier else AutoModelForCausalLM).from_pretrained(base).eval()


def _adapter(base: Path, out: Path, classifier: bool, **kw) -> Path:
    from peft import LoraConfig

    return save_perturbed(_model(base, classifier),
                          LoraConfig(task_type="SEQ_CLS" if classifier else "CAUSAL_LM", **kw), out, seed=3)


def _logits(base: Path, adapter: Path, classifier: bool) -> torch.Tensor:
    from peft import PeftModel

    with torch.no_grad():
        return PeftModel.from_pretrained(_model(base, classifier), str(adapter)).eval()(input_ids=IDS).logits


CASES = {
    "embedding-lora": (False, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                                   rank_pattern={"v_proj": 2})),
    "embedding-own-scale": (False, dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"],
                                        alpha_pattern={"embed_tokens": 3})),
    "score-head": (True, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                              rank_pattern={"v_proj": 2})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_folded_vllm_export_keeps_what_vllm_reads(case, tmp_path):
    classifier, kw = CASES[case]
    base = _base(tmp_path / "base", classifier)
    src = _adapter(base, tmp_path / "adapter", classifier, **kw)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs") as reg:
        reg.publish(src, name="acme/extras", version="1.0.0", base=base)
        res = export(reg, "acme/extras@1.0.0", "vllm", tmp_path / "out", base_path=base)
    assert res.details.get("exact", {}).get("folded"), res.details  # the rewrite ran: what this test is about
    exported = Path(res.adapter_path)
    before, after = load_file(str(src / "adapter_model.safetensors")), load_file(str(exported / "adapter_model.safetensors"))
    assert {k for k in before if ".lora_A." not in k and ".lora_B." not in k and "lora_embedding" not in k} <= set(after)
    assert {k for k in before if "lora_embedding" in k} <= set(after)
    want, got = _logits(base, src, classifier), _logits(base, exported, classifier)
    assert not torch.equal(want, _model(base, classifier)(input_ids=IDS).logits.detach())  # the adapter matters
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())

"""The method matrix: for every PEFT method the SDK knows, a real adapter saved by PEFT on a
small Llama built from a config is published, resolved, pulled and loaded back by PEFT with
outputs identical to the original's; and the same adapter is refused on a base of another
shape with a reason that names the module.

Each adapter is built once per module (the ``built`` fixture) and reused by both registry backends, so
the matrix costs one PEFT save per method plus the registry round trips."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah

from conftest import run_cli

#: a fixed batch of token ids (vocab 64); two rows so padding-free batching is exercised
IDS = [[1, 5, 9, 3, 7, 2, 11, 40], [4, 4, 8, 10, 60, 0, 33, 17]]


# --------------------------------------------------------------------------- the table


def _lora(**kw):
    from peft import LoraConfig

    kw.setdefault("target_modules", ["q_proj", "v_proj"])
    return LoraConfig(r=4, lora_alpha=8, **kw)


def _adalora():
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=10,
                         target_modules=["q_proj", "v_proj"])


def _ia3():
    from peft import IA3Config

    return IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])


def _loha():
    from peft import LoHaConfig

    return LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def _lokr():
    from peft import LoKrConfig

    return LoKrConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def _oft():
    from peft import OFTConfig

    return OFTConfig(r=0, oft_block_size=8, target_modules=["q_proj", "v_proj"])


def _boft():
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=4, target_modules=["q_proj", "v_proj"])


def _vera():
    from peft import VeraConfig

    return VeraConfig(r=4, target_modules=["q_proj", "v_proj"])


def _prompt_tuning():
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)


def _p_tuning():
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16)


def _prefix_tuning():
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)


def _hra():
    from peft import HRAConfig

    return HRAConfig(r=4, target_modules=["q_proj", "v_proj"])


def _ln_tuning():
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=["input_layernorm"])


def _vblora():
    from peft import VBLoRAConfig

    return VBLoRAConfig(r=4, target_modules=["q_proj", "v_proj"], vector_length=8, num_vectors=16)


def _fourierft():
    from peft import FourierFTConfig

    return FourierFTConfig(n_frequency=64, target_modules=["q_proj", "v_proj"])


@dataclass(frozen=True)
class Case:
    id: str
    config: Callable[[], Any]  # PEFT config factory
    method: str  # manifest method.type
    variant: str  # manifest method.variant
    module: str  # what the other-shape refusal must name
    summary: dict[str, Any] = field(default_factory=dict)  # facts the manifest summary must hold


CASES = [
    Case("lora", _lora, "lora", "lora", "q_proj", {"rank": 4, "alpha": 8, "dora": False}),
    Case("dora", lambda: _lora(use_dora=True), "lora", "dora", "v_proj", {"dora": True}),
    Case("rslora", lambda: _lora(use_rslora=True, target_modules=["k_proj", "o_proj"]), "lora", "rslora",
         "o_proj", {"rslora": True}),
    Case("lora-modules-to-save", lambda: _lora(target_modules=["q_proj"], modules_to_save=["lm_head"]),
         "lora", "lora", "lm_head", {"modules_to_save": ["lm_head"]}),
    Case("lora-patterns", lambda: _lora(target_modules=["q_proj", "v_proj", "down_proj"],
                                        rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 16}),
         "lora", "lora", "down_proj", {"ranks": [2, 4], "rank_pattern": {"down_proj": 2},
                                       "alpha_pattern": {"v_proj": 16}}),
    Case("lora-embedding", lambda: _lora(target_modules=["embed_tokens"]), "lora", "lora", "embed_tokens"),
    Case("lora-trainable-tokens", lambda: _lora(trainable_token_indices=[3, 5]), "lora", "lora",
         "embed_tokens"),
    Case("adalora", _adalora, "adalora", "adalora", "q_proj", {"rank": 2, "init_rank": 4}),
    Case("ia3", _ia3, "ia3", "ia3", "down_proj"),
    Case("loha", _loha, "loha", "loha", "q_proj"),
    Case("lokr", _lokr, "lokr", "lokr", "v_proj"),
    Case("oft", _oft, "oft", "oft", "q_proj"),
    Case("boft", _boft, "boft", "boft", "v_proj"),
    Case("vera", _vera, "vera", "vera", "q_proj", {"projections_saved": True}),
    Case("prompt-tuning", _prompt_tuning, "prompt_tuning", "prompt_tuning", "input embeddings",
         {"virtual_tokens": 4, "token_dim": 32}),
    Case("p-tuning", _p_tuning, "prompt_tuning", "p_tuning", "input embeddings", {"virtual_tokens": 4}),
    Case("prefix-tuning", _prefix_tuning, "prefix_tuning", "prefix_tuning", "key/value width",
         {"virtual_tokens": 4, "layers": 2}),
    # no specific plugin: the generic one, which checks by injecting PEFT on the meta device
    Case("hra", _hra, "generic", "hra", "q_proj", {"generic": True, "peft_type": "HRA"}),
    Case("ln-tuning", _ln_tuning, "generic", "ln_tuning", "input_layernorm", {"generic": True}),
    # shared state on the tuner (the vector bank): PEFT injects it only through get_peft_model
    Case("vblora", _vblora, "generic", "vblora", "q_proj", {"generic": True, "peft_type": "VBLORA"}),
]


# --------------------------------------------------------------------------- building adapters


def _ids():
    import torch

    return torch.tensor(IDS)


def _logits(model):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids(), attention_mask=torch.ones_like(_ids())).logits


def build_adapter(factory: Callable[[], Any], base_dir: Path, out: Path, *, seed: int = 0):
    """Save a real adapter of ``factory()``'s config; returns (dir, reference logits). Every
    trainable parameter is perturbed, so identity-initialised methods (LoRA B=0, IA3 ones, OFT,
    HRA, VeRA lambda_b=0 ...) change the outputs."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    plain = _logits(base)
    model = get_peft_model(base, factory())
    g = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(out)
    reference = _logits(model)
    # not a no-op (prompt methods prepend virtual tokens' logits: compare the real positions)
    assert not torch.allclose(reference[:, -plain.shape[1]:], plain)
    return out, reference


@pytest.fixture(scope="module")
def built(tmp_path_factory, base_dir) -> Callable[[Case], tuple[Path, Any]]:
    """``built(case)``: the case's adapter directory and reference logits, made once."""
    cache: dict[str, tuple[Path, Any]] = {}
    root = tmp_path_factory.mktemp("methods")

    def get(case: Case) -> tuple[Path, Any]:
        if case.id not in cache:
            cache[case.id] = build_adapter(case.config, base_dir, root / case.id)
        return cache[case.id]

    return get


def load_logits(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir))


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_method(case, registry, built, base_dir, base_other_weights, base_other_shape, tmp_path):
    import torch

    adapter, reference = built(case)
    name = f"acme/{case.id}"

    # publish pinned to the base it was trained on
    registry.publish(adapter, name=name, version="1.0.0", base=base_dir, tasks=["t"])
    info = registry.show(f"{name}@1.0.0")
    method = info.manifest.method
    assert (info.method, info.variant) == (case.method, case.variant)
    assert (method["type"], method["variant"]) == (case.method, case.variant)
    summary = method["summary"]
    assert summary["trainable_params"] > 0
    for key, want in case.summary.items():
        assert summary.get(key) == want, (key, summary)
    assert info.manifest.requirements, "a method must pin what it needs of the base"

    # resolve: exact on its base, structural on the same architecture with other weights
    exact = {(m.name, m.verdict) for m in registry.resolve(base_dir)}
    assert (name, "exact") in exact
    structural = [m for m in registry.resolve(base_other_weights) if m.name == name]
    assert [m.verdict for m in structural] == ["structural"]

    # pull and load with PEFT: the very same outputs. Same base weights, same adapter bytes
    # and the same code path in one process, so the logits are bit-identical (torch.equal).
    pulled = registry.pull(f"{name}@^1", tmp_path / "pulled")
    assert torch.equal(load_logits(base_dir, pulled), reference)

    # a base of another width: refused at publish, incompatible at resolve, naming the module
    with pytest.raises(ah.IncompatibleAdapterError) as err:
        registry.publish(adapter, name=name, version="1.0.1", base=base_other_shape, tasks=["t"])
    assert err.value.reasons
    assert any(case.module in r for r in err.value.reasons), err.value.reasons
    assert [i.version for i in registry.versions(name)] == ["1.0.0"]
    assert not [m for m in registry.resolve(base_other_shape) if m.name == name]
    [bad] = [m for m in registry.resolve(base_other_shape, include_incompatible=True) if m.name == name]
    assert (bad.version, bad.verdict) == ("1.0.0", "incompatible")
    assert bad.reasons and any(case.module in r for r in bad.reasons), bad.reasons


# --------------------------------------------------------------------------- focused tests


#: FourierFT has no specific plugin either, but stays out of the matrix: its saved spectrum has
#: n_frequency entries whatever the module's shape, so nothing in the adapter tells a base of
#: another width apart (PEFT loads it there too). It serves the generic plugin's key checks.
FOURIERFT = Case("fourierft", _fourierft, "generic", "fourierft", "q_proj", {"generic": True})


@pytest.fixture(scope="module")
def fourierft_dir(built) -> Path:
    return built(FOURIERFT)[0]


def _tampered(src: Path, dest: Path, edit: Callable[[dict], dict]) -> Path:
    """A copy of the adapter at ``src`` whose tensors went through ``edit``."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    (dest / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    save_file(edit(load_file(src / "adapter_model.safetensors")), dest / "adapter_model.safetensors")
    return dest


def test_generic_fourierft_round_trip(registry, built, fourierft_dir, base_dir, tmp_path):
    """FourierFT goes through the generic plugin: published with the summary saying so,
    requirements pinned to the base's shapes (PEFT's injection on the meta device), loaded
    back with identical outputs."""
    import torch

    _, reference = built(FOURIERFT)
    registry.publish(fourierft_dir, name="acme/fourierft", version="1.0.0", base=base_dir)
    manifest = registry.show("acme/fourierft").manifest
    assert (manifest.method["type"], manifest.method["variant"]) == ("generic", "fourierft")
    assert manifest.method["summary"]["generic"] is True
    assert manifest.method["summary"]["trainable_params"] == 4 * 64
    assert manifest.requirements["model.layers.0.self_attn.v_proj.weight"] == [16, 32]
    pulled = registry.pull("acme/fourierft@1.0.0", tmp_path / "pulled")
    assert torch.equal(load_logits(base_dir, pulled), reference)


def _drop_one(t: dict) -> dict:
    return {k: v for k, v in t.items() if "layers.1.self_attn.v_proj" not in k}


def _rename_one(t: dict) -> dict:
    return {k.replace("layers.1.self_attn.v_proj", "layers.1.self_attn.w_proj"): v for k, v in t.items()}


def _truncate_one(t: dict) -> dict:
    return {k: (v[:-1].clone() if "layers.1.self_attn.v_proj" in k else v) for k, v in t.items()}


@pytest.mark.parametrize(("edit", "needles"), [
    (_drop_one, ["missing keys", "layers.1.self_attn.v_proj.fourierft_spectrum"]),
    (_rename_one, ["missing keys", "unexpected keys", "layers.1.self_attn.w_proj.fourierft_spectrum"]),
    (_truncate_one, ["shape", "layers.1.self_attn.v_proj.fourierft_spectrum", "[63]", "[64]"]),
], ids=["missing", "renamed", "wrong-shape"])
def test_generic_catches_bad_adapter(registry, fourierft_dir, base_dir, tmp_path, edit, needles):
    """With a base whose config is known, the generic plugin asks PEFT which keys and shapes it
    expects, so a damaged adapter is refused before anything is stored."""
    bad = _tampered(fourierft_dir, tmp_path / "bad", edit)
    with pytest.raises(ah.IncompatibleAdapterError) as err:
        registry.publish(bad, name="acme/bad", version="1.0.0", base=base_dir)
    text = " | ".join(err.value.reasons)
    for needle in needles:
        assert needle in text, text
    assert registry.list() == []


def test_cli_list_by_method(registry, registry_url, built, base_dir):
    """``adapterhub list --method`` filters by variant (dora) and by method (ia3); in-process,
    a family's name (lora) takes in its variants, and ``generic`` finds what the generic plugin
    published."""
    by_id = {c.id: c for c in CASES}
    for case_id in ("lora", "dora", "ia3", "hra"):
        registry.publish(built(by_id[case_id])[0], name=f"acme/{case_id}", version="1.0.0", base=base_dir)

    def cli_names(method: str) -> list[str]:
        proc = run_cli("--registry", registry_url, "--blobs", str(registry.blobs.root),
                       "list", "--method", method, "--json")
        assert proc.returncode == 0, proc.stderr
        listed = json.loads(proc.stdout)
        assert all(method in (i["method"], i["variant"]) for i in listed), listed
        return [i["name"] for i in listed]

    assert cli_names("dora") == ["acme/dora"]
    assert cli_names("ia3") == ["acme/ia3"]
    assert [i.name for i in registry.list(method="lora")] == ["acme/dora", "acme/lora"]
    assert [i.name for i in registry.list(method="generic")] == ["acme/hra"]
    assert [i.name for i in registry.list(method="hra")] == ["acme/hra"]

"""An export that rewrote the adapter's files for its server (per-module scales folded into
lora_B) carries ``adapterhub_export.json`` instead of the version's manifest in the adapter
directory: the manifest as published (its pin) and the digests of the files as exported.
``ah.load_adapter`` (strict), ``check_pulled`` and a server's directory attach read it as a
pulled manifest: the files checked against it, the manifest against the registry's record,
the model against the pin; a changed file or an edited pin is refused saying so. An export
that rewrote nothing keeps the version's manifest.

Before: the rewritten directory kept the version's manifest, whose digests it no longer
matched: loading it with adapterhub said it had 'changed since it was pulled' and told the
user to pull it again over the export (which would have replaced the rewrite with PEFT's
layout)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.deploy import StructuralMatchWarning
from adapterhub_sdk.deploy_dir import attach_directory
from adapterhub_sdk.errors import IntegrityError
from adapterhub_sdk.export import export
from adapterhub_sdk.export_record import EXPORT_RECORD
from adapterhub_sdk.loading import MANIFEST_FILE, UnpinnedAdapterWarning, check_pulled
from adapterhub_sdk.manifest import Manifest

from conftest import save_perturbed

IDS = torch.tensor([[1, 5, 9, 33, 70, 100, 127, 2]])


def _base(out: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    return out


def _model(base: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base).eval()


def _adapter(base: Path, out: Path, **kw) -> Path:
    from peft import LoraConfig

    return save_perturbed(_model(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw),
                          out, seed=3)


@pytest.fixture
def world(tmp_path):
    base = _base(tmp_path / "base")
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    folded = _adapter(base, tmp_path / "folded", rank_pattern={"v_proj": 2})
    plain = _adapter(base, tmp_path / "plain")
    reg.publish(folded, name="acme/folded", version="1.0.0", base=base)
    reg.publish(plain, name="acme/plain", version="1.0.0", base=base)
    yield reg, base, tmp_path
    reg.close()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_a_rewritten_export_loads_pinned_and_exact(world):
    from peft import PeftModel

    reg, base, tmp = world
    res = export(reg, "acme/folded@1.0.0", "vllm", tmp / "out", base_path=base)
    adir = Path(res.adapter_path)
    assert res.details["exact"]["folded"]
    assert (adir / EXPORT_RECORD).is_file() and not (adir / MANIFEST_FILE).exists()
    assert (tmp / "out" / MANIFEST_FILE).is_file()  # the version's manifest still travels at the top
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ours = ah.load_adapter(_model(base), adir, strict=True, registry=reg)
    assert not [w for w in seen if issubclass(w.category, (StructuralMatchWarning, UnpinnedAdapterWarning))]
    assert torch.equal(_logits(ours), _logits(PeftModel.from_pretrained(_model(base), str(adir))))
    assert check_pulled(_model(base), adir, registry=reg) == "exact"
    dep = ah.Deployment(str(base), registry=reg)
    attached = attach_directory(dep, adir, name="folded")
    assert attached.verdict == "exact"
    with pytest.raises(ah.IncompatibleAdapterError):  # the pin still holds: other weights, strict
        ah.load_adapter(_model(_base(tmp / "other", seed=1)), adir, strict=True, registry=reg)


def test_an_export_that_rewrote_nothing_keeps_the_manifest(world):
    reg, base, tmp = world
    res = export(reg, "acme/plain@1.0.0", "vllm", tmp / "out", base_path=base)
    adir = Path(res.adapter_path)
    assert (adir / MANIFEST_FILE).is_file() and not (adir / EXPORT_RECORD).exists()
    assert check_pulled(_model(base), adir, registry=reg) == "exact"


def test_a_changed_file_or_an_edited_pin_is_refused(world):
    reg, base, tmp = world
    adir = Path(export(reg, "acme/folded@1.0.0", "vllm", tmp / "out", base_path=base).adapter_path)
    record = json.loads((adir / EXPORT_RECORD).read_text())

    cfg = json.loads((adir / "adapter_config.json").read_text())
    (adir / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 99}))
    with pytest.raises(IntegrityError, match=r"changed since it was exported") as err:
        ah.load_adapter(_model(base), adir, registry=reg)
    assert "adapterhub export acme/folded@1.0.0 --format vllm" in (err.value.hint or "")
    (adir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    m = Manifest.from_dict(record["manifest"])
    other = ah.fingerprint(_base(tmp / "other", seed=1)).digest
    m = dataclasses.replace(m, base=dataclasses.replace(m.base, fingerprint=other))
    (adir / EXPORT_RECORD).write_text(json.dumps({**record, "manifest": m.to_dict()}))
    with pytest.raises(IntegrityError, match="is not the manifest acme/folded@1.0.0 has in the registry"):
        ah.load_adapter(_model(tmp / "other"), adir, strict=True, registry=reg)

    (adir / EXPORT_RECORD).write_text(json.dumps({**record, "files": record["files"][:1]}))
    with pytest.raises(IntegrityError, match="lists other files than acme/folded@1.0.0 has"):
        check_pulled(_model(base), adir, registry=reg)

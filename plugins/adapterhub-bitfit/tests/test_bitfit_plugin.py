"""adapterhub-bitfit end to end: train BitFit biases on a small Llama, save, pack, publish
against the base, resolve, pull and load back onto a fresh base; other bases are refused.

The fixtures live in this module, not in a conftest.py: the adapterhub_sdk suite, collected
in the same pytest run, imports helpers with ``from conftest import ...``, and a second
top-level ``conftest`` module would take that name. Nothing here depends on that suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import adapterhub_sdk as ah
from adapterhub_sdk.plugins import get_plugin_manager, register_plugin, unregister_plugin

try:
    import adapterhub_bitfit
except ImportError:  # a checkout without `pip install -e plugins/adapterhub-bitfit`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import adapterhub_bitfit

from adapterhub_bitfit import BitFitMethod, add_bitfit, save_bitfit  # noqa: E402

PLUGIN_NAME = "adapterhub-bitfit"


def tiny_llama(hidden: int = 32, layers: int = 2, vocab: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(autouse=True)
def _bitfit_isolated(tmp_path, monkeypatch):
    """Own ADAPTERHUB_HOME, no team policy from the environment, and no entry-point plugins
    should the plugin manager first load in this process: the plugin comes in through
    ``bitfit_plugin`` only, so nothing stays registered after these tests."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS", "ADAPTERHUB_POLICY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bitfit_plugin():
    """The plugin, registered in this process for one test (the plugin manager is
    process-wide and loads entry points once; if it already loaded this plugin from its
    entry point, that registration is used and kept)."""
    if get_plugin_manager().is_registered(adapterhub_bitfit):
        yield adapterhub_bitfit
        return
    register_plugin(adapterhub_bitfit, name=PLUGIN_NAME)
    try:
        yield adapterhub_bitfit
    finally:
        unregister_plugin(adapterhub_bitfit)


@pytest.fixture(scope="module")
def bitfit_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bitfit-models")


@pytest.fixture(scope="module")
def bitfit_base(bitfit_models) -> Path:
    """A small Llama (hidden 32, 2 layers) saved by transformers."""
    path = bitfit_models / "base"
    tiny_llama(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bitfit_base_other_shape(bitfit_models) -> Path:
    """A Llama of another width (hidden 48): BitFit adapters of ``bitfit_base`` do not fit."""
    path = bitfit_models / "base_other_shape"
    tiny_llama(hidden=48, seed=0).save_pretrained(path)
    return path


TARGETS = ["q_proj", "v_proj", "down_proj"]
TOKENS = torch.tensor([[1, 5, 9, 17, 33, 2, 7, 11], [3, 4, 8, 16, 32, 63, 0, 12]])


def _train(base_dir, steps: int = 5):
    """A base with BitFit biases trained a few steps on a fixed batch."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    names = add_bitfit(model, TARGETS)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=TOKENS, labels=TOKENS).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), names


def _logits(model):
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


@pytest.fixture
def trained(tmp_path, bitfit_base):
    model, names = _train(bitfit_base)
    out = save_bitfit(model, tmp_path / "bitfit", TARGETS)
    return model, names, out


def test_add_bitfit_adds_zero_biases_and_freezes_the_rest(bitfit_base):
    model = AutoModelForCausalLM.from_pretrained(bitfit_base).eval()
    before = _logits(model)
    names = add_bitfit(model, ["q_proj", "v_proj"])
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [f"{n}.bias" for n in names]
    assert model.get_submodule("model.layers.0.self_attn.v_proj").bias.shape == (16,)
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)  # zero biases change nothing


def test_add_bitfit_with_no_match_says_so(bitfit_base):
    model = AutoModelForCausalLM.from_pretrained(bitfit_base)
    with pytest.raises(ValueError, match="no nn.Linear module .* matches target_modules"):
        add_bitfit(model, ["c_attn"])


def test_saved_format(trained, bitfit_base):
    _, names, out = trained
    config = json.loads((out / "adapter_config.json").read_text())
    assert config == {"peft_type": "BITFIT", "base_model_name_or_path": str(bitfit_base),
                      "target_modules": TARGETS}
    tensors = load_file(out / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(f"base_model.model.{n}.bias" for n in names)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.bias"].shape == (32,)
    assert any(t.abs().sum() > 0 for t in tensors.values()), "training left the biases at zero"


def test_pack_publish_resolve_pull_load(trained, tmp_path, bitfit_base, bitfit_plugin):
    model, names, out = trained
    pkg = ah.pack(out)
    assert (pkg.method.name, pkg.variant) == ("bitfit", "bitfit")
    assert isinstance(pkg.method, BitFitMethod)
    assert pkg.requirements["model.layers.0.self_attn.q_proj.weight"] == [32, None]
    assert pkg.requirements["model.layers.0.self_attn.v_proj.weight"] == [16, None]
    assert pkg.summary["trainable_params"] == 2 * (32 + 16 + 32)
    assert pkg.summary["targets"] == TARGETS
    pkg.close()

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs")
    try:
        res = reg.publish(out, name="acme/bitfit", version="1.0.0", base=bitfit_base, tasks=["lm"])
        assert res.created
        assert res.manifest.method["type"] == "bitfit"
        assert res.manifest.base.fingerprint == ah.fingerprint(bitfit_base).digest
        hits = reg.resolve(base=bitfit_base, task="lm")
        assert [(h.ref, h.verdict, h.method) for h in hits] == [("acme/bitfit@1.0.0", "exact", "bitfit")]
        pulled = reg.pull("acme/bitfit@^1", tmp_path / "pulled")
    finally:
        reg.close()

    fresh = AutoModelForCausalLM.from_pretrained(bitfit_base).eval()
    base_logits = _logits(fresh)
    loaded = ah.load_adapter(fresh, pulled)
    assert loaded is fresh  # BitFit puts the biases on the model itself
    want = _logits(model)
    torch.testing.assert_close(_logits(loaded), want, rtol=0, atol=0)
    assert not torch.allclose(base_logits, want), "the adapter should change the output"


def test_other_shape_base_is_refused_naming_the_module(trained, tmp_path, bitfit_base,
                                                       bitfit_base_other_shape, bitfit_plugin):
    _, _, out = trained
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs")
    try:
        with pytest.raises(ah.IncompatibleAdapterError) as err:
            reg.publish(out, name="acme/bitfit", version="1.0.0", base=bitfit_base_other_shape)
        assert "model.layers.0.mlp.down_proj.weight is [48, 96] in the base" in str(err.value)
        assert any("self_attn.v_proj.weight is [24, 48]" in r for r in err.value.reasons)
        assert reg.list() == []

        reg.publish(out, name="acme/bitfit", version="1.0.0", base=bitfit_base)
        assert reg.resolve(base=bitfit_base_other_shape) == []
        [hit] = reg.resolve(base=bitfit_base_other_shape, include_incompatible=True)
        assert hit.verdict == "incompatible"
        assert any("self_attn.q_proj.weight" in r for r in hit.reasons)
    finally:
        reg.close()

    other = AutoModelForCausalLM.from_pretrained(bitfit_base_other_shape)
    with pytest.raises(ah.IncompatibleAdapterError, match=r"model\.layers\.0\.mlp\.down_proj"):
        ah.load_adapter(other, out)
    assert other.get_submodule("model.layers.0.self_attn.q_proj").bias is None  # nothing half-applied


def test_unexpected_tensor_is_refused(tmp_path, bitfit_plugin):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "BITFIT", "base_model_name_or_path": None, "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32)},
              str(out / "adapter_model.safetensors"))
    with pytest.raises(ah.AdapterFormatError, match="unexpected tensor .*q_proj.weight.* BitFit"):
        ah.pack(out)

    save_file({"base_model.model.model.layers.0.mlp.up_proj.bias": torch.zeros(64)},
              str(out / "adapter_model.safetensors"))
    with pytest.raises(ah.AdapterFormatError, match="up_proj is not in target_modules"):
        ah.pack(out)


def test_pickle_weights_are_never_read(tmp_path, bitfit_base, bitfit_plugin):
    out = tmp_path / "pickled"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "BITFIT", "base_model_name_or_path": None, "target_modules": ["q_proj"]}))
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.bias": torch.zeros(32)},
               out / "adapter_model.bin")
    model = AutoModelForCausalLM.from_pretrained(bitfit_base)
    with pytest.raises(ah.UnsafeFormatError, match="pickle-based checkpoint"):
        ah.load_adapter(model, out)
    with pytest.raises(ah.UnsafeFormatError):
        ah.pack(out)


def test_plugin_lists_its_method(bitfit_plugin):
    from adapterhub_sdk.plugins import methods

    names = [m.name for m in methods()]
    assert names.index("bitfit") < names.index("lora") < names.index("generic")  # third-party first

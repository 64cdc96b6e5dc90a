"""Deployment serves LoRA/rsLoRA/DoRA/lora_bias/modules_to_save and IA3 exactly as PEFT does,
or refuses: an option that changes what PEFT computes and that the runtime does not implement
(activated LoRA, layer replication, trainable token rows, ...) is refused by name, never served
as if it were plain LoRA (issues 8 and 12). Export targets keep their own, narrower list."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError
from adapterhub_sdk.lora_options import (
    _IA3_WHAT,
    _WHAT,
    IA3_INERT,
    INERT,
    SCALING,
    SERVED_LORA_OPTIONS,
    deployment_refusals,
    unsupported_ia3_options,
    unsupported_options,
)

from conftest import save_lora


def _lora(base_dir, out, **kw):
    return save_lora(base_dir, out, seed=3, **kw)


def test_activated_lora_is_refused_not_served_as_plain_lora(tmp_path, registry, base_dir):
    # aLoRA applies its update only from the invocation tokens on: serving it on every token
    # (what a plain-LoRA runtime does) gives other logits than PEFT
    registry.publish(_lora(base_dir, tmp_path / "alora", alora_invocation_tokens=[5, 6]),
                     name="acme/alora", version="1.0.0", base=base_dir)
    dep = ah.Deployment(str(base_dir), registry=registry)
    with pytest.raises(IncompatibleAdapterError, match="activated LoRA"):
        dep.attach("acme/alora@1.0.0")
    assert dep.adapters == {}


def test_lora_alpha_zero_scales_by_zero_as_peft_does(tmp_path, registry, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = _lora(base_dir, tmp_path / "a0", lora_alpha=0)
    registry.publish(path, name="acme/a0", version="1.0.0", base=base_dir)
    dep = ah.Deployment(str(base_dir), registry=registry)
    dep.attach("acme/a0@1.0.0")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), path).eval()
    with torch.no_grad():
        want = ref(input_ids=ids).logits
    assert torch.allclose(dep.forward(ids, adapters=["acme/a0"]), want, atol=1e-6, rtol=0)


def test_every_option_of_the_installed_peft_is_classified():
    # a LoRA option PEFT adds is refused as unknown until someone classifies it here
    from peft import LoraConfig

    known = INERT | SCALING | set(_WHAT) | {"init_lora_weights"}
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert fields - known == set(), f"classify these LoRA options in lora_options.py: {sorted(fields - known)}"
    # PEFT's defaults are all off: a default config serves as plain LoRA
    assert unsupported_options(LoraConfig(target_modules=["q_proj"]).to_dict()) == []


def test_every_ia3_option_of_the_installed_peft_is_classified():
    from peft import IA3Config

    fields = {f.name for f in dataclasses.fields(IA3Config)}
    assert fields - (IA3_INERT | set(_IA3_WHAT)) == set(), \
        f"classify these IA3 options in lora_options.py: {sorted(fields - IA3_INERT - set(_IA3_WHAT))}"
    assert deployment_refusals(IA3Config(target_modules=["k_proj"], feedforward_modules=[]).to_dict()) == []


@pytest.mark.parametrize(("config", "needle"), [
    ({"peft_type": "LORA", "r": 4, "use_dora": True}, None),
    ({"peft_type": "LORA", "r": 4, "lora_bias": True}, None),
    ({"peft_type": "LORA", "r": 4, "modules_to_save": ["lm_head"]}, None),
    ({"peft_type": "LORA", "r": 4, "use_dora": True, "use_rslora": True, "modules_to_save": ["score"]}, None),
    ({"peft_type": "IA3", "feedforward_modules": ["down_proj"], "modules_to_save": ["lm_head"]}, None),
    ({"peft_type": "LORA", "r": 4, "modules_to_save": ["lm_head"], "ensure_weight_tying": True}, "ensure_weight_tying"),
    ({"peft_type": "LORA", "r": 4, "ensure_weight_tying": True}, None),  # nothing to tie: inert
    ({"peft_type": "LORA", "r": 4, "use_dora": True, "lora_bias": True}, "PEFT itself refuses"),
    ({"peft_type": "LORA", "r": 4, "bias": "lora_only"}, "trained base biases"),
    ({"peft_type": "LORA", "r": 4, "trainable_token_indices": [1]}, "trained embedding rows"),
    ({"peft_type": "IA3", "fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"peft_type": "IA3", "some_future_option": 1}, "IA3 option some_future_option"),
])
def test_what_a_deployment_serves_and_what_it_refuses(config, needle):
    # one list, asked by attach (multilora_variants.prepare) and by the runtime check (resolve)
    from adapterhub_sdk.plugins import get_runtime

    reasons = deployment_refusals(config)
    assert reasons == [] if needle is None else (len(reasons) == 1 and needle in reasons[0]), reasons
    method = {"type": "ia3" if config["peft_type"] == "IA3" else "lora", "config": config, "summary": {}}
    check = get_runtime("transformers").check_method(method)
    assert [r.split("the adapter ", 1)[1] for r in check] == reasons
    if config["peft_type"] == "LORA":  # export targets still refuse what they do not implement
        assert (unsupported_options(config) == []) == (not (set(config) & SERVED_LORA_OPTIONS)
                                                       and needle is None)
    elif "modules_to_save" in config:  # the plain IA3 list does not take copies; the deployment does
        assert unsupported_ia3_options(config) and not deployment_refusals(config)


@pytest.mark.parametrize(("extra", "needle"), [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer replication"),
    ({"use_bdlora": {"lora_a_is_blockdiagonal": True}}, "block-diagonal"),
    ({"some_future_option": 3}, "does not know"),
    ({"init_lora_weights": "pissa_niter_4"}, "rewrites the base weights"),
    ({"init_lora_weights": "olora"}, "rewrites the base weights"),
    ({"init_lora_weights": "loftq"}, "rewrites the base weights"),
])
def test_options_that_change_the_output_are_named(extra, needle):
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none", **extra}
    reasons = unsupported_options(config)
    assert len(reasons) == 1 and needle in reasons[0]
    assert unsupported_options(config, supported=extra) == []


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal", "lora_ga"])
def test_inits_that_leave_the_base_alone_serve_as_plain_lora(init):
    assert unsupported_options({"peft_type": "LORA", "r": 4, "init_lora_weights": init}) == []


@pytest.mark.parametrize("fmt", ["vllm", "lorax", "tgi", "ollama"])
@pytest.mark.parametrize("extra", [{"kasa_config": {"rank": 4}}, {"arrow_config": {"top_k": 2}},
                                   {"some_future_option": 1}, {"init_lora_weights": "pissa"}])
def test_every_export_target_refuses_options_it_would_ignore(tmp_path, base_dir, lora_dir, fmt, extra):
    from adapterhub_sdk.export import limitations

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    manifest = reg.show("acme/a@1.0.0").manifest
    assert limitations(fmt, manifest) == []
    method = dict(manifest.method)
    method["config"] = {**method["config"], **extra}
    reasons = limitations(fmt, dataclasses.replace(manifest, method=method))
    assert reasons, f"{fmt} would serve {extra} as plain LoRA"
    reg.close()


def test_resolve_for_the_runtime_says_what_attach_would_refuse(tmp_path, base_dir, lora_dir):
    # `resolve --runtime transformers` reads the config, not only the summary: it agrees with attach
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(_lora(base_dir, tmp_path / "alora", alora_invocation_tokens=[5, 6]),
                name="acme/alora", version="1.0.0", base=base_dir)
    reg.publish(lora_dir, name="acme/plain", version="1.0.0", base=base_dir)
    reg.publish(_lora(base_dir, tmp_path / "dora", use_dora=True, lora_bias=False), name="acme/dora",
                version="1.0.0", base=base_dir)
    hits = {h.name: h for h in reg.resolve(base_dir, runtime="transformers", include_incompatible=True)}
    assert hits["acme/plain"].verdict == "exact" and hits["acme/dora"].verdict == "exact"
    assert hits["acme/alora"].verdict == "incompatible"
    assert any("activated LoRA" in r for r in hits["acme/alora"].reasons)
    assert [h.name for h in reg.resolve(base_dir, runtime="transformers")] == ["acme/dora", "acme/plain"]
    assert {h.name for h in reg.resolve(base_dir)} == {"acme/alora", "acme/dora", "acme/plain"}  # no runtime
    dep = ah.Deployment(str(base_dir), registry=reg)  # and attach agrees, both ways
    dep.attach("acme/dora")
    dep.attach("acme/plain")
    with pytest.raises(IncompatibleAdapterError, match="activated LoRA"):
        dep.attach("acme/alora")
    reg.close()

"""Deployment.merge review: what a merged adapter puts in the base weights never leaks into
what is computed for another adapter, and what cannot be merged as PEFT runs it unmerged is
refused, leaving the deployment as it was.

- a ``modules_to_save`` copy of ``lm_head`` / ``embed_tokens`` (or both; with IA3 too) on a base
  whose LM head is tied to the input embedding: merging would write the copy into the shared
  tensor and change the tied partner; refused with the tied reason, nothing changed;
- an adapter prepared while another is merged (attach, replace of the merged one, an HTTP load)
  reads the base's own weights (DoRA's norm ``||W + s B A||``), never the merged ones;
- a plain LoRA merged on a bfloat16 / float16 base is bit-identical to PEFT's merge_and_unload.

Adapters are PEFT saves with randomized weights (``test_deploy_variants.make_adapter``) on tiny
Llama bases built from configs; references are ``PeftModel.from_pretrained`` on the same base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_deploy_variants import ATOL, _save_base, diff, ids_batch, make_adapter

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError

from conftest import save_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _registry(d: Path) -> ah.Registry:
    return ah.Registry.open(f"sqlite:///{d / 'r.db'}", blobs=d / "blobs")


def _peft(base: Path, path: Path, dtype: Any = None) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kw = {} if dtype is None else {"dtype": dtype}
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kw), path).eval()


def _peft_logits(base: Path, path: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _peft(base, path)(input_ids=ids).logits


def _state(dep: ah.Deployment) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in dep.model.named_parameters(remove_duplicate=False)}


# --------------------------------------------------------------------------- 1. tied modules_to_save


def _tied_configs() -> dict[str, Any]:
    from peft import IA3Config, LoraConfig

    return {
        "mts-head": LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
        "mts-emb": LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
        "mts-both": LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"],
                               modules_to_save=["embed_tokens", "lm_head"]),
        "ia3-mts": IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"],
                             modules_to_save=["lm_head"]),
    }


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> dict[str, Any]:
    from peft import LoraConfig

    d = tmp_path_factory.mktemp("merge_tied")
    base = save_base(d / "tied", tie=True, seed=6)
    dirs = {kind: make_adapter(base, d / kind, cfg, seed=40 + i) for i, (kind, cfg) in enumerate(_tied_configs().items())}
    dirs["plain"] = make_adapter(base, d / "plain", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                 seed=49)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = _registry(d)
        for kind, path in dirs.items():
            reg.publish(path, name=f"tied/{kind}", version="1.0.0", base=base)
        yield {"base": base, "dirs": dirs, "registry": reg}
        reg.close()


@pytest.mark.parametrize("kind", list(_tied_configs()))
def test_merge_of_a_trained_copy_of_a_tied_module_is_refused_and_changes_nothing(tied, kind):
    """Merging would copy the adapter's trained lm_head (or embed_tokens) into the tensor the
    two modules share, so the other one would change too (before: logits ~8 off PEFT's).
    Refused with the tied reason; the adapter merged before stays merged, every base tensor
    is bit-for-bit what it was, and the adapter still serves exactly PEFT's output unmerged."""
    dep = ah.Deployment(str(tied["base"]), registry=tied["registry"])
    assert dep.model.lm_head.weight is dep.model.model.embed_tokens.weight
    dep.attach("tied/plain", name="plain")
    dep.attach(f"tied/{kind}", name=kind)
    dep.merge("plain")
    before = _state(dep)
    with pytest.raises(IncompatibleAdapterError, match="tied to") as err:
        dep.merge(kind)
    assert any("lm_head" in r and "embed_tokens" in r for r in err.value.reasons)
    assert dep.merged == "plain"
    after = _state(dep)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert dep.model.lm_head.weight is dep.model.model.embed_tokens.weight
    ids = ids_batch(3, seed=31)
    assert diff(dep.forward(ids, kind), _peft_logits(tied["base"], tied["dirs"][kind], ids)) < ATOL
    assert diff(dep.forward(ids, "plain"), _peft_logits(tied["base"], tied["dirs"]["plain"], ids)) < ATOL


# --------------------------------------------------------------------------- 2. prepared while merged


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    from peft import IA3Config, LoraConfig

    qv = ["q_proj", "v_proj"]
    d = tmp_path_factory.mktemp("merge_prepare")
    base = _save_base(d / "base")  # attention biases: DoRA's y - bias and IA3's scaled bias matter
    configs = {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=qv),
        "ia3": IA3Config(target_modules=["v_proj", "q_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "mts": LoraConfig(r=2, lora_alpha=8, target_modules=["k_proj"], modules_to_save=["o_proj"]),
        "dora": LoraConfig(r=4, lora_alpha=8, target_modules=qv, use_dora=True),
        "dora-o": LoraConfig(r=4, lora_alpha=8, target_modules=[*qv, "o_proj"], use_dora=True),
    }
    dirs = {kind: make_adapter(base, d / kind, cfg, seed=60 + i) for i, (kind, cfg) in enumerate(configs.items())}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = _registry(d)
        for kind, path in dirs.items():
            reg.publish(path, name=f"m/{kind}", version="1.0.0", base=base)
        reg.publish(dirs["dora"], name="m/lora", version="2.0.0", base=base)  # a DoRA version of "lora"
        yield {"base": base, "dirs": dirs, "registry": reg}
        reg.close()


@pytest.mark.parametrize(("merged", "attached"), [("lora", "dora"), ("ia3", "dora"), ("mts", "dora-o"),
                                                  ("ia3", "dora-o")])
def test_an_adapter_attached_while_another_is_merged_reads_the_base_weights(world, merged, attached):
    """DoRA's norm ||W + s B A|| is computed from the base's W, not from W with the merged
    adapter folded in (before: 0.42 off PEFT, for good, even after the unmerge)."""
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach(f"m/{merged}@1.0.0", name=merged)
    dep.merge(merged)
    dep.attach(f"m/{attached}", name=attached)
    assert dep.merged == merged
    ids = ids_batch(3, seed=32)
    want = _peft_logits(world["base"], world["dirs"][attached], ids)
    assert diff(dep.forward(ids, attached), want) < ATOL  # unmerges first
    dep.merge(attached)
    assert diff(dep.forward(ids, attached), want) < ATOL
    dep.merge(merged)
    assert diff(dep.forward(ids, merged), _peft_logits(world["base"], world["dirs"][merged], ids)) < ATOL
    assert diff(dep.forward(ids, attached), want) < ATOL


def test_replacing_the_merged_adapter_with_dora_reads_the_base_weights(world):
    """``replace`` of the merged adapter prepares the new version while the old one is still
    folded in; the new one (DoRA) is computed from the base's own weights, then merged."""
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("m/lora@1.0.0", name="lora")
    dep.merge("lora")
    dep.replace("lora", "m/lora@2.0.0")
    assert dep.merged == "lora"
    ids = ids_batch(3, seed=33)
    want = _peft_logits(world["base"], world["dirs"]["dora"], ids)
    assert diff(dep.forward(ids, "lora"), want) < ATOL
    dep.unmerge()
    assert diff(dep.forward(ids, "lora"), want) < ATOL


def test_a_trained_copy_made_while_merged_holds_no_other_adapters_state(world):
    """A ``modules_to_save`` copy is a copy of the base module without this deployment's hooks
    (a deep copy used to carry every earlier adapter's copies and LoRA of that module along)."""
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("m/dora-o", name="dh")
    dep.merge("dh")
    dep.attach("m/mts", name="mts")
    dups = [c for copies in dep._copies.values() for c in copies.copies.values()]
    assert len(dups) == 2 and all(not d._forward_hooks and not d._forward_pre_hooks for d in dups)
    ids = ids_batch(3, seed=34)
    want = torch.cat([_peft_logits(world["base"], world["dirs"]["mts"], ids[:1]),
                      _peft_logits(world["base"], world["dirs"]["dora-o"], ids[1:2]), _base_logits(world, ids[2:])])
    assert diff(dep.forward(ids, ["mts", "dh", None]), want) < ATOL


def _base_logits(world: dict[str, Any], ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(world["base"]).eval()(input_ids=ids).logits


def test_an_http_load_while_an_adapter_is_merged_equals_peft(world):
    """POST /v1/adapters of a DoRA adapter while another is merged: its logprobs are PEFT's."""
    pytest.importorskip("uvicorn")
    import httpx
    from test_continuous import serving

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("m/lora@1.0.0", name="lora")
    dep.merge("lora")
    prompt = [5, 17, 33, 2, 9]
    admin = "k-admin-1"
    with serving(dep, allow_adapter_updates=True, admin_key=admin, follow_interval=0) as s:
        headers = {"Authorization": f"Bearer {admin}"}
        r = httpx.post(f"{s.url}/v1/adapters", json={"spec": "m/dora@1.0.0", "name": "d"}, headers=headers,
                       timeout=120)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "d", "prompt": prompt, "max_tokens": 1,
                                                         "temperature": 0, "logprobs": 5}, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    lp = torch.log_softmax(_peft_logits(world["base"], world["dirs"]["dora"], torch.tensor([prompt]))[0, -1], -1)
    want = {f"w{i}": float(lp[i]) for i in lp.topk(5).indices.tolist()}
    assert set(got) == set(want), json.dumps([got, want])
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4


# --------------------------------------------------------------------------- 3. half-precision merge


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_lora_merged_on_a_half_precision_base_is_peft_merge_and_unload_bit_for_bit(tmp_path, dtype):
    """PEFT's default merge adds the float32 delta ``(B @ A) * s`` into the weight in place (one
    rounding); casting the delta to bfloat16 first and adding in bfloat16 put ~30% of the
    elements one step off. Merged: every weight and the logits equal merge_and_unload's
    exactly; unmerged: the base's weights exactly again."""
    from peft import LoraConfig

    base = save_base(tmp_path / "base", hidden=64, seed=8)
    path = make_adapter(base, tmp_path / "a", LoraConfig(r=8, lora_alpha=8, use_rslora=True,  # s = 2.83
                                                          target_modules=["q_proj", "v_proj", "down_proj"]), seed=71)
    reg = _registry(tmp_path)
    reg.publish(path, name="h/a", version="1.0.0", base=base)
    dep = ah.Deployment(str(base), registry=reg, dtype=dtype)
    dep.attach("h/a", name="a")
    plain = _state(dep)
    dep.merge("a")
    merged = _peft(base, path, dtype).merge_and_unload()
    want = dict(merged.named_parameters(remove_duplicate=False))
    got = dict(dep.model.named_parameters(remove_duplicate=False))
    assert set(got) == set(want)
    assert [n for n in got if not torch.equal(got[n], want[n])] == []
    ids = ids_batch(3, seed=35)
    with torch.no_grad():
        assert torch.equal(dep.forward(ids, "a"), merged(input_ids=ids).logits)
    dep.unmerge()
    assert all(torch.equal(p, plain[n]) for n, p in dep.model.named_parameters(remove_duplicate=False))
    reg.close()

"""LoRA on an ``nn.Embedding`` in a deployment (issue 12): PEFT saves ``lora_embedding_A`` /
``lora_embedding_B`` (and, by ``save_embedding_layers``, a copy of the base embedding); each
row of a batch that uses such an adapter gets exactly PEFT's ``lora.Embedding`` forward for it
alone, beside plain-LoRA and base-only rows, in float32 and bfloat16, merged or not. What the
embedding path does not compute (DoRA on an embedding) is refused by attach, and ``resolve
--runtime transformers`` lists it as not runnable with the same reason.

Adapters come from PEFT (``get_peft_model`` + ``save_pretrained``) on the small seeded Llama of
``test_deploy_variants``; the reference is ``PeftModel.from_pretrained`` of one directory."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from test_deploy_variants import (
    ATOL,
    VOCAB,
    _save_base,
    assert_bf16_rows_equal_peft,
    diff,
    ids_batch,
    make_adapter,
    peft_greedy,
    peft_logits,
)

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError


def _configs() -> dict[str, Any]:
    from peft import LoraConfig

    return {
        "emb": LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
        "emb-rs": LoraConfig(r=8, lora_alpha=4, target_modules=["embed_tokens", "v_proj"], use_rslora=True,
                             alpha_pattern={"embed_tokens": 12}),
        "emb-only": LoraConfig(r=2, lora_alpha=16, target_modules=["embed_tokens"]),
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    }


KINDS = list(_configs())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("embedding")
    base = _save_base(d / "base")
    dirs = {kind: make_adapter(base, d / kind, cfg, seed=80 + i) for i, (kind, cfg) in enumerate(_configs().items())}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}", blobs=d / "blobs")
        for kind, path in dirs.items():
            reg.publish(path, name=f"emb/{kind}", version="1.0.0", base=base)
        yield {"base": base, "dirs": dirs, "registry": reg, "tmp": d}
        reg.close()


def deployment(world: dict[str, Any], **kw: Any) -> ah.Deployment:
    dep = ah.Deployment(str(world["base"]), registry=world["registry"], **kw)
    for kind in KINDS:
        dep.attach(f"emb/{kind}", name=kind)
    return dep


def test_embedding_lora_alone_and_mixed_equals_peft(world):
    """One forward with embedding-LoRA rows, a plain-LoRA row and base-only rows: each row's
    logits are PEFT's for that adapter alone; each adapter alone for a whole batch too. The
    adapters hold what the issue is about: lora_embedding_A/B and PEFT's copy of the base
    embedding (save_embedding_layers); resolve lists each for the runtime, and attach takes it."""
    from safetensors import safe_open

    with safe_open(world["dirs"]["emb"] / "adapter_model.safetensors", "pt") as f:
        prefix = "base_model.model.model.embed_tokens."
        assert {f"{prefix}lora_embedding_A", f"{prefix}lora_embedding_B", f"{prefix}base_layer.weight"} <= set(f.keys())
    hits = {h.name for h in world["registry"].resolve(world["base"], runtime="transformers")}
    assert hits == {f"emb/{k}" for k in KINDS}
    dep = deployment(world)
    assert dep.adapters["emb"].modules == 3 and dep.adapters["emb-only"].rank == 2
    names: list[str | None] = ["emb", "lora", None, "emb-rs", "emb-only", "emb", None, "lora"]
    ids = ids_batch(len(names), seed=21)
    got = dep.forward(ids, names)
    base = peft_logits(world, None, ids)
    for i, name in enumerate(names):
        want = peft_logits(world, name, ids[i:i + 1])
        assert diff(got[i:i + 1], want) < ATOL, name
        if name is not None:
            assert diff(want, base[i:i + 1]) > 1e-2, f"{name} does not change the output: the test would not see it"
    for kind in KINDS:  # the one-adapter path
        assert diff(dep.forward(ids[:3], kind), peft_logits(world, kind, ids[:3])) < ATOL, kind
    assert torch.equal(dep.forward(ids, names), got)
    dep.detach("emb")  # the other rows stay exact; the detached adapter's rows are gone
    got = dep.forward(ids[:4], ["emb-only", "lora", None, "emb-rs"])
    for i, name in enumerate(["emb-only", "lora", None, "emb-rs"]):
        assert diff(got[i:i + 1], peft_logits(world, name, ids[i:i + 1])) < ATOL, name


def test_left_padded_generation_equals_peft_greedy(world):
    dep = deployment(world)
    names: list[str | None] = ["emb", "lora", None, "emb-rs", "emb-only", "emb"]
    g = torch.Generator().manual_seed(22)
    prompts = [torch.randint(2, VOCAB, (3 + i % 4,), generator=g).tolist() for i in range(len(names))]
    out = dep.generate(prompts, names, max_new_tokens=6)
    for name, p, row in zip(names, prompts, out, strict=True):
        assert row["token_ids"] == peft_greedy(world, name, p, 6), name


def test_a_bfloat16_base_runs_the_embedding_update_in_float32_as_peft_does(world):
    """PEFT keeps the adapter in float32 on a bfloat16 base and adds the embedding update to the
    bfloat16 lookup in float32, cast back once: rows match within a quarter bfloat16 step."""
    names: list[str | None] = [*KINDS, None]
    assert_bf16_rows_equal_peft(world, deployment(world, dtype=torch.bfloat16), names, ids_batch(len(names), seed=23))


def test_merge_of_an_embedding_lora_equals_peft_and_unmerges_exactly(world):
    from transformers import AutoModelForCausalLM

    dep = deployment(world)
    fresh = AutoModelForCausalLM.from_pretrained(world["base"]).state_dict()
    ids = ids_batch(2, seed=24)
    for kind in ("emb", "emb-rs", "emb-only"):
        dep.merge(kind)
        assert diff(dep.forward(ids, kind), peft_logits(world, kind, ids)) < ATOL, kind
        dep.unmerge()
        assert all(torch.equal(v, fresh[k]) for k, v in dep.model.state_dict().items()), kind
    dep.merge("emb")
    got = dep.forward(ids, ["emb", "emb-rs"])  # a mixed batch unmerges first
    assert dep.merged is None and diff(got[1:], peft_logits(world, "emb-rs", ids[1:])) < ATOL


def test_on_other_base_weights_the_row_uses_the_saved_embedding_as_peft_loads_it(world, tmp_path):
    """PEFT's save_embedding_layers copy is loaded into the base embedding by from_pretrained:
    on a base with other weights (a structural fit) the adapter's rows use that copy, other rows
    the base's own; the same copy on a tied base would change its lm_head too, so it is refused."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub_sdk.deploy import StructuralMatchWarning

    from conftest import save_base

    other = _save_base(tmp_path / "other", seed=3)
    reg = world["registry"]
    reg.publish(make_adapter(other, tmp_path / "a", _configs()["emb"], seed=90), name="emb/other",
                version="1.0.0", base=other)
    dep = ah.Deployment(str(world["base"]), registry=reg)
    with pytest.warns(StructuralMatchWarning):
        dep.attach("emb/other", name="o")
    ids = ids_batch(3, seed=25)
    got = dep.forward(ids, ["o", None, "o"])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["base"]),
                                         tmp_path / "a").eval()(input_ids=ids).logits
    base = peft_logits(world, None, ids)
    assert diff(got[0::2], want[0::2]) < ATOL and diff(got[1:2], base[1:2]) < ATOL
    assert diff(want, base) > 1e-2

    tied_a, tied_b = save_base(tmp_path / "ta", tie=True, seed=4), save_base(tmp_path / "tb", tie=True, seed=5)
    reg.publish(make_adapter(tied_a, tmp_path / "t", LoraConfig(r=2, target_modules=["embed_tokens"]), seed=91),
                name="emb/tied", version="1.0.0", base=tied_a)
    dep = ah.Deployment(str(tied_b), registry=reg)
    with pytest.warns(StructuralMatchWarning), pytest.raises(IncompatibleAdapterError, match="tied"):
        dep.attach("emb/tied")
    assert dep.adapters == {} and not dep._embeddings


def test_dora_on_an_embedding_is_refused_and_resolve_says_so(world, tmp_path):
    """PEFT has DoRA on embeddings; this runtime does not compute it: attach refuses it before
    loading, and resolve (the Python API and the CLI) lists it not runnable with the same reason."""
    from peft import LoraConfig

    from adapterhub_sdk.deploy_dir import attach_directory
    from adapterhub_sdk.plugins import get_runtime

    from conftest import run_cli

    reg = world["registry"]
    path = make_adapter(world["base"], tmp_path / "dora-emb",
                        LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"], use_dora=True), seed=92)
    reg.publish(path, name="refused/dora-emb", version="1.0.0", base=world["base"])
    manifest = reg.show("refused/dora-emb").manifest
    reasons = get_runtime("transformers").check_method({**manifest.method, "requirements": manifest.requirements})
    assert len(reasons) == 1 and "model.embed_tokens is an nn.Embedding" in reasons[0] and "DoRA" in reasons[0]
    dep = ah.Deployment(str(world["base"]), registry=reg)
    with pytest.raises(IncompatibleAdapterError) as exc:
        dep.attach("refused/dora-emb")
    assert exc.value.reasons == reasons
    assert dep.adapters == {} and not dep._wrapped and not dep._embeddings
    with pytest.raises(IncompatibleAdapterError) as exc:  # a directory (no manifest): refused by its tensors
        attach_directory(dep, path, name="d")
    assert exc.value.reasons == reasons

    hits = reg.resolve(world["base"], runtime="transformers", include_incompatible=True)
    listed = {h.name: h for h in hits}
    assert listed["refused/dora-emb"].verdict == "incompatible"
    assert listed["refused/dora-emb"].reasons[0] == reasons[0]
    assert "refused/dora-emb" not in {h.name for h in reg.resolve(world["base"], runtime="transformers")}
    env = {"ADAPTERHUB_REGISTRY_URL": str(reg.url), "ADAPTERHUB_BLOBS": str(world["tmp"] / "blobs")}
    proc = run_cli("resolve", "--base", str(world["base"]), "--runtime", "transformers", "--all", "--json",
                   env=env, check=True)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["refused/dora-emb"]["verdict"] == "incompatible" and rows["refused/dora-emb"]["reasons"][0] == reasons[0]
    assert all(rows[f"emb/{k}"]["verdict"] == "exact" for k in KINDS)


def test_a_base_embedding_with_max_norm_renormalises_as_peft_and_is_not_merged(world):
    """PEFT looks the LoRA rows up with the base module's max_norm (renormalising them in place,
    as the base's own lookup does): served the same; merging would change that, so it is refused."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def base() -> Any:
        model = AutoModelForCausalLM.from_pretrained(world["base"]).eval()
        model.model.embed_tokens.max_norm = 0.05  # below the rows' norms (base ~0.11, A ~0.14)
        return model

    dep = ah.Deployment(base(), registry=world["registry"])
    dep.attach("emb/emb-only", name="e")
    ids = ids_batch(3, seed=26)
    got = dep.forward(ids, ["e", None, "e"])
    with torch.no_grad():
        want = PeftModel.from_pretrained(base(), world["dirs"]["emb-only"]).eval()(input_ids=ids).logits
        plain = base()(input_ids=ids).logits
    assert diff(got[0::2], want[0::2]) < ATOL and diff(got[1:2], plain[1:2]) < ATOL
    assert diff(want, peft_logits(world, "emb-only", ids)) > 1e-3  # max_norm matters here
    with pytest.raises(IncompatibleAdapterError, match="max_norm"):
        dep.merge("e")
    assert dep.merged is None


def test_embedding_rows_in_one_continuous_batch_over_http(world):
    """The server's continuous scheduler (rows joining and leaving at each decode step) drives the
    same per-row selection: each request gets the tokens PEFT gives its adapter alone."""
    pytest.importorskip("uvicorn")
    from test_continuous import _gather, _tokens, serving

    dep = deployment(world)
    g = torch.Generator().manual_seed(27)
    kinds = ["emb", "lora", None, "emb-rs", "emb-only", "emb", "lora", "emb-only"]
    prompts = [torch.randint(2, VOCAB, (3 + i % 5,), generator=g).tolist() for i in range(len(kinds))]
    bodies = [{"model": kind or "tiny", "prompt": p, "max_tokens": 6, "temperature": 0, "logprobs": 1}
              for kind, p in zip(kinds, prompts, strict=True)]
    with serving(dep) as s:
        replies = _gather(s.url, bodies)
    for kind, p, reply in zip(kinds, prompts, replies, strict=True):
        got = [t.strip() for t in _tokens(reply["choices"][0])]
        assert got == [f"w{t}" for t in peft_greedy(world, kind, p, 6)], kind


def test_merge_refuses_a_weight_tied_to_another_module(world, tmp_path):
    """On a base whose LM head shares the input embedding's weight, folding an embedding LoRA
    (or an LM-head LoRA) into that weight would change the other module too: the merged model
    would not give the unmerged output (PEFT merges it anyway and its logits move). Merge is
    refused with the reason; the adapter keeps serving unmerged, exactly as PEFT runs it."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import save_base

    tied = save_base(tmp_path / "tied", tie=True, seed=6)
    reg = world["registry"]
    for kind, targets in (("emb", ["embed_tokens"]), ("head", ["lm_head", "q_proj"])):
        path = make_adapter(tied, tmp_path / kind, LoraConfig(r=2, lora_alpha=8, target_modules=targets), seed=92)
        reg.publish(path, name=f"tied/{kind}", version="1.0.0", base=tied)
    dep = ah.Deployment(str(tied), registry=reg)
    assert dep.model.lm_head.weight is dep.model.model.embed_tokens.weight
    ids = ids_batch(2, seed=26)
    for kind in ("emb", "head"):
        try:
            dep.attach(f"tied/{kind}", name=kind)
        except IncompatibleAdapterError:
            continue  # an LM-head LoRA PEFT saved with its copy of the head: refused at attach already
        with pytest.raises(IncompatibleAdapterError, match="tied to"):
            dep.merge(kind)
        assert dep.merged is None
        with torch.no_grad():
            want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tied),
                                             tmp_path / kind).eval()(input_ids=ids).logits
        assert diff(dep.forward(ids, kind), want) < ATOL, kind
    assert "emb" in dep.adapters

"""Deployment: one base in memory, many LoRA adapters attached from a real registry by spec.

Every adapter is a real PEFT save of the small Llama bases from conftest; every output is
compared with PEFT running the same adapter files (``adapter_names=`` for mixed batches,
``set_adapter`` for single ones), or with a plain transformers forward of the base.
Adapters are built once per module; each test publishes what it needs into the
``registry`` fixture (SQLite; PostgreSQL too when configured)."""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.deploy import StructuralMatchWarning

from conftest import save_lora

torch = pytest.importorskip("torch")

ATOL = 1e-5
EOS = 2  # LlamaConfig's default eos_token_id; the test bases have no tokenizer
#: rows of one mixed batch: several adapters of different ranks/targets/scalings, and base rows
MIXED = ["a", "b", None, "rs", "a", "pat", None, "wide", "b", "rs"]


# --------------------------------------------------------------------------- adapters


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, base_dir) -> dict[str, Path]:
    """name -> PEFT adapter dir, all on ``base_dir``."""
    d = tmp_path_factory.mktemp("deploy_adapters")
    return {
        "a": save_lora(base_dir, d / "a", seed=1),  # r=4 on q,v
        "a2": save_lora(base_dir, d / "a2", seed=11),  # another version of "a"
        "b": save_lora(base_dir, d / "b", seed=2, targets=("k_proj", "o_proj")),
        "rs": save_lora(base_dir, d / "rs", seed=3, r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                        use_rslora=True),
        "pat": save_lora(base_dir, d / "pat", seed=4, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                         rank_pattern={"v_proj": 8, "layers.1.self_attn.q_proj": 2},
                         alpha_pattern={"k_proj": 3, "o_proj": 32, "layers.0.self_attn.v_proj": 1}),
        "wide": save_lora(base_dir, d / "wide", seed=5, r=2,
                          targets=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")),
    }


@pytest.fixture(scope="module")
def dora_dir(tmp_path_factory, base_dir) -> Path:
    return save_lora(base_dir, tmp_path_factory.mktemp("dora") / "dora", seed=6, use_dora=True)


@pytest.fixture(scope="module")
def peft_ref(base_dir, adapters):
    """PEFT over a fresh copy of the base with every adapter of ``adapters`` loaded by name."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = list(adapters)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapters[names[0]],
                                      adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()


@pytest.fixture(scope="module")
def plain_base(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def peft_logits(peft_model, ids, names) -> torch.Tensor:
    """PEFT's logits; ``names`` is one adapter for all rows or a per-row list (None = base)."""
    with torch.no_grad():
        if isinstance(names, str):
            peft_model.set_adapter(names)
            return peft_model(input_ids=ids).logits
        return peft_model(input_ids=ids, adapter_names=[n or "__base__" for n in names]).logits


def batch(rows: int, width: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (rows, width), generator=g)


def publish_all(reg: ah.Registry, adapters: dict[str, Path], base_dir: Path, names=None) -> None:
    for name in names or adapters:
        reg.publish(adapters[name], name=f"acme/{name}", version="1.0.0", base=base_dir)


def deployment(reg: ah.Registry, adapters: dict[str, Path], base_dir: Path, names=None) -> ah.Deployment:
    """A Deployment of ``base_dir`` with ``names`` (default: all) published and attached as their short names."""
    publish_all(reg, adapters, base_dir, names)
    dep = ah.Deployment(str(base_dir), registry=reg)
    for name in names or adapters:
        dep.attach(f"acme/{name}@^1", name=name)
    return dep


def has_hooks(model) -> bool:
    return any(m._forward_hooks for m in model.modules())


def max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).abs().max())


# --------------------------------------------------------------------------- outputs


def test_mixed_batch_equals_peft_adapter_names(registry, base_dir, adapters, peft_ref, plain_base):
    dep = deployment(registry, adapters, base_dir)
    assert {a.verdict for a in dep.adapters.values()} == {"exact"}
    ids = batch(len(MIXED))
    ours = dep.forward(ids, MIXED)
    ref = peft_logits(peft_ref, ids, MIXED)
    assert max_diff(ours, ref) < ATOL
    with torch.no_grad():
        base = plain_base(input_ids=ids).logits
    for i, name in enumerate(MIXED):
        if name is None:  # base rows are untouched by the adapters beside them
            assert torch.equal(ours[i], base[i])
        else:  # and adapter rows really differ from the base
            assert max_diff(ours[i], base[i]) > 1e-3, name
    # the same batch in another row order gives the same rows
    perm = torch.randperm(len(MIXED), generator=torch.Generator().manual_seed(1))
    again = dep.forward(ids[perm], [MIXED[i] for i in perm])
    assert max_diff(again, ours[perm]) < ATOL


def test_cached_batch_stacks_follow_each_batch(registry, base_dir, adapters, peft_ref):
    """Mixed batches one after another, in any composition: each row PEFT's; nothing is kept
    between batches (a mixed batch computes each adapter's rows, it stacks nothing)."""
    dep = deployment(registry, adapters, base_dir, ["a", "a2", "b"])
    ids = batch(2, seed=11)
    for names in (["a", "a2"], ["a", "a2"], ["a2", "a"], ["a", "b"], ["a2", "a"], [None, "a"], ["a", "a2"]):
        assert max_diff(dep.forward(ids, names), peft_logits(peft_ref, ids, names)) < ATOL, names
    assert dep.memory()["batch_cache_bytes"] == 0
    big = ["a", "a2", None, "a", "b", "a2"]
    assert max_diff(dep.forward(batch(6, seed=12), big), peft_logits(peft_ref, batch(6, seed=12), big)) < ATOL
    assert dep.memory()["batch_cache_bytes"] == 0


def test_mixed_batch_with_attention_mask(registry, base_dir, adapters, peft_ref):
    dep = deployment(registry, adapters, base_dir, ["a", "rs"])
    ids = batch(3, width=9, seed=2)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :2] = 0
    names = ["rs", None, "a"]
    ours = dep.forward(ids, names, attention_mask=mask)
    with torch.no_grad():
        ref = peft_ref(input_ids=ids, attention_mask=mask, adapter_names=["rs", "__base__", "a"]).logits
    assert max_diff(ours, ref) < ATOL


@pytest.mark.parametrize("name", ["a", "b", "rs", "pat", "wide"])
def test_single_adapter_batch_equals_peft(registry, base_dir, adapters, peft_ref, name):
    """Every row on one adapter (the uniform fast path) equals PEFT's set_adapter forward."""
    dep = deployment(registry, adapters, base_dir, [name])
    ids = batch(3, seed=3)
    ours = dep.forward(ids, name)
    assert max_diff(ours, peft_logits(peft_ref, ids, name)) < ATOL
    assert max_diff(dep.forward(ids, [name] * 3), ours) < ATOL  # per-row list, same adapter


def test_rslora_and_patterns_scale_like_peft(registry, base_dir, adapters, peft_ref):
    """The scalings are not incidental: rsLoRA uses alpha/sqrt(r), patterns override rank
    and alpha per module, and a deployment that ignored either would differ from PEFT."""
    import json

    rs_cfg = json.loads((adapters["rs"] / "adapter_config.json").read_text())
    assert rs_cfg["use_rslora"] is True and rs_cfg["r"] == 8
    pat_cfg = json.loads((adapters["pat"] / "adapter_config.json").read_text())
    assert pat_cfg["rank_pattern"] and pat_cfg["alpha_pattern"]

    dep = deployment(registry, adapters, base_dir, ["rs", "pat"])
    # the per-module scale folded into B is exactly PEFT's scaling for that module
    peft_scalings = {}
    for mod_name, mod in peft_ref.named_modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict):
            for adapter in ("rs", "pat"):
                if adapter in mod.scaling:
                    peft_scalings[(adapter, mod_name.split("base_model.model.", 1)[-1])] = mod.scaling[adapter]
    assert peft_scalings[("rs", "model.layers.0.self_attn.q_proj")] == pytest.approx(16 / 8 ** 0.5)
    assert peft_scalings[("pat", "model.layers.0.self_attn.k_proj")] == pytest.approx(3 / 4)
    assert peft_scalings[("pat", "model.layers.1.self_attn.v_proj")] == pytest.approx(8 / 8)
    assert peft_scalings[("pat", "model.layers.0.self_attn.v_proj")] == pytest.approx(1 / 8)
    assert peft_scalings[("pat", "model.layers.1.self_attn.q_proj")] == pytest.approx(8 / 2)
    slots = {n: a.slot for n, a in dep.adapters.items()}
    ranks_seen = set()
    for (adapter, mod_name), scaling in peft_scalings.items():
        wrapper = dep._wrapped[mod_name]
        peft_mod = peft_ref.get_submodule("base_model.model." + mod_name)
        a = peft_mod.lora_A[adapter].weight  # [r, in]
        b = peft_mod.lora_B[adapter].weight  # [out, r]
        ranks_seen.add(a.shape[0])
        assert torch.equal(wrapper.A[slots[adapter]], a) and torch.equal(wrapper.B[slots[adapter]], b)
        assert wrapper.scaling[slots[adapter]] == scaling  # PEFT's, applied after the matmuls as PEFT does
    assert ranks_seen == {2, 4, 8}  # rank_pattern really gave other ranks

    ids = batch(4, seed=4)
    for names in (["rs"] * 4, ["pat"] * 4, ["pat", "rs", None, "pat"]):
        assert max_diff(dep.forward(ids, names), peft_logits(peft_ref, ids, names)) < ATOL


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A base whose outputs depend strongly on token positions (initializer_range 0.2: the
    default 0.02 gives near-uniform attention, where a wrong position id or a stale cache
    entry moves the logits by ~1e-4 only), two adapters on it, and PEFT over both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("sharp")
    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(d / "base")
    loras = {"g1": save_lora(d / "base", d / "g1", seed=21),
             "g2": save_lora(d / "base", d / "g2", seed=22, r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                             use_rslora=True)}
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(d / "base"), loras["g1"], adapter_name="g1")
    ref.load_adapter(loras["g2"], adapter_name="g2")
    return d / "base", loras, ref.eval()


def uncached_logits(peft_model, seq: list[int], name: str | None) -> torch.Tensor:
    """Next-token logits from a full forward of one unpadded row: no KV cache, default positions."""
    with torch.no_grad():
        return peft_model(input_ids=torch.tensor([seq]), adapter_names=[name or "__base__"]).logits[0, -1]


def test_generate_greedy_equals_uncached_reference(registry, sharp):
    """Greedy generation over one KV cache, rows of different prompt lengths (left padded,
    position ids from the mask) and different adapters: the logits of every step of every
    row equal a full forward without cache of that row's tokens so far, and every token is
    their argmax."""
    base, loras, ref = sharp
    dep = ah.Deployment(str(base), registry=registry)
    for n, d in loras.items():
        registry.publish(d, name=f"acme/{n}", version="1.0.0", base=base)
        dep.attach(f"acme/{n}", name=n)
    g = torch.Generator().manual_seed(7)
    lengths = [3, 11, 6, 1, 9]
    names = ["g1", None, "g2", "g2", "g1"]
    prompts = [torch.randint(3, 64, (n,), generator=g).tolist() for n in lengths]
    max_new = 10
    steps: list[torch.Tensor] = []  # last-position logits of every model call: prefill, then each decode step
    handle = dep.model.lm_head.register_forward_hook(lambda mod, args, y: steps.append(y[:, -1].clone()))
    streamed: list[tuple[int, int]] = []
    try:
        out = dep.generate(prompts, names, max_new_tokens=max_new,
                           on_token=lambda row, tok: streamed.append((row, tok)))
    finally:
        handle.remove()
    assert len(out) == len(prompts)
    checked = 0
    for i, (prompt, name, row) in enumerate(zip(prompts, names, out)):
        produced = row["token_ids"]
        assert row["prompt_tokens"] == len(prompt) and row["completion_tokens"] == len(produced)
        assert [t for r, t in streamed if r == i] == produced
        if row["finish_reason"] == "length":
            assert len(produced) == max_new
            chosen = produced
        else:  # stopped at eos: the step after the last token picked it
            assert row["finish_reason"] == "stop" and len(produced) < max_new
            chosen = [*produced, EOS]
        seq = list(prompt)
        for k, t in enumerate(chosen):
            expected = uncached_logits(ref, seq, name)
            assert max_diff(steps[k][i], expected) < 1e-4, (i, name, k)
            best = int(expected.argmax())
            assert t == best or float(expected[best] - expected[t]) < 1e-4, (i, name, k, t, best)
            seq.append(t)
            checked += 1
    assert checked >= 3 * max_new  # most rows ran the whole way
    # a row generated alone (no padding at all) gives the same tokens as inside the batch
    for i in (0, 2):
        alone = dep.generate([prompts[i]], names[i], max_new_tokens=max_new)[0]
        assert alone["token_ids"] == out[i]["token_ids"]


def test_generate_stops_rows_independently(registry, base_dir, adapters):
    dep = deployment(registry, adapters, base_dir, ["a"])
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    full = dep.generate(prompts, ["a", None], max_new_tokens=6)
    # stop row 0 after its second token from the streaming callback; row 1 is unaffected
    seen: dict[int, int] = {}

    def on_token(row: int, tok: int):
        seen[row] = seen.get(row, 0) + 1
        return not (row == 0 and seen[row] == 2)

    cut = dep.generate(prompts, ["a", None], max_new_tokens=6, on_token=on_token)
    assert cut[0]["token_ids"] == full[0]["token_ids"][:2] and cut[0]["finish_reason"] == "stop"
    assert cut[1]["token_ids"] == full[1]["token_ids"]


# --------------------------------------------------------------------------- merge


def test_merge_unmerge_is_exact(registry, base_dir, adapters, peft_ref):
    dep = deployment(registry, adapters, base_dir, ["a", "b"])
    ids = batch(3, seed=5)
    unmerged = dep.forward(ids, "a")
    mixed = dep.forward(ids, ["b", "a", None])
    original = {k: v.clone() for k, v in dep.model.state_dict().items()}

    dep.merge("a")
    assert dep.merged == "a" and dep.memory()["merged"] == "a"
    q = dep.model.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert not torch.equal(q, original["model.layers.0.self_attn.q_proj.weight"])  # really in the weights
    merged = dep.forward(ids, "a")
    assert max_diff(merged, unmerged) < ATOL
    assert max_diff(merged, peft_logits(peft_ref, ids, "a")) < ATOL
    assert dep.merged == "a"  # a batch of the merged adapter alone keeps it merged

    dep.unmerge()
    assert dep.merged is None
    for k, v in dep.model.state_dict().items():
        assert torch.equal(v, original[k]), k

    # a batch naming anything else unmerges first, exactly, and is computed unmerged
    dep.merge("a")
    again = dep.forward(ids, ["b", "a", None])
    assert dep.merged is None
    for k, v in dep.model.state_dict().items():
        assert torch.equal(v, original[k]), k
    assert max_diff(again, mixed) < ATOL
    # base-only rows too
    dep.merge("a")
    base_rows = dep.forward(ids, None)
    assert dep.merged is None
    assert torch.equal(base_rows, dep.forward(ids, [None, None, None]))

    # merging another adapter replaces the merged one; detaching the merged one unmerges it
    dep.merge("a")
    dep.merge("b")
    assert dep.merged == "b"
    assert max_diff(dep.forward(ids, "b"), peft_logits(peft_ref, ids, "b")) < ATOL
    dep.detach("b")
    assert dep.merged is None
    for k, v in dep.model.state_dict().items():
        assert torch.equal(v, original[k]), k


# --------------------------------------------------------------------------- lifecycle


def test_replace_swaps_version_under_the_same_name(registry, base_dir, adapters, peft_ref):
    registry.publish(adapters["a"], name="acme/a", version="1.0.0", base=base_dir)
    registry.publish(adapters["a2"], name="acme/a", version="1.1.0", base=base_dir)
    dep = ah.Deployment(str(base_dir), registry=registry)
    first = dep.attach("acme/a@1.0.0", name="live")
    dep.attach("acme/a@1.1.0", name="other")
    ids = batch(2, seed=6)
    assert max_diff(dep.forward(ids, "live"), peft_logits(peft_ref, ids, "a")) < ATOL
    mixed = ["live", "other"]
    assert max_diff(dep.forward(ids, mixed), peft_logits(peft_ref, ids, ["a", "a2"])) < ATOL
    before = dep.memory()

    second = dep.replace("live", "acme/a@1.1.0")
    assert list(dep.adapters) == ["live", "other"]
    assert dep.adapters["live"].ref == "acme/a@1.1.0" and second.digest != first.digest
    assert dep.memory()["batch_cache_bytes"] == 0
    assert max_diff(dep.forward(ids, "live"), peft_logits(peft_ref, ids, "a2")) < ATOL
    assert max_diff(dep.forward(ids, mixed), peft_logits(peft_ref, ids, ["a2", "a2"])) < ATOL
    assert dep.memory()["adapter_bytes"] == before["adapter_bytes"]  # the old version's tensors are gone
    assert all(first.slot not in w.A for w in dep._wrapped.values())
    with pytest.raises(ah.NotFoundError):
        dep.replace("nope", "acme/a@1.0.0")


def test_replace_of_the_merged_adapter_merges_the_new_version(registry, base_dir, adapters, peft_ref):
    registry.publish(adapters["a"], name="acme/a", version="1.0.0", base=base_dir)
    registry.publish(adapters["a2"], name="acme/a", version="1.1.0", base=base_dir)
    dep = ah.Deployment(str(base_dir), registry=registry)
    original = {k: v.clone() for k, v in dep.model.state_dict().items()}
    dep.attach("acme/a@1.0.0", name="live")
    dep.merge("live")
    ids = batch(2, seed=9)
    assert max_diff(dep.forward(ids, "live"), peft_logits(peft_ref, ids, "a")) < ATOL
    dep.replace("live", "acme/a@1.1.0")
    assert dep.merged == "live" and dep.adapters["live"].ref == "acme/a@1.1.0"
    assert max_diff(dep.forward(ids, "live"), peft_logits(peft_ref, ids, "a2")) < ATOL
    assert max_diff(dep.forward(ids, [None, None]), peft_logits(peft_ref, ids, [None, None])) < ATOL
    dep.unmerge()
    for k, v in dep.model.state_dict().items():  # only the new version was in the weights
        assert torch.allclose(v, original[k], atol=1e-6), k


def test_bad_deployment_input_is_refused_clearly(registry, base_dir, adapters):
    from adapterhub_sdk.generation import GenerationError

    registry.publish(adapters["a"], name="acme/a", version="1.0.0", base=base_dir)
    dep = ah.Deployment(str(base_dir), registry=registry)
    for bad in ("base", "", " x"):
        with pytest.raises(ah.InvalidNameError):
            dep.attach("acme/a@1.0.0", name=bad)
    assert dep.adapters == {}
    dep.attach("acme/a@1.0.0", name="a")
    ids = batch(3, seed=2)
    with pytest.raises(GenerationError, match="2 adapter names for a batch of 3"):
        dep.forward(ids, ["a", None])
    with pytest.raises(GenerationError, match="1 adapter names for a batch of 3"):
        dep.forward(ids, ["a"])
    with pytest.raises(GenerationError, match="no prompts"):
        dep.generate([], "a")
    vocab = dep.model.get_input_embeddings().num_embeddings
    with pytest.raises(GenerationError, match="outside the model's vocabulary"):
        dep.generate([[1, vocab]], "a", max_new_tokens=2)
    for t in (float("nan"), float("inf"), -0.5):
        with pytest.raises(GenerationError, match="temperature"):
            dep.generate([[1, 2]], "a", max_new_tokens=2, temperature=t)
    with pytest.raises(GenerationError, match="max_tokens"):
        dep.generate([[1, 2]], "a", max_new_tokens=True)
    greedy = dep.generate([[1, 2, 3]], "a", max_new_tokens=4)[0]["token_ids"]
    assert dep.generate([[1, 2, 3]], "a", max_new_tokens=4, temperature=1e-45, seed=0)[0]["token_ids"] == greedy


def test_detach_frees_the_adapter(registry, base_dir, adapters, peft_ref):
    dep = deployment(registry, adapters, base_dir, ["a", "a2", "b"])
    mem = dep.memory()
    assert mem["adapters"] == {n: dep.adapters[n].nbytes for n in ("a", "a2", "b")}
    assert mem["adapter_bytes"] == sum(mem["adapters"].values()) > 0
    slot = dep.adapters["a"].slot
    refs = [weakref.ref(t) for w in dep._wrapped.values() if slot in w.A for t in (w.A[slot], w.B[slot])]
    assert refs
    ids = batch(2, seed=7)
    dep.forward(ids, ["a", "a2"])
    assert dep.memory()["batch_cache_bytes"] == 0  # no per-row stacks hold copies of a's tensors

    dep.detach("a")
    after = dep.memory()
    assert "a" not in dep.adapters and "a" not in after["adapters"]
    assert after["adapter_bytes"] == mem["adapter_bytes"] - mem["adapters"]["a"]
    assert after["batch_cache_bytes"] == 0
    gc.collect()
    assert all(r() is None for r in refs)  # nothing keeps its tensors alive
    with pytest.raises(ah.NotFoundError):
        dep.forward(ids, ["b", "a"])
    with pytest.raises(ah.NotFoundError):
        dep.forward(ids, "a")
    with pytest.raises(ah.NotFoundError):
        dep.detach("a")
    for names in (["b", None], ["a2", "b"]):
        assert max_diff(dep.forward(ids, names), peft_logits(peft_ref, ids, names)) < ATOL


def test_describe_lists_attached(registry, base_dir, adapters):
    dep = deployment(registry, adapters, base_dir, ["a"])
    d = dep.describe()
    assert d["base"]["fingerprint"] == ah.fingerprint(base_dir).digest
    assert [a["name"] for a in d["adapters"]] == ["a"]
    a = d["adapters"][0]
    assert a["ref"] == "acme/a@1.0.0" and a["verdict"] == "exact" and a["rank"] == 4
    assert a["modules"] == 4  # q and v in 2 layers
    assert a["file_bytes"] == registry.show("acme/a@1.0.0").size


# --------------------------------------------------------------------------- refusals


def nothing_attached(dep: ah.Deployment) -> None:
    assert dep.adapters == {}
    assert dep.memory()["adapter_bytes"] == 0
    assert not has_hooks(dep.model)


def test_attach_refuses_other_shape_base(registry, base_dir, base_other_shape, tmp_path):
    lora = save_lora(base_other_shape, tmp_path / "wide_lora", seed=1)
    registry.publish(lora, name="acme/other-shape", version="1.0.0", base=base_other_shape)
    dep = ah.Deployment(str(base_dir), registry=registry)
    with pytest.raises(ah.IncompatibleAdapterError) as exc:
        dep.attach("acme/other-shape")
    assert exc.value.reasons
    assert any("self_attn.q_proj" in r or "self_attn.v_proj" in r for r in exc.value.reasons), exc.value.reasons
    assert "q_proj" in str(exc.value) or "v_proj" in str(exc.value)
    nothing_attached(dep)


def test_structural_match_warns_and_strict_refuses(registry, base_dir, base_other_weights, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = save_lora(base_other_weights, tmp_path / "other_weights_lora", seed=3)
    registry.publish(lora, name="acme/elsewhere", version="1.0.0", base=base_other_weights)

    strict = ah.Deployment(str(base_dir), registry=registry, strict=True)
    with pytest.raises(ah.IncompatibleAdapterError) as exc:
        strict.attach("acme/elsewhere")
    assert exc.value.reasons and "strict" in str(exc.value)
    nothing_attached(strict)

    dep = ah.Deployment(str(base_dir), registry=registry)
    with pytest.warns(StructuralMatchWarning):
        attached = dep.attach("acme/elsewhere", name="x")
    assert attached.verdict == "structural"
    ids = batch(2, seed=8)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora).eval()
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
    assert max_diff(dep.forward(ids, "x"), expected) < ATOL  # it runs, on this base's weights


def test_dora_is_served_and_a_refused_option_gets_the_runtime_reason(registry, base_dir, dora_dir, tmp_path):
    # DoRA runs (tests/test_deploy_variants.py covers every variant); what the runtime does not
    # compute as PEFT does is refused by attach with exactly the reasons resolve's check gives
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry.publish(dora_dir, name="acme/dora", version="1.0.0", base=base_dir)
    info = registry.show("acme/dora")
    assert info.variant == "dora"
    dep = ah.Deployment(str(base_dir), registry=registry)
    assert dep.runtime.check_method(info.manifest.method) == []
    dep.attach("acme/dora")
    ids = batch(2, seed=8)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), dora_dir).eval()
    with torch.no_grad():
        assert max_diff(dep.forward(ids, "acme/dora"), ref(input_ids=ids).logits) < ATOL

    dep = ah.Deployment(str(base_dir), registry=registry)
    alora = save_lora(base_dir, tmp_path / "alora", seed=6, alora_invocation_tokens=[5, 6])
    registry.publish(alora, name="acme/alora", version="1.0.0", base=base_dir)
    expected = dep.runtime.check_method(registry.show("acme/alora").manifest.method)
    assert expected and "activated LoRA" in expected[0]
    with pytest.raises(ah.IncompatibleAdapterError) as exc:
        dep.attach("acme/alora")
    assert exc.value.reasons == expected
    nothing_attached(dep)


def test_tampered_blob_is_refused_and_nothing_attached(registry, base_dir, adapters, plain_base):
    import os
    import stat

    publish_all(registry, adapters, base_dir, ["a"])
    info = registry.show("acme/a@1.0.0")
    sha = next(f.sha256 for f in info.manifest.files if f.path == "adapter_model.safetensors")
    blob = registry.blobs.path(sha)
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x01  # one bit in the last tensor's data: still loadable, no longer the published bytes
    blob.write_bytes(bytes(data))

    dep = ah.Deployment(str(base_dir), registry=registry)
    with pytest.raises(ah.IntegrityError):
        dep.attach("acme/a@1.0.0", name="a")
    nothing_attached(dep)
    ids = batch(2, seed=9)
    with torch.no_grad():
        assert torch.equal(dep.forward(ids, None), plain_base(input_ids=ids).logits)
    with pytest.raises(ah.NotFoundError):
        dep.forward(ids, "a")


# --------------------------------------------------------------------------- in-memory base


def test_deployment_over_in_memory_module(registry, base_dir, adapters, peft_ref):
    from transformers import AutoModelForCausalLM

    publish_all(registry, adapters, base_dir, ["a", "b"])
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    dep = ah.Deployment(model, registry=registry)
    assert dep.model is model and dep.base_path is None
    assert dep.fingerprint.digest == ah.fingerprint(base_dir).digest
    assert dep.attach("acme/a", name="a").verdict == "exact"
    dep.attach("acme/b", name="b")
    ids = batch(3, seed=10)
    names = ["a", "b", None]
    assert max_diff(dep.forward(ids, names), peft_logits(peft_ref, ids, names)) < ATOL
    # model calls inside use() see the same per-row adapters
    with torch.no_grad(), dep.use(names):
        direct = model(input_ids=ids).logits
    assert max_diff(direct, peft_logits(peft_ref, ids, names)) < ATOL
    with torch.no_grad():  # outside use() the model is the plain base again
        assert max_diff(model(input_ids=ids).logits, peft_logits(peft_ref, ids, [None] * 3)) < ATOL


def test_deployment_without_registry_cannot_attach(base_dir):
    from transformers import AutoModelForCausalLM

    dep = ah.Deployment(AutoModelForCausalLM.from_pretrained(base_dir))
    with pytest.raises(ah.NotFoundError):
        dep.attach("acme/a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dep.forward(batch(1), None).shape == (1, 12, 64)


def test_served_base_id_is_the_directory_name_even_for_dot(registry, base_dir, adapters, monkeypatch, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import shutil

    from adapterhub_sdk.server import create_app

    registry.publish(adapters["a"], name="acme/a", version="1.0.0", base=base_dir)
    mine = tmp_path / "my-llama"
    shutil.copytree(base_dir, mine)
    monkeypatch.chdir(mine)
    dep = ah.Deployment(".", registry=registry)
    assert create_app(dep).state.server.base_id == "my-llama"
    dep.attach("acme/a@1.0.0", name="my-llama")
    with pytest.raises(ah.AdapterHubError, match="base model's id"):
        create_app(dep)


def test_a_base_that_is_not_a_causal_lm_is_refused_before_loading(registry, tmp_path):
    """A BERT encoder (saved from a config) with a real PEFT LoRA resolves as exact, but
    ``AutoModelForCausalLM`` would load it as ``BertLMHeadModel`` under ``bert.``, and attach
    then said "missing module", contradicting resolve. Refused from config.json instead,
    before any weights load (no LoadedBaseWarning, which comes after loading), in Python and
    in ``serve``."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    from conftest import run_cli

    torch.manual_seed(0)
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(bert)
    lora = tmp_path / "bert-lora"
    get_peft_model(BertModel.from_pretrained(bert), LoraConfig(r=4, target_modules=["query", "value"])).save_pretrained(lora)
    registry.publish(lora, name="acme/bert-lora", version="1.0.0", base=bert, tasks=["ner"])
    assert [h.verdict for h in registry.resolve(bert)] == ["exact"]
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ah.AdapterHubError) as err:
        warnings.simplefilter("always")
        ah.Deployment(bert, registry=registry)
    assert "Deployment serves causal language models" in str(err.value) and "BertModel" in str(err.value)
    assert isinstance(err.value, ValueError) and "missing module" not in str(err.value)
    assert not [w for w in caught if "differs from its checkpoint" in str(w.message)]
    proc = run_cli("serve", "--base", str(bert), "--port", "0")
    assert proc.returncode == 1 and "Deployment serves causal language models" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

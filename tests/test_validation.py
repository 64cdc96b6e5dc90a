"""Adapter validation beyond shapes: LoRA files PEFT cannot load (ranks that disagree, half
pairs, DoRA magnitudes) are refused with or without a base; with a base, the adapter must
carry a pair for exactly the base modules its config selects (PEFT's target matching); and a
publish against a base records the fraction of the base's parameters the adapter trains.

Adapters are real (saved by PEFT on the small conftest Llama) and then edited with
safetensors.torch, the way a broken converter or a hand edit would."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.errors import AdapterFormatError, IncompatibleAdapterError
from adapterhub_sdk.fingerprint import BaseFingerprint
from adapterhub_sdk.methods.base import base_modules, check_targets, peft_target_matcher
from adapterhub_sdk.package import pack

from conftest import run_cli, save_lora

Q0 = "model.layers.0.self_attn.q_proj"
V1 = "model.layers.1.self_attn.v_proj"


# --------------------------------------------------------------------------- helpers


def tampered(src: Path, dest: Path, edit: Callable[[dict], dict] | None = None,
             config: Callable[[dict], dict] | None = None) -> Path:
    """A copy of the adapter at ``src`` whose tensors went through ``edit`` and whose
    adapter_config.json went through ``config``."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps(config(cfg) if config else cfg))
    tensors = load_file(src / "adapter_model.safetensors")
    save_file(edit(tensors) if edit else tensors, dest / "adapter_model.safetensors")
    return dest


def rank(module: str, new: int, *parts: str) -> Callable[[dict], dict]:
    """Cut ``module``'s named LoRA parts to rank ``new`` (A: rows, B: columns)."""
    def edit(t: dict) -> dict:
        out = {}
        for k, v in t.items():
            if module in k and any(f".{p}" in k for p in parts):
                v = (v[:new] if "_A" in k else v[:, :new]).contiguous()
            out[k] = v
        return out
    return edit


def drop(*needles: str) -> Callable[[dict], dict]:
    return lambda t: {k: v for k, v in t.items() if not any(n in k for n in needles)}


def peft_loads(base_dir: Path, adapter: Path) -> list[str]:
    """PEFT's own verdict: raises on a size mismatch; returns the keys it found missing."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    return [k for k, _ in model.named_parameters() if "lora_" in k]


@pytest.fixture(scope="module")
def fp_base(base_dir) -> BaseFingerprint:
    return ah.fingerprint(base_dir, use_cache=False)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, base_dir) -> Callable[..., Path]:
    """``adapters(name, **lora_kw)``: a real LoRA adapter saved by PEFT, made once per module."""
    root = tmp_path_factory.mktemp("validation")
    cache: dict[str, Path] = {}

    def get(name: str, **kw) -> Path:
        if name not in cache:
            targets = kw.pop("target_modules", ("q_proj", "v_proj"))
            cache[name] = save_lora(base_dir, root / name, seed=3, targets=targets, **kw)
        return cache[name]

    return get


# --------------------------------------------------------------------------- ranks (no base needed)


def test_lora_a_and_b_of_different_rank_are_refused(lora_dir, base_dir, registry, tmp_path):
    bad = tampered(lora_dir, tmp_path / "bad", rank(Q0, 3, "lora_A"))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the premise: PEFT cannot load it
        peft_loads(base_dir, bad)
    with pytest.raises(AdapterFormatError) as err:
        registry.publish(bad, name="acme/bad", version="1.0.0")
    msg = str(err.value)
    assert Q0 in msg and "rank mismatch" in msg and "lora_A is of rank 3" in msg and "lora_B of rank 4" in msg
    assert "\n" not in msg
    assert registry.list() == []


def test_rank_other_than_the_config_says_is_refused(lora_dir, base_dir, registry, tmp_path):
    bad = tampered(lora_dir, tmp_path / "bad", rank(Q0, 3, "lora_A", "lora_B"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft_loads(base_dir, bad)
    with pytest.raises(AdapterFormatError) as err:
        registry.publish(bad, name="acme/bad", version="1.0.0")
    msg = str(err.value)
    assert Q0 in msg and "rank mismatch" in msg and "r=4" in msg and "rank 3" in msg
    assert registry.list() == []


def test_rank_pattern_entry_makes_the_other_rank_legal(lora_dir, base_dir, fp_base, tmp_path):
    """The same tensors with a rank_pattern entry for that module: PEFT loads it, and so do we."""
    ok = tampered(lora_dir, tmp_path / "ok", rank(Q0, 3, "lora_A", "lora_B"),
                  config=lambda c: {**c, "rank_pattern": {"layers.0.self_attn.q_proj": 3}})
    peft_loads(base_dir, ok)
    pkg = pack(ok)
    assert pkg.check_base(fp_base) == []
    assert pkg.summary["ranks"] == [3, 4]
    # a pattern for another module leaves q_proj at r=4
    other = tampered(lora_dir, tmp_path / "other", rank(Q0, 3, "lora_A", "lora_B"),
                     config=lambda c: {**c, "rank_pattern": {"v_proj": 3}})
    with pytest.raises(AdapterFormatError, match=re.escape(Q0)):
        pack(other)


@pytest.mark.parametrize("part", ["lora_A", "lora_B"])
def test_half_a_pair_is_refused_with_and_without_base(part, lora_dir, base_dir, registry, tmp_path):
    other = "lora_B" if part == "lora_A" else "lora_A"
    bad = tampered(lora_dir, tmp_path / "bad", drop(f"{V1}.{other}"))
    for base in (None, base_dir):
        with pytest.raises(AdapterFormatError) as err:
            registry.publish(bad, name="acme/bad", version="1.0.0", base=base)
        assert V1 in str(err.value) and f"has {part} but no {other}" in str(err.value)
    assert registry.list() == []


def test_dora_magnitude_must_be_there_and_fit(adapters, base_dir, fp_base, tmp_path):
    dora = adapters("dora", use_dora=True)
    assert pack(dora).check_base(fp_base) == []
    with pytest.raises(AdapterFormatError, match=re.escape(V1) + ".*lora_magnitude_vector"):
        pack(tampered(dora, tmp_path / "no_mag", drop(f"{V1}.lora_magnitude_vector")))
    short = tampered(dora, tmp_path / "short", lambda t: {
        k: (v[:-1].clone() if k.endswith(f"{V1}.lora_magnitude_vector") else v) for k, v in t.items()})
    with pytest.raises(AdapterFormatError) as err:
        pack(short)
    assert V1 in str(err.value) and "15 entries for 16 output features" in str(err.value)
    # magnitudes in an adapter whose config does not ask for DoRA: PEFT would ignore them
    with pytest.raises(AdapterFormatError, match="use_dora"):
        pack(tampered(dora, tmp_path / "not_dora", config=lambda c: {**c, "use_dora": False}))


def test_adalora_ranks_must_agree(base_dir, fp_base, tmp_path):
    import torch
    from peft import AdaLoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "ada")
    assert pack(tmp_path / "ada").check_base(fp_base) == []
    bad = tampered(tmp_path / "ada", tmp_path / "bad", lambda t: {
        k: (v[:3].clone() if k.endswith(f"{Q0}.lora_E") else v) for k, v in t.items()})
    with pytest.raises(AdapterFormatError) as err:
        pack(bad)
    assert Q0 in str(err.value) and "rank mismatch" in str(err.value)
    with pytest.raises(AdapterFormatError, match=re.escape(f"'{Q0}' lacks lora_E")):
        pack(tampered(tmp_path / "ada", tmp_path / "no_e", drop(f"{Q0}.lora_E")))
    # with a base: a targeted module without its tensors is named
    gone = tampered(tmp_path / "ada", tmp_path / "gone", drop(V1))
    reasons = pack(gone).check_base(fp_base)
    assert len(reasons) == 1 and "missing adapter weights" in reasons[0] and V1 in reasons[0]


# --------------------------------------------------------------------------- coverage (with a base)


def test_missing_module_is_refused_with_a_base(lora_dir, base_dir, registry, tmp_path):
    bad = tampered(lora_dir, tmp_path / "bad", drop(V1))
    assert peft_loads(base_dir, bad)  # the premise: PEFT loads it, v_proj of layer 1 silently does nothing
    with pytest.raises(IncompatibleAdapterError) as err:
        registry.publish(bad, name="acme/bad", version="1.0.0", base=base_dir)
    assert err.value.reasons == [f"missing adapter weights: {V1} selected by target_modules "
                                 "but without lora_A/lora_B in the adapter"]
    assert V1 in str(err.value)
    assert registry.list() == []
    # without a base nothing says which modules exist: published, unpinned
    registry.publish(bad, name="acme/bad", version="1.0.0")


def test_unexpected_module_is_refused_with_or_without_a_base(lora_dir, fp_base, tmp_path):
    """Layer-1 v_proj's pair renamed to k_proj (same shape): PEFT would ignore k_proj's
    tensors and leave v_proj without any. The untargeted k_proj is refused as the files are
    packed, before any base is in hand; with a base both halves are named."""
    k1 = V1.replace("v_proj", "k_proj")
    bad = tampered(lora_dir, tmp_path / "bad", lambda t: {k.replace(V1, k1): v for k, v in t.items()})
    with pytest.raises(AdapterFormatError, match=f"unexpected adapter weights: {k1}.*PEFT would ignore them"):
        pack(bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    wrapped = {f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")} - {V1} | {k1}
    reasons = check_targets(config, wrapped, fp_base)
    assert len(reasons) == 2
    assert "missing adapter weights" in reasons[0] and V1 in reasons[0]
    assert "unexpected adapter weights" in reasons[1] and k1 in reasons[1]


def test_cli_publish_names_the_missing_module(lora_dir, base_dir, tmp_path):
    bad = tampered(lora_dir, tmp_path / "bad", drop(V1))
    proc = run_cli("publish", str(bad), "--name", "acme/bad", "--version", "1.0.0", "--base", str(base_dir))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "missing adapter weights" in line and V1 in line


@pytest.mark.parametrize(("name", "kw", "dropped", "missing"), [
    # layers_to_transform: layer 1 is not targeted, so its absence is right; layer 0's is not
    ("layers", {"layers_to_transform": [0]}, "model.layers.0.self_attn.v_proj",
     "model.layers.0.self_attn.v_proj"),
    ("layers-pattern", {"layers_to_transform": 1, "layers_pattern": "layers"}, V1, V1),
    # a regex over full names
    ("regex", {"target_modules": r".*\.layers\.1\.self_attn\.(q|v)_proj"}, V1, V1),
    # excluded modules carry nothing
    ("exclude", {"exclude_modules": [Q0]}, V1, V1),
    # PEFT expands all-linear to the full names (the output layer left out) before saving
    ("all-linear", {"target_modules": "all-linear"}, "model.layers.1.mlp.down_proj", "model.layers.1.mlp.down_proj"),
    # modules_to_save are never targeted
    ("modules-to-save", {"target_modules": ["q_proj", "lm_head"], "modules_to_save": ["lm_head"]}, V1.replace("v_", "q_"),
     V1.replace("v_", "q_")),
])
def test_target_forms(name, kw, dropped, missing, adapters, fp_base, tmp_path):
    adapter = adapters(name, **kw)
    assert pack(adapter).check_base(fp_base) == [], "PEFT's own adapter must pass"
    bad = tampered(adapter, tmp_path / "bad", drop(dropped))
    reasons = pack(bad).check_base(fp_base)
    assert len(reasons) == 1 and "missing adapter weights" in reasons[0] and missing in reasons[0], reasons


def test_unevaluable_forms_are_not_guessed(lora_dir, fp_base, tmp_path):
    """Where the config's selection depends on more than names, no module is called missing."""
    for i, edit in enumerate([
        lambda c: {**c, "target_modules": "all-linear"},  # depends on module classes
        lambda c: {**c, "ensure_weight_tying": True},
        lambda c: {**c, "target_modules": "(unbalanced"},  # not a regex Python can read
    ]):
        bad = tampered(lora_dir, tmp_path / f"bad{i}", drop(V1), config=edit)
        assert pack(bad).check_base(fp_base) == []


# --------------------------------------------------------------------------- PEFT's matching itself


MODULE_NAMES = [
    "model.embed_tokens", "lm_head", "model.norm",
    *[f"model.layers.{i}.{m}" for i in range(3) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm")],
    "model.layers.1.mlp.experts.0.down_proj", "model.layers.2.mlp.experts.1.down_proj",
    "vision.blocks.1.attn.q_proj", "q_proj",
]


@pytest.mark.parametrize("kw", [
    {"target_modules": ["q_proj", "v_proj"]},
    {"target_modules": ["self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"]},
    {"target_modules": r".*layers\.\d+\.self_attn\.(q|k)_proj"},
    {"target_modules": ["q_proj", "down_proj"], "exclude_modules": ["model.layers.0.self_attn.q_proj"]},
    {"target_modules": ["q_proj", "down_proj"], "exclude_modules": r".*experts.*"},
    {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [0, 2]},
    {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": 1, "layers_pattern": "layers"},
    {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1], "layers_pattern": ["blocks", "layers"]},
    {"target_modules": ["q_proj", "embed_tokens"], "modules_to_save": ["self_attn"]},
])
def test_matcher_agrees_with_peft(kw):
    """Our reading of a saved config selects what PEFT's check_target_module_exists selects
    (or says it cannot tell), name by name."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(r=4, **kw)
    select = peft_target_matcher(json.loads(json.dumps(config.to_dict(), default=sorted)))
    assert select is not None
    for key in MODULE_NAMES:
        ours = select(key)
        if ours is None:
            # undecided only where PEFT versions differ: the layer index of an expert's name,
            # and modules_to_save that the targets also name (adapted before PEFT 0.15)
            saved = any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in kw.get("modules_to_save", []))
            assert saved or ("layers_to_transform" in kw and "experts" in key), (key, kw)
            continue
        theirs = check_target_module_exists(config, key)
        theirs = bool(theirs) and type(theirs).__name__ != "_ExcludedModule"
        assert ours == theirs, (key, kw)


def test_base_modules_skip_layers_the_model_does_not_build(fp_base):
    from dataclasses import replace

    extra = {**fp_base.shapes, "model.layers.2.self_attn.q_proj.weight": (32, 32)}
    assert f"{Q0}" in base_modules(fp_base) and "model.norm" not in base_modules(fp_base)
    assert "model.layers.2.self_attn.q_proj" in base_modules(replace(fp_base, shapes=extra, config=None))
    cfg = {**(fp_base.config or {}), "num_hidden_layers": 2}
    assert "model.layers.2.self_attn.q_proj" not in base_modules(replace(fp_base, shapes=extra, config=cfg))


def test_expert_modules_count_only_where_the_adapter_has_their_kind(fp_base):
    """Per-expert checkpoint tensors may be one fused parameter in the model (transformers v5),
    which no module-targeting tuner wraps: their absence is not an error unless the adapter
    wraps experts of that kind elsewhere."""
    from dataclasses import replace

    experts = {f"model.layers.{i}.mlp.experts.{e}.down_proj": (32, 64) for i in range(2) for e in range(2)}
    base = replace(fp_base, shapes={**fp_base.shapes, **{f"{m}.weight": s for m, s in experts.items()}})
    config = {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj", "down_proj"]}
    dense = [f"model.layers.{i}.{m}" for i in range(2)
             for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
    assert check_targets(config, dense, base) == []
    [reason] = check_targets(config, [*dense, *list(experts)[1:]], base)
    assert "missing adapter weights" in reason and list(experts)[0] in reason
    [reason] = check_targets(config, dense[1:], base)  # a plain module is always expected
    assert dense[0] in reason and "experts" not in reason


# --------------------------------------------------------------------------- base_fraction


def test_base_fraction_when_the_base_is_known(lora_dir, base_dir, fp_base, registry, tmp_path):
    """show gives trainable / base parameters when the version is pinned to a base the
    registry knows; it is computed when shown, so manifests (and digests) do not carry it."""
    from safetensors.torch import load_file

    trainable = sum(t.numel() for t in load_file(lora_dir / "adapter_model.safetensors").values())
    registry.publish(lora_dir, name="acme/pinned", version="1.0.0", base=base_dir)
    info = registry.show("acme/pinned@1.0.0")
    assert info.manifest.method["summary"]["trainable_params"] == trainable
    assert "base_fraction" not in info.manifest.method["summary"]
    assert info.base_fraction == pytest.approx(trainable / fp_base.n_params, rel=1e-3)
    assert 0 < info.base_fraction < 0.1
    assert info.to_dict()["base_fraction"] == info.base_fraction
    # without a base the fraction is unknown, not guessed
    registry.publish(lora_dir, name="acme/loose", version="1.0.0")
    loose = registry.show("acme/loose@1.0.0")
    assert loose.base_fraction is None and "base_fraction" not in loose.to_dict()


def test_show_json_has_base_fraction(lora_dir, base_dir, fp_base):
    run_cli("publish", str(lora_dir), "--name", "acme/x", "--version", "1.0.0", "--base", str(base_dir), check=True)
    out = json.loads(run_cli("show", "acme/x@1.0.0", "--json", check=True).stdout)
    summary = out["manifest"]["method"]["summary"]
    assert out["base_fraction"] == pytest.approx(summary["trainable_params"] / fp_base.n_params, rel=1e-3)
    text = run_cli("show", "acme/x@1.0.0", check=True).stdout
    assert "% of the base" in text

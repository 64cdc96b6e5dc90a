"""TGI and LoRAX drop a LoRA module type on every layer when any one layer lacks it
(``prepare_weights``: ``if weight_name not in module_map: return None``). An adapter PEFT put
on some layers only (``exclude_modules``, per-layer ``target_modules`` names,
``layers_to_transform``) is exported with zero LoRA weights on the layers it leaves out, the
base's layer count read from a local base or from what the registry recorded of the pinned
base, or refused where that count cannot be known. Never a directory the server applies
differently from PEFT (before: a base named as the server sees it, ``/models/llama``, gave an
export with ``q_proj`` on layers 0-1 of 3 and a warning; TGI then applied no ``q_proj`` LoRA
at all). Each export is read back as TGI would (every module type on every layer, else
dropped) and by PEFT, and both reproduce PEFT's logits for the original adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.export import export

from conftest import run_cli, save_base, save_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = 3
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SERVER_PATH = "/models/llama"  # the base as the server sees it: not a directory here
TOL = 1e-5
IDS = torch.tensor([[1, 5, 9, 2, 33, 17, 4, 60]])

# name -> LoraConfig keywords beyond r/lora_alpha; which layers of q_proj and v_proj each adapts
CASES = {
    "exclude": dict(targets=("q_proj", "v_proj"), exclude_modules=["model.layers.2.self_attn.q_proj"]),
    "names": dict(targets=("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj")),
    "layers": dict(targets=("q_proj", "v_proj"), layers_to_transform=[0, 1]),
    "whole": dict(targets=("q_proj", "v_proj")),
}
# where the base's layer count comes from: (base_path, pinned) -> known
BASES = {
    "local-pinned": ("local", True),
    "local-unpinned": ("local", False),
    "server-path-pinned": (SERVER_PATH, True),  # the registry recorded the pinned base
    "server-path-unpinned": (SERVER_PATH, False),
    "none-pinned": (None, True),
    "none-unpinned": (None, False),
}


@pytest.fixture(scope="module")
def base3(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("partial") / "base3", layers=LAYERS, seed=3)


@pytest.fixture(scope="module")
def adapters(base3) -> dict[str, Path]:
    root = base3.parent
    out = {}
    for i, (case, kw) in enumerate(CASES.items()):
        kw = dict(kw)
        out[case] = save_lora(base3, root / f"lora_{case}", seed=20 + i, targets=kw.pop("targets"), **kw)
    return out


def _base_model(base3: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base3, dtype=torch.float32).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.to(torch.float64)


@pytest.fixture(scope="module")
def peft_logits(adapters, base3) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return {case: _logits(PeftModel.from_pretrained(_base_model(base3), str(d)).eval())
            for case, d in adapters.items()}


def _held(adapter_dir: Path) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """(module type, layer) -> (lora_A, lora_B) as the exported file holds them."""
    from safetensors.torch import load_file

    t = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in t.items():
        m = re.fullmatch(r"base_model\.model\.model\.layers\.(\d+)\.\w+\.(\w+)\.lora_A\.weight", key)
        if m:
            out[(m[2], int(m[1]))] = (a, t[key.replace("lora_A", "lora_B")])
    return out


def tgi_logits(adapter_dir: Path, base3: Path) -> torch.Tensor:
    """The base with the LoRA TGI/LoRAX apply from these files: one scale lora_alpha / r, per
    module type the layers' weights stacked over all ``num_hidden_layers``, a type missing from
    any layer dropped for every layer."""
    from peft import LoraConfig

    cfg = LoraConfig.from_pretrained(str(adapter_dir))
    scale = cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)
    held = _held(adapter_dir)
    model = _base_model(base3)
    n_layers = model.config.num_hidden_layers
    mods = dict(model.named_modules())
    with torch.no_grad():
        for kind in TYPES:
            if not all((kind, i) in held for i in range(n_layers)):
                continue  # prepare_weights returns None for this type
            assert len({held[kind, i][0].shape[0] for i in range(n_layers)}) == 1, f"{kind}: ranks differ"
            for i in range(n_layers):
                a, b = held[kind, i]
                w = next(m for n, m in mods.items() if n.endswith(f"layers.{i}.self_attn.{kind}")
                         or n.endswith(f"layers.{i}.mlp.{kind}")).weight
                w += ((b.to(torch.float64) * scale) @ a.to(torch.float64)).to(w.dtype)
    return _logits(model)


def _peft_export_logits(adapter_dir: Path, base3: Path) -> torch.Tensor:
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(_base_model(base3), str(adapter_dir)).eval())


def _publish(registry, adapter: Path, base3: Path, pinned: bool, name: str = "acme/partial") -> str:
    registry.publish(adapter, name=name, version="1.0.0", base=base3 if pinned else None)
    return f"{name}@1.0.0"


def _types_on(adapter_dir: Path) -> dict[str, set[int]]:
    by: dict[str, set[int]] = {}
    for kind, i in _held(adapter_dir):
        by.setdefault(kind, set()).add(i)
    return by


@pytest.mark.parametrize("fmt", ["tgi", "lorax"])
@pytest.mark.parametrize("where", list(BASES))
@pytest.mark.parametrize("case", list(CASES))
def test_a_partial_adapter_is_zero_filled_or_refused(case, where, fmt, registry, adapters, base3, peft_logits,
                                                     tmp_path):
    bp, pinned = BASES[where]
    base_path = str(base3) if bp == "local" else bp
    ref = _publish(registry, adapters[case], base3, pinned)
    out = tmp_path / "out"
    layer_count_known = bp == "local" or pinned
    if case != "whole" and not layer_count_known:
        with pytest.raises(ah.IncompatibleAdapterError, match="layer count is unknown") as e:
            export(registry, ref, fmt, out, base_path=base_path)
        assert "base_path=BASE_DIR" in (e.value.hint or "")
        assert "\n" not in str(e.value)
        assert not out.exists()
        return
    res = export(registry, ref, fmt, out, base_path=base_path)
    types = _types_on(res.adapter_path)
    # as TGI's prepare_weights sees the files: every module type on every layer
    assert types == {t: set(range(LAYERS)) for t in types}, types
    want = peft_logits[case]
    worst = float((tgi_logits(res.adapter_path, base3) - want).abs().max())
    assert worst <= TOL, f"{fmt} would compute logits {worst:.3g} away from PEFT's"
    worst = float((_peft_export_logits(res.adapter_path, base3) - want).abs().max())
    assert worst <= TOL, f"the {fmt} export loads in PEFT {worst:.3g} away"
    filled = res.details.get("exact", {}).get("zero_filled") or []
    if case == "whole":
        assert not filled
        assert (res.adapter_path / "adapter_model.safetensors").read_bytes() == \
            (adapters[case] / "adapter_model.safetensors").read_bytes()
    else:
        assert filled and any("zero LoRA weights" in w for w in res.warnings)


def test_the_exclusion_shows_in_the_tensors_without_the_config(registry, adapters, base3, tmp_path):
    """exclude_modules leaving out the last layer's q_proj: the files alone show q_proj on
    layers 0-1 and v_proj on 0-2, whatever the config says (here: the config's exclusion
    removed, as another tool might write it), so an unknown layer count is refused."""
    import shutil

    d = tmp_path / "no_exclude_in_config"
    shutil.copytree(adapters["exclude"], d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["exclude_modules"] = None
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    ref = _publish(registry, d, base3, pinned=False)
    with pytest.raises(ah.IncompatibleAdapterError, match=r"q_proj on layers 0-1 only \(of 0-2\)"):
        export(registry, ref, "tgi", tmp_path / "out", base_path=SERVER_PATH)
    assert not (tmp_path / "out").exists()


def test_a_pinned_base_the_registry_never_recorded_is_refused(oci, reg, other, adapters, base3, tmp_path):
    """A version pulled from an OCI registry is pinned, but this registry has never seen the
    base: no layer count, so refused, unless a local base directory is given."""
    from adapterhub_sdk.oci.remote import OciRemote

    reg.publish(adapters["exclude"], name="acme/pulled", version="1.0.0", base=base3)
    OciRemote(insecure=True).push(reg, "acme/pulled@1.0.0", f"oci://{oci.host}/t/partial-review")
    OciRemote(insecure=True).pull(other, f"oci://{oci.host}/t/partial-review:1.0.0", tmp_path / "pulled")
    with pytest.raises(ah.IncompatibleAdapterError, match="layer count is unknown"):
        export(other, "acme/pulled@1.0.0", "tgi", tmp_path / "out", base_path=SERVER_PATH)
    with pytest.raises(ah.IncompatibleAdapterError, match="layer count is unknown"):
        export(other, "acme/pulled@1.0.0", "lorax", tmp_path / "out")
    res = export(other, "acme/pulled@1.0.0", "tgi", tmp_path / "out", base_path=base3)
    assert _types_on(res.adapter_path) == {"q_proj": {0, 1, 2}, "v_proj": {0, 1, 2}}


def test_the_cli_refusal_is_one_line_naming_base_path(adapters, base3, tmp_path):
    with ah.Registry.open() as reg:
        _publish(reg, adapters["names"], base3, pinned=False, name="acme/names")
    r = run_cli("export", "acme/names@1.0.0", "--format", "tgi", "--out", str(tmp_path / "out"),
                "--base-path", SERVER_PATH)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot export acme/names@1.0.0 for TGI"), r.stderr
    assert "layer count is unknown" in lines[0] and "--base-path BASE_DIR" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    ok = run_cli("export", "acme/names@1.0.0", "--format", "tgi", "--out", str(tmp_path / "out"),
                 "--base-path", str(base3), "--json")
    assert ok.returncode == 0, ok.stderr
    path = Path(json.loads(ok.stdout)["adapter_path"])
    assert _types_on(path) == {"q_proj": {0, 1, 2}}

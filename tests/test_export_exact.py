"""Exports are exact or refused: for every target, the per-module delta the target computes
from the exported files, by that target's own rules, is PEFT's delta for the original adapter
(max abs diff <= 1e-6 in fp32), or the export is refused with the reason.

The readers below follow what each server's source does with a PEFT LoRA directory:

- peft: PEFT itself loads the exported directory (merge, subtract the base).
- vllm: ``PEFTHelper`` (0.33): PEFT's rules, ``rank_pattern``/``alpha_pattern`` and rsLoRA.
- tgi, lorax (``adapters/lora.py``): ``peft.LoraConfig.from_pretrained`` for ``r``,
  ``lora_alpha``, ``use_rslora``; one scale ``lora_alpha / r`` (``/ sqrt(r)``) for every
  module; per layer type the layers' A and B are stacked (one rank per type, else the load
  fails); a type missing from any layer is dropped for all layers.
- ollama (``convert.ConvertAdapter`` + llama.cpp): ``lora_parameters.alpha`` else
  ``lora_alpha`` parsed as a uint32 (a fraction or negative fails); tensor names renamed
  for the attention/MLP projections (anything else has no base tensor in llama.cpp);
  scale ``alpha / rank`` with the module's own rank (1 when alpha is 0). The q/k row
  permutation Ollama applies to lora_A matches the one applied to the base and leaves the
  delta unchanged, so the reader skips it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.export import export

TOL = 1e-6
SERVERS = ("vllm", "lorax", "tgi", "ollama")
FORMATS = ("peft", *SERVERS)
NAME = "acme/exact"

# name -> LoraConfig keyword arguments (r and lora_alpha included)
CASES = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 6}, alpha_pattern={"v_proj": 3}),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True),
    "rslora_patterns": dict(r=4, lora_alpha=5, target_modules=["q_proj", "v_proj"], use_rslora=True,
                            rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 7}),
    "fractional_alpha": dict(r=4, lora_alpha=6.5, target_modules=["q_proj", "v_proj"]),
    "some_layers": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[0]),
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True),
}
# (case, format) pairs the export must refuse, with what the reason says
REFUSED = {("dora", fmt): "DoRA" for fmt in SERVERS}


def _build(base_dir: Path, out: Path, seed: int, **kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "magnitude" in name else 0.0))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(models_dir, base_dir) -> dict[str, Path]:
    return {case: _build(base_dir, models_dir / f"exact_{case}", seed=i + 10, **kw)
            for i, (case, kw) in enumerate(CASES.items())}


@pytest.fixture(scope="module")
def base_weights(base_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n}


def _peft_delta(base_dir: Path, adapter_dir: Path, base_weights) -> dict[str, torch.Tensor]:
    """PEFT's delta per base module: merge the adapter, subtract the base weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      str(adapter_dir)).merge_and_unload()
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().to(torch.float32) - w for n, w in base_weights.items()}


@pytest.fixture(scope="module")
def reference(adapters, base_dir, base_weights) -> dict[str, dict[str, torch.Tensor]]:
    return {case: _peft_delta(base_dir, d, base_weights) for case, d in adapters.items()}


# --------------------------------------------------------------------------- the targets' readers


def _pairs(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_A\.weight", key)
        if m and f"base_model.model.{m[1]}.lora_B.weight" in tensors:
            out[m[1]] = (a.to(torch.float64), tensors[f"base_model.model.{m[1]}.lora_B.weight"].to(torch.float64))
    return out


def _pattern(pattern: dict, module: str, default):
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_vllm(adapter_dir: Path, base_weights) -> dict[str, torch.Tensor]:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not cfg.get("use_dora") and not cfg.get("modules_to_save")
    out = {}
    for name, (a, b) in _pairs(adapter_dir).items():
        r = _pattern(cfg.get("rank_pattern"), name, cfg["r"])
        alpha = _pattern(cfg.get("alpha_pattern"), name, cfg["lora_alpha"])
        out[name] = (b @ a) * (alpha / (math.sqrt(r) if cfg.get("use_rslora") else r))
    return out


def read_tgi(adapter_dir: Path, base_weights) -> dict[str, torch.Tensor]:
    """TGI and LoRAX: one scale, layer types stacked, a type some layer lacks is dropped."""
    from peft import LoraConfig

    cfg = LoraConfig.from_pretrained(str(adapter_dir))
    scale = cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)
    pairs = _pairs(adapter_dir)
    n_layers = 1 + max(int(re.search(r"\.layers\.(\d+)\.", n)[1]) for n in base_weights)
    out = {}
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        names = [next(n for n in base_weights if f".layers.{i}." in n and n.endswith("." + kind))
                 for i in range(n_layers)]
        if not all(n in pairs for n in names):
            continue  # prepare_weights returns None: the type is dropped for every layer
        ranks = {pairs[n][0].shape[0] for n in names}
        assert len(ranks) == 1, f"torch.stack fails: {kind} has ranks {sorted(ranks)} across layers"
        for n in names:
            a, b = pairs[n]
            out[n] = (b * scale) @ a
    return out


_OLLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down",
                 "mlp.up_proj": "ffn_up"}


def read_ollama(adapter_dir: Path, base_weights) -> dict[str, torch.Tensor]:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    lp = cfg.get("lora_parameters") or {}
    if lp.get("alpha"):
        alpha = float(lp["alpha"])
    else:
        raw = cfg.get("lora_alpha", 0)
        assert isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**32, \
            f"Ollama fails to parse lora_alpha {raw!r} as a uint32"
        alpha = float(raw)
    back = {v: k for k, v in _OLLAMA_NAMES.items()}
    out = {}
    for name, (a, b) in _pairs(adapter_dir).items():
        gguf = name.replace("model.layers", "blk")
        for hf, gg in _OLLAMA_NAMES.items():
            gguf = gguf.replace(hf, gg)
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)", gguf)
        assert m and m[2] in back, f"llama.cpp: {gguf}.weight.lora_a has no base tensor"
        rank = b.shape[1]  # lw->b->ne[0]
        scale = alpha / rank if alpha else 1.0
        out[f"model.layers.{m[1]}.{back[m[2]]}"] = (b @ a) * scale
    return out


def read_peft(adapter_dir: Path, base_weights, base_dir: Path) -> dict[str, torch.Tensor]:
    return _peft_delta(base_dir, adapter_dir, base_weights)


READERS = {"vllm": read_vllm, "lorax": read_tgi, "tgi": read_tgi, "ollama": read_ollama}


def _max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert set(got) <= set(want), f"deltas for modules the base lacks: {sorted(set(got) - set(want))}"
    worst, where = 0.0, ""
    for name, w in want.items():
        g = got.get(name)
        d = float((w.to(torch.float64) - (g if g is not None else torch.zeros_like(w)).to(torch.float64))
                  .abs().max())
        if d > worst:
            worst, where = d, name
    return worst, where


# --------------------------------------------------------------------------- the property


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_export_is_exact_or_refused(case, fmt, registry, adapters, reference, base_dir, base_weights, tmp_path):
    registry.publish(adapters[case], name=NAME, version="1.0.0", base=base_dir)
    out = tmp_path / "out"
    if (case, fmt) in REFUSED:
        with pytest.raises(ah.IncompatibleAdapterError, match=REFUSED[case, fmt]):
            export(registry, NAME, fmt, out, base_path=base_dir)
        assert not out.exists()
        return
    res = export(registry, NAME, fmt, out, base_path=base_dir)
    if fmt == "peft":
        got = read_peft(res.adapter_path, base_weights, base_dir)
    else:
        got = READERS[fmt](res.adapter_path, base_weights)
    worst, where = _max_diff(got, reference[case])
    assert worst <= TOL, f"{fmt} computes a delta {worst:.3g} away from PEFT's at {where}"
    # the exported directory still loads in PEFT with PEFT's deltas
    worst, where = _max_diff(read_peft(res.adapter_path, base_weights, base_dir), reference[case])
    assert worst <= TOL, f"the {fmt} export loads in PEFT {worst:.3g} away at {where}"
    if case == "plain" and fmt != "peft":  # nothing to fold: the files are PEFT's, byte for byte
        assert not any("rewritten" in w for w in res.warnings)
        assert (res.adapter_path / "adapter_model.safetensors").read_bytes() == \
            (adapters[case] / "adapter_model.safetensors").read_bytes()


def test_folding_is_stated_in_the_readme(registry, adapters, base_dir, tmp_path):
    registry.publish(adapters["patterns"], name=NAME, version="1.0.0", base=base_dir)
    res = export(registry, NAME, "tgi", tmp_path / "t", base_path=base_dir)
    assert any("folded into lora_B" in w and "zero-padded" in w for w in res.warnings)
    assert "folded into lora_B" in (tmp_path / "t" / "README.md").read_text()
    assert res.details["exact"]["padded_rank"] == 6


def test_a_module_type_on_some_layers_needs_the_layer_count(registry, adapters, base_dir, tmp_path):
    """Without a base config TGI's zero-fill cannot know the layers: refused, not guessed."""
    registry.publish(adapters["some_layers"], name="acme/unpinned", version="1.0.0")  # no pin, no base config
    with pytest.raises(ah.IncompatibleAdapterError, match="layer count"):
        export(registry, "acme/unpinned", "tgi", tmp_path / "t")
    assert not (tmp_path / "t").exists()


# --------------------------------------------------------------------------- what servers drop


@pytest.mark.parametrize("fmt", ["lorax", "tgi", "ollama"])
@pytest.mark.parametrize("kw, says", [
    (dict(lora_bias=True), "LoRA bias"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(target_modules=["q_proj", "embed_tokens"]), "embed"),
], ids=["lora_bias", "modules_to_save", "embedding"])
def test_what_a_server_would_drop_is_refused(fmt, kw, says, registry, models_dir, base_dir, tmp_path):
    args = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args.update(kw)
    adapter = models_dir / f"drop_{'_'.join(sorted(kw))}"
    if not adapter.exists():
        _build(base_dir, adapter, seed=3, **args)
    registry.publish(adapter, name=NAME, version="1.0.0", base=base_dir)
    with pytest.raises(ah.IncompatibleAdapterError, match=says):
        export(registry, NAME, fmt, tmp_path / fmt, base_path=base_dir)
    assert not (tmp_path / fmt).exists()


@pytest.mark.parametrize("arch", ["gemma", "mistral"])
def test_ollama_refuses_a_base_its_adapter_converter_does_not_take(arch, registry, adapters, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(arch, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=64)
    base = tmp_path / arch
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base)
    registry.publish(adapters["plain"], name="acme/unpinned", version="1.0.0")  # no pin: the architecture decides
    with pytest.raises(ah.IncompatibleAdapterError, match=f"only llama and gemma2 bases; this base is '{arch}'"):
        export(registry, "acme/unpinned", "ollama", tmp_path / "o", base_path=base)
    assert not (tmp_path / "o").exists()


def test_ollama_refuses_a_rank_its_converter_would_transpose(registry, models_dir, base_dir, tmp_path):
    """k_proj is 16 wide here: a rank-20 lora_B [16, 20] looks like another layout to Ollama."""
    adapter = models_dir / "wide_rank"
    if not adapter.exists():
        _build(base_dir, adapter, seed=4, r=20, lora_alpha=20, target_modules=["k_proj"])
    registry.publish(adapter, name=NAME, version="1.0.0", base=base_dir)
    with pytest.raises(ah.IncompatibleAdapterError, match="rank 20 above its width"):
        export(registry, NAME, "ollama", tmp_path / "o", base_path=base_dir)
    export(registry, NAME, "tgi", tmp_path / "t", base_path=base_dir)  # TGI has no such rule

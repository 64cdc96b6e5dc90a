"""Exports are exact or refused: each target server gets LoRA files whose per-module delta,
computed by that server's own rules, is PEFT's delta for the adapter, or a refusal naming
what the server cannot represent.

What the servers do with a PEFT LoRA directory (read in their sources):

- TGI and LoRAX (``adapters/lora.py``): one scale for every module, ``lora_alpha / r``
  (``/ sqrt(r)`` with ``use_rslora``) from ``adapter_config.json``; ``rank_pattern`` and
  ``alpha_pattern`` are never read. Per layer type the weights of all layers are stacked, and
  a type missing from any one layer is dropped for every layer (``if weight_name not in
  module_map: return None``). Only ``lora_A.weight``/``lora_B.weight`` of the attention and
  MLP projections are used; any other tensor is left unused.
- Ollama (``convert.ConvertAdapter``): bases converted as ``llama`` or ``gemma2`` only; one
  alpha, ``lora_parameters.alpha`` else ``lora_alpha`` read as an unsigned 32-bit integer
  (a fraction or a negative number fails to parse); llama.cpp then scales each module by
  ``alpha / rank`` with the module's own rank (``lw->b->ne[0]``), or by 1 when alpha is 0.
  Tensor names are mapped for the attention and MLP projections only.
- vLLM: PEFT's rules (patterns included, from 0.33); older releases apply one
  ``lora_alpha / r`` (``PEFTHelper``), so patterns are folded for vLLM as well, which is
  exact under both.

Where a target applies one scale, the per-module scale is folded into ``lora_B`` (computed
in float32) and the written config makes the target's scale 1 (``r == lora_alpha``); ranks
are zero-padded to one rank where the target stacks layers; layers a module type is missing
from (read from the tensors, whatever the config says) get zero LoRA weights (delta 0, as in
PEFT), so TGI and LoRAX keep the type. That needs the base's layer count (a local base, or
what the registry recorded of the pinned base); an adapter that may leave layers out is
refused without it. The rewritten directory still loads in PEFT with the same output.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import OLLAMA_MODEL_TYPES, TARGETS

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

#: module types TGI and LoRAX apply LoRA to on their flash Llama-family models
SERVER_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: PEFT module paths Ollama's llama/gemma2 adapter converters rename to GGUF tensors
OLLAMA_MODULE_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$")
#: HF ``model_type`` values Ollama's adapter converter takes (see common.OLLAMA_MODEL_TYPES)
OLLAMA_ADAPTER_BASES = OLLAMA_MODEL_TYPES
#: init_lora_weights values whose saved weights are a plain LoRA on the unchanged base
INIT_OK = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
UINT32_MAX = 2**32 - 1

_KEY_RE = re.compile(r"^base_model\.model\.(?P<mod>.+)\.lora_(?P<ab>[AB])\.weight$")
#: an embedding's LoRA (PEFT's ``lora_embedding_A [r, vocab]``, ``lora_embedding_B [dim, r]``)
_EMB_RE = re.compile(r"^base_model\.model\.(?P<mod>.+)\.lora_embedding_(?P<ab>[AB])$")
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


#: the options config_refusals (and limitations' DoRA check) decide on
CHECKED = frozenset({"lora_bias", "bias", "modules_to_save", "init_lora_weights", "fan_in_fan_out",
                     "alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora",
                     "target_parameters", "trainable_token_indices", "use_dora"})


def config_refusals(target: str, config: Mapping[str, Any]) -> list[str]:
    """Reasons a server that loads only plain LoRA matrices (TGI, LoRAX, Ollama) cannot
    serve an adapter with this config as PEFT does."""
    reasons = []
    if config.get("lora_bias"):
        reasons.append(f"{target} does not load LoRA bias (lora_bias=true); the lora_B bias vectors would be "
                       "dropped")
    if config.get("bias") not in (None, "none"):
        reasons.append(f"{target} does not load adapter bias (bias={config.get('bias')!r}); the trained biases "
                       "would be dropped")
    if config.get("modules_to_save"):
        reasons.append(f"{target} does not load modules_to_save ({', '.join(map(str, config['modules_to_save']))}); "
                       "those trained modules would be dropped")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() not in INIT_OK:
        reasons.append(f"{target} does not support init_lora_weights={init!r} (it changes the base weights); "
                       "convert the adapter to a plain LoRA with PEFT first")
    if config.get("fan_in_fan_out"):
        reasons.append(f"{target} does not apply fan_in_fan_out=true (Conv1D bases such as GPT-2)")
    for key, what in (("alora_invocation_tokens", "Activated LoRA (aLoRA)"),
                      ("layer_replication", "layer_replication"), ("use_bdlora", "block-diagonal LoRA"),
                      ("use_qalora", "QALoRA"), ("target_parameters", "LoRA on parameters (target_parameters)"),
                      ("trainable_token_indices", "trainable tokens (trainable_token_indices)")):
        if config.get(key):
            reasons.append(f"{target} does not support {what}")
    return reasons


def _pattern_value(pattern: Any, module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the
    module path (as a regex, at a dot boundary)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def peft_scale(config: Mapping[str, Any], module: str) -> float:
    """The factor PEFT multiplies ``B @ A`` by for ``module``."""
    r = _pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


def uniform_scale(config: Mapping[str, Any]) -> float:
    """The one factor TGI and LoRAX (and vLLM before 0.33) apply: ``lora_alpha / r``
    (``/ sqrt(r)`` with rsLoRA), ignoring the patterns."""
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


def ollama_alpha(config: Mapping[str, Any]) -> float | None:
    """The alpha Ollama's converter reads, or None where it fails to parse the config."""
    lp = config.get("lora_parameters")
    if isinstance(lp, dict) and isinstance(lp.get("alpha"), (int, float)) and lp["alpha"]:
        return float(lp["alpha"])
    alpha = config.get("lora_alpha", 0)
    if isinstance(alpha, bool) or not isinstance(alpha, int) or not 0 <= alpha <= UINT32_MAX:
        return None  # Go's json cannot put 6.5, 8.0 or -4 into a uint32
    return float(alpha)


@dataclass
class Conformed:
    """What :func:`conform` decided: refusal reasons, or the notes on what it rewrote."""

    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None  # what to do about the reasons, where it is not "export as PEFT"
    rewritten: bool = False  # the adapter's files were rewritten (their digests are no longer the manifest's)


@dataclass
class _Module:
    name: str  # PEFT's module path, e.g. model.layers.0.self_attn.q_proj
    a: Any
    b: Any

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def _read(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / CONFIG).read_text(encoding="utf-8"))
    weights = adapter_dir / WEIGHTS
    if not weights.is_file():
        return config, {}
    return config, dict(load_file(str(weights)))


def _modules(tensors: Mapping[str, Any]) -> tuple[dict[str, _Module], list[str]]:
    """The LoRA modules, and the tensor names that are not a plain lora_A/lora_B weight."""
    parts: dict[str, dict[str, Any]] = {}
    other = []
    for key, t in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            other.append(key)
            continue
        parts.setdefault(m["mod"], {})[m["ab"]] = t
    mods = {}
    for name, ab in parts.items():
        if "A" in ab and "B" in ab:
            mods[name] = _Module(name, ab["A"], ab["B"])
        else:
            other.append(name)
    return mods, sorted(other)


def _what(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return "DoRA magnitude vectors"
    if key.endswith("lora_B.bias"):
        return "LoRA bias"
    if "lora_embedding" in key:
        return "LoRA on an embedding"
    return "a tensor that is not a LoRA A/B matrix"


def _num_layers(base_config: Mapping[str, Any] | None) -> int | None:
    if not base_config:
        return None
    for cfg in (base_config, base_config.get("text_config") or {}):
        n = cfg.get("num_hidden_layers") if isinstance(cfg, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def _layer_count(container: str, base_config: Mapping[str, Any] | None,
                 base_shapes: Mapping[str, Any] | None) -> int | None:
    """How many layers ``container`` (e.g. ``model``, holding ``model.layers.N``) has in the base:
    from the base's tensor names where they name that container's layers, else its config."""
    if base_shapes:
        head = container + ".layers."
        found = {int(m.group(1)) for n in base_shapes if n.startswith(head)
                 and (m := re.match(r"(\d+)\.", n[len(head):]))}
        if found:
            return max(found) + 1
    return _num_layers(base_config)


def _config_may_leave_layers_out(config: Mapping[str, Any]) -> str | None:
    """What in the config could leave a module type off some layers, the last ones included, so
    that the saved tensors alone cannot show it (None: PEFT put each type on every layer)."""
    if config.get("layers_to_transform") not in (None, [], ""):
        return "layers_to_transform"
    if config.get("exclude_modules"):
        return "exclude_modules"
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return None if targets == "all-linear" else "a target_modules regex"
    for t in targets or ():
        if isinstance(t, str) and any(part.isdigit() for part in t.split(".")):
            return f"target_modules naming single layers ({t})"
    return None


def _span(layers: Any) -> str:
    idx = sorted(layers)
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}-{idx[-1]}" if len(idx) > 1 else str(idx[0])
    return ",".join(map(str, idx))


def _fold_b(b: Any, factor: float, rank: int) -> Any:
    """``b * factor`` in float32 (never in a lower precision), zero-padded to ``rank`` columns."""
    import torch

    dtype = b.dtype if b.dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.zeros((b.shape[0], rank), dtype=dtype)
    out[:, : b.shape[1]] = b.to(torch.float64).mul(factor).to(dtype)
    return out


def _pad_a(a: Any, rank: int, dtype: Any) -> Any:
    import torch

    out = torch.zeros((rank, a.shape[1]), dtype=dtype)
    out[: a.shape[0]] = a.to(dtype)
    return out


def _write(adapter_dir: Path, config: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    for path, write in ((adapter_dir / WEIGHTS, lambda p: save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(p), metadata={"format": "pt"})),
                        (adapter_dir / CONFIG, lambda p: Path(p).write_text(
                            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"))):
        tmp = path.with_name(path.name + ".folding")
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def conform(fmt: str, adapter_dir: Path, base_config: Mapping[str, Any] | None,
            base_shapes: Mapping[str, Any] | None = None) -> Conformed:
    """Make the PEFT LoRA directory ``adapter_dir`` exact for ``fmt`` (``vllm``, ``lorax``,
    ``tgi``, ``ollama``), rewriting its config and weights in place where needed, or say why
    it cannot be. ``base_config`` (config.json) and ``base_shapes`` (tensor name -> shape) are
    what is known of the base; TGI and LoRAX need its layer count for an adapter that leaves
    a module type off some layers."""
    target = TARGETS[fmt]
    config, tensors = _read(adapter_dir)
    if not tensors:
        return Conformed(reasons=[f"{target} loads adapter_model.safetensors; the adapter has none"])
    mods, other = _modules(tensors)
    res = Conformed()
    if fmt != "vllm" and other:
        res.reasons += [f"{target} would ignore {_what(k)} ({k})" for k in other[:3]]
        if len(other) > 3:
            res.reasons.append(f"... and {len(other) - 3} more tensors {target} would ignore")
    if fmt in ("tgi", "lorax"):
        bad = sorted(n for n in mods if n.rsplit(".", 1)[-1] not in SERVER_LORA_MODULES or not _LAYER_RE.search(n))
        if bad:
            res.reasons.append(f"{target} applies LoRA only to the layers' {', '.join(SERVER_LORA_MODULES)}; the "
                               f"adapter also adapts {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    if fmt == "ollama":
        bad = sorted(n for n in mods if not OLLAMA_MODULE_RE.match(n))
        if bad:
            res.reasons.append(f"Ollama's adapter converter maps only the attention and MLP projections of "
                               f"model.layers.N; the adapter also adapts {bad[0]}"
                               + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        wide = sorted(n for n, m in mods.items() if m.rank > min(int(m.a.shape[1]), int(m.b.shape[0])))
        if wide:
            res.reasons.append(f"Ollama's adapter converter takes a lora_A with more rows than columns (or a lora_B "
                               f"with fewer) for another layout and transposes it; {wide[0]} has rank "
                               f"{mods[wide[0]].rank} above its width")
    if res.reasons or not mods:
        return res
    scales = {n: peft_scale(config, n) for n in mods}
    if fmt == "ollama":
        return _conform_own_rank(adapter_dir, config, tensors, mods, scales, res)
    return _conform_uniform(fmt, adapter_dir, config, tensors, mods, scales, base_config, base_shapes, res, other)


def _conform_uniform(fmt: str, adapter_dir: Path, config: dict[str, Any], tensors: dict[str, Any],
                     mods: dict[str, _Module], scales: dict[str, float], base_config: Mapping[str, Any] | None,
                     base_shapes: Mapping[str, Any] | None, res: Conformed, other: list[str]) -> Conformed:
    target = TARGETS[fmt]
    s_target = uniform_scale(config)
    ranks = {m.rank for m in mods.values()}
    fold = any(not math.isclose(s, s_target, rel_tol=0, abs_tol=0) for s in scales.values())
    pad = fmt != "vllm" and len(ranks) > 1
    fill: dict[str, tuple[str, int, int]] = {}  # missing module path -> (a template, in, out)
    if fmt != "vllm":
        # the (module type, layer) pairs the files hold decide what is partial, whatever the config says
        by_type: dict[tuple[str, str], dict[int, _Module]] = {}  # (container, module) -> layer -> LoRA
        for m in mods.values():
            idx = _LAYER_RE.search(m.name)
            assert idx is not None  # checked by conform
            by_type.setdefault((m.name[: idx.start()], m.name[idx.end():]), {})[int(idx.group(1))] = m
        counts = {c: _layer_count(c, base_config, base_shapes) for c, _ in by_type}
        seen = {c: 1 + max(max(ls) for (c2, _), ls in by_type.items() if c2 == c) for c in counts}
        if None in counts.values():
            why = next((f"the adapter has {c}.layers.N.{mod} on layers {_span(ls)} only (of 0-{seen[c] - 1})"
                        for (c, mod), ls in sorted(by_type.items()) if counts[c] is None and len(ls) < seen[c]),
                       None)
            if why is None and (found := _config_may_leave_layers_out(config)):
                why = f"the adapter's {found} may leave layers out"
            if why is not None:
                res.reasons.append(f"the base's layer count is unknown here and {why}: {target} drops a module type "
                                   "that any layer lacks, so the layers left out need zero LoRA weights")
                res.hint = "export again with base_path=BASE_DIR, the base model's local directory"
                return res
        for (c, mod), layers in sorted(by_type.items()):
            some = next(iter(layers.values()))
            for i in range(counts[c] or seen[c]):
                if i not in layers:
                    fill[f"{c}.layers.{i}.{mod}"] = (some.name, int(some.a.shape[1]), int(some.b.shape[0]))
    # vLLM also reads what is not a linear layer's lora_A/lora_B (an embedding's LoRA, a saved
    # embedding or head): a rewrite keeps every such tensor, an embedding's LoRA folded like the rest
    emb: dict[str, _Module] = {}
    kept: dict[str, Any] = {}
    if fmt == "vllm":
        parts: dict[str, dict[str, Any]] = {}
        for key in other:
            if (em := _EMB_RE.match(key)) is not None:
                parts.setdefault(em["mod"], {})[em["ab"]] = tensors[key]
            elif key in tensors:
                kept[key] = tensors[key]
        for name, ab in parts.items():
            if "A" in ab and "B" in ab:
                emb[name] = _Module(name, ab["A"], ab["B"])
            else:
                kept.update({f"base_model.model.{name}.lora_embedding_{k}": v for k, v in ab.items()})
    emb_scales = {n: peft_scale(config, n) for n in emb}
    ranks |= {m.rank for m in emb.values()}
    fold = fold or any(not math.isclose(s, s_target, rel_tol=0, abs_tol=0) for s in emb_scales.values())
    if not (fold or pad or fill):
        return res
    import torch

    rank = max(ranks)
    new: dict[str, Any] = dict(kept)
    for name, m in mods.items():
        b = _fold_b(m.b, scales[name], rank)
        new[f"base_model.model.{name}.lora_A.weight"] = _pad_a(m.a, rank, b.dtype)
        new[f"base_model.model.{name}.lora_B.weight"] = b
    for name, m in emb.items():
        b = _fold_b(m.b, emb_scales[name], rank)
        new[f"base_model.model.{name}.lora_embedding_A"] = _pad_a(m.a, rank, b.dtype)
        new[f"base_model.model.{name}.lora_embedding_B"] = b
    for name, (tmpl, n_in, n_out) in fill.items():
        dtype = new[f"base_model.model.{tmpl}.lora_B.weight"].dtype
        new[f"base_model.model.{name}.lora_A.weight"] = torch.zeros((rank, n_in), dtype=dtype)
        new[f"base_model.model.{name}.lora_B.weight"] = torch.zeros((n_out, rank), dtype=dtype)
    out_cfg = dict(config)
    out_cfg.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    if fill:
        out_cfg.update(target_modules=sorted({n.rsplit(".", 1)[-1] for n in mods}), layers_to_transform=None,
                       layers_pattern=None, exclude_modules=None)
    _write(adapter_dir, out_cfg, new)
    res.rewritten = True
    what = []
    if fold:
        what.append(f"the per-module scales ({_scales_text({**scales, **emb_scales})}) were folded into lora_B, "
                    "and the config's "
                    f"scale is 1 (r = lora_alpha = {rank}, no patterns, no rsLoRA)")
    if pad:
        what.append(f"ranks {sorted(ranks)} were zero-padded to {rank}, since {target} stacks each module type's "
                    "layers")
    if fill:
        what.append(f"{len(fill)} module(s) the adapter leaves out (e.g. {sorted(fill)[0]}) got zero LoRA weights, "
                    f"since {target} drops a module type that any layer lacks")
    res.notes.append(f"the adapter's files were rewritten so that {target} computes exactly PEFT's deltas: "
                     + "; ".join(what) + ". They differ from the manifest's sha256 on purpose.")
    res.details = {"folded": fold, "padded_rank": rank if pad else None, "zero_filled": sorted(fill)}
    return res


def _conform_own_rank(adapter_dir: Path, config: dict[str, Any], tensors: dict[str, Any],
                      mods: dict[str, _Module], scales: dict[str, float], res: Conformed) -> Conformed:
    alpha = ollama_alpha(config)
    exact = alpha is not None and alpha > 0 and "lora_parameters" not in config and all(
        math.isclose(alpha / m.rank, scales[n], rel_tol=0, abs_tol=0) for n, m in mods.items())
    if exact:
        return res
    target_alpha = max(m.rank for m in mods.values())
    new: dict[str, Any] = {}
    for name, m in mods.items():
        b = _fold_b(m.b, scales[name] * m.rank / target_alpha, m.rank)
        new[f"base_model.model.{name}.lora_A.weight"] = m.a.to(b.dtype)
        new[f"base_model.model.{name}.lora_B.weight"] = b
    out_cfg = {k: v for k, v in config.items() if k not in ("lora_parameters", "lora_layers")}
    out_cfg.update(lora_alpha=target_alpha, use_rslora=False, alpha_pattern={})
    _write(adapter_dir, out_cfg, new)
    res.rewritten = True
    why = ("lora_alpha " + repr(config.get("lora_alpha")) + " is not an unsigned integer Ollama can read"
           if alpha is None else "Ollama applies one alpha over each module's rank")
    res.notes.append(f"the adapter's files were rewritten so that Ollama computes exactly PEFT's deltas ({why}): "
                     f"the per-module scales ({_scales_text(scales)}) were folded into lora_B and lora_alpha is "
                     f"{target_alpha}. They differ from the manifest's sha256 on purpose.")
    res.details = {"folded": True, "lora_alpha": target_alpha}
    return res


def _scales_text(scales: Mapping[str, float]) -> str:
    vals = sorted(set(round(s, 6) for s in scales.values()))
    return ", ".join(f"{v:g}" for v in vals[:4]) + (", ..." if len(vals) > 4 else "")


__all__ = ["CHECKED", "Conformed", "OLLAMA_ADAPTER_BASES", "SERVER_LORA_MODULES", "config_refusals", "conform",
           "ollama_alpha", "peft_scale", "uniform_scale"]

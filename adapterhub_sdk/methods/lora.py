"""The LoRA family (LoRA, DoRA, rsLoRA; modules_to_save; rank and alpha patterns;
trainable tokens) and AdaLoRA."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import AdapterFormatError
from ..hookspecs import hookimpl
from .base import (
    AdapterMethod,
    Requirements,
    Shape,
    check_requirements,
    check_targets,
    group_by_module,
    numel,
    one_of,
    pin_flattened,
    refuse_untargeted,
    split_full_copies,
)

#: per-module tensors of PEFT's LoRA variants beside A and B: KaSA's singular values (lora_diag),
#: VeLoRA's group embedding, MonteCLoRA's sampler state; they fix no base size beyond A and B's
_VARIANT_PARTS = r"lora_diag|lora_velora_embed|lora_monteclora_sampler\.[A-Za-z0-9_]+"
_LORA_PARTS = ("lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|token_adapter.trainable_tokens_delta|"
               + _VARIANT_PARTS)
_ADALORA_PARTS = "lora_A|lora_B|lora_E"
_PAIRS = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))
_INCONSISTENT = "PEFT cannot load this adapter file; save it again with PEFT"


def _ranks(tensors: Mapping[str, Shape], *suffixes: str) -> list[int]:
    return sorted({s[0] for k, s in tensors.items() if k.endswith(suffixes) and s})


def _config_ranks(config: Mapping[str, Any], module: str) -> tuple[set[int], str] | None:
    """The ranks ``adapter_config.json`` allows for ``module`` (``r``, or the ``rank_pattern``
    entry PEFT picks for it: the current rule and the one before PEFT 0.14), and where they come
    from; None when the config cannot say exactly (parameter targets, whose A stacks the
    experts' ranks; a malformed pattern)."""
    r, pattern = config.get("r"), config.get("rank_pattern") or {}
    if config.get("target_parameters") or not isinstance(r, int) or not isinstance(pattern, dict):
        return None
    ranks: set[int] = set()
    sources: set[str] = set()
    for rule in (lambda k: rf"(.*\.)?({k})$", lambda k: rf".*\.{k}$"):
        try:
            key = next((k for k in pattern if re.match(rule(k), module)), None)
        except (re.error, TypeError):
            return None
        want = r if key is None else pattern[key]
        if not isinstance(want, int) or isinstance(want, bool):
            return None
        ranks.add(want)
        sources.add(f"r={r}" if key is None else f"rank_pattern[{key!r}]={want}")
    return ranks, " or ".join(sorted(sources))


def _check_lora_module(config: Mapping[str, Any], module: str, parts: Mapping[str, Shape]) -> None:
    """Raise AdapterFormatError when one module's tensors contradict each other or the config
    (PEFT refuses such a file with a size mismatch, or loads half of it)."""
    def bad(why: str) -> AdapterFormatError:
        return AdapterFormatError(f"LoRA module {module!r} {why}", hint=_INCONSISTENT)

    dora = bool(config.get("use_dora"))
    for a_name, b_name in _PAIRS:
        a, b = parts.get(a_name), parts.get(b_name)
        if a is None and b is None:
            continue
        if a is None or b is None:
            have, lacks = (a_name, b_name) if b is None else (b_name, a_name)
            raise bad(f"lacks a {a_name}/{b_name} pair: it has {have} but no {lacks}")
        if len(a) < 2 or len(b) < 2:
            raise bad(f"has {a_name} of shape {list(a)} and {b_name} of shape {list(b)}")
        # B's inner size is the rank, except for grouped convolutions and block-diagonal LoRA
        if len(a) == 2 and len(b) == 2 and not config.get("use_bdlora") and a[0] != b[1]:
            raise bad(f"has a rank mismatch: {a_name} is of rank {a[0]}, {b_name} of rank {b[1]}")
        allowed = _config_ranks(config, module)
        if allowed is not None and a[0] not in allowed[0]:
            raise bad(f"has a rank mismatch: its tensors are of rank {a[0]}, "
                      f"adapter_config.json gives {allowed[1]}")
        magnitude = parts.get("lora_magnitude_vector")
        if dora and magnitude is None:
            raise bad("has no lora_magnitude_vector, which DoRA (use_dora) needs")
        if dora and magnitude is not None and numel(magnitude) != b[0]:
            raise bad(f"has a DoRA magnitude vector of {numel(magnitude)} entries for {b[0]} output features")
    diag, a = parts.get("lora_diag"), parts.get("lora_A")
    if diag is not None and a is not None and numel(diag) != a[0]:
        raise bad(f"has a KaSA lora_diag of {numel(diag)} entries for rank {a[0]}")
    if "lora_magnitude_vector" in parts and not dora:
        raise bad("has a DoRA lora_magnitude_vector but adapter_config.json does not set use_dora")


def _wrapped(modules: Mapping[str, Mapping[str, Shape]]) -> list[str]:
    """Modules that carry a full LoRA pair (what PEFT's target selection must account for)."""
    return [m for m, parts in modules.items()
            if ".base_layer." not in m and any(a in parts and b in parts for a, b in _PAIRS)]


def _unwrapped(module: str) -> str:
    return module.replace(".base_layer.", ".")


def _bd_blocks(config: Mapping[str, Any], module: str, side: str) -> int:
    """Block-diagonal LoRA (``use_bdlora``): the number of blocks of ``module``'s A (``side``
    "a") or B, whose stored weight is then ``[r, in/blocks]`` (or ``[out, r/blocks]``); 1 when
    it is a plain matrix. PEFT picks the side by substring match on the module's name."""
    bd = config.get("use_bdlora")
    if not isinstance(bd, dict):
        return 1
    patterns = bd.get(f"target_modules_bd_{side}") or []
    blocks = bd.get("nblocks")
    if isinstance(blocks, int) and not isinstance(blocks, bool) and blocks > 0 and any(
            isinstance(p, str) and p in module for p in patterns):
        return blocks
    return 1


def _conv_in(a: Shape, b: Shape) -> int | None:
    """A convolution's kernel is ``[out, in/groups, k...]`` while lora_A is ``[r, in, k...]`` and
    lora_B ``[out, r/groups, 1...]``: the groups are ``r / B's inner size``."""
    if len(b) >= 2 and b[1] > 0 and a[0] % b[1] == 0 and a[1] % (a[0] // b[1]) == 0:
        return a[1] // (a[0] // b[1])
    return None


def _param_target(config: Mapping[str, Any], module: str) -> list[str]:
    """The ``target_parameters`` entries PEFT puts on ``module`` (full parameter names)."""
    found = []
    for entry in config.get("target_parameters") or []:
        if not isinstance(entry, str) or "." not in entry:
            continue
        owner, param = entry.rsplit(".", 1)
        if module == owner or module.endswith(f".{owner}"):
            found.append(f"{module}.{param}")
    return found


def _param_ranks(config: Mapping[str, Any], param: str) -> set[int] | None:
    """The rank PEFT gives the parameter target ``param`` (``r``, or the ``rank_pattern``
    entry matched against the parameter's full name by PEFT's current rule only: parameter
    targets came with PEFT 0.17, after the pre-0.14 rule was gone); None when the config
    cannot say (a malformed ``r`` or pattern)."""
    r, pattern = config.get("r"), config.get("rank_pattern") or {}
    if not isinstance(r, int) or isinstance(r, bool) or not isinstance(pattern, dict):
        return None
    ranks: set[int] = set()
    for rule in (lambda k: rf"(.*\.)?({k})$",):
        try:
            key = next((k for k in pattern if re.match(rule(k), param)), None)
        except (re.error, TypeError):
            return None
        want = r if key is None else pattern[key]
        if not isinstance(want, int) or isinstance(want, bool) or want <= 0:
            return None
        ranks.add(want)
    return ranks


def _param_shapes(config: Mapping[str, Any], module: str, param: str, a: Shape, b: Shape) -> list[list[int | None]]:
    """Every shape of the parameter ``param`` that PEFT's ``ParamWrapper`` gives these
    tensors: A is ``[r * experts, in]`` and B ``[out, r * experts]``; the parameter is
    ``[out, in]`` (one expert), or ``[experts, out, in]``, or ``[experts, in, out]`` where the
    module says ``is_transposed`` (model code, which neither the adapter nor the base's shapes
    show). Raise AdapterFormatError where no rank the config gives fits A."""
    rows, in_f, out_f = a[0], a[1], b[0]
    ranks = _param_ranks(config, param)
    if ranks is None:  # the config cannot say: any rank that divides A's rows
        ranks = {r for r in range(1, rows + 1) if rows % r == 0}
    counts = sorted({rows // r for r in ranks if rows > 0 and rows % r == 0})
    if not counts:
        raise AdapterFormatError(f"LoRA module {module!r} has a rank mismatch: lora_A has {rows} rows for "
                                 f"{param!r}, not a multiple of its rank ({', '.join(map(str, sorted(ranks)))})",
                                 hint=_INCONSISTENT)
    shapes: list[list[int | None]] = []
    for experts in counts:
        if experts == 1:
            shapes.append([out_f, in_f])
        shapes += [[experts, out_f, in_f], [experts, in_f, out_f]]
    return shapes


def _special_weight(config: Mapping[str, Any], module: str, modules: Mapping[str, Any], a: Shape, b: Shape,
                    base: Any) -> Requirements | None:
    """Requirements of a LoRA pair whose base tensor is not ``<module>.weight``: an
    ``nn.MultiheadAttention`` (its packed ``in_proj_weight``; PEFT wraps its ``out_proj``
    too, saved as ``<module>.base_layer.out_proj``), or a parameter named by
    ``target_parameters`` (LoRA on an ``nn.Parameter``: ``[out, in]``, or for a 3-D expert
    tensor ``[experts, out, in]`` with A ``[r * experts, in]``, in either order since it
    depends on the model's code; the base settles which, and without it every shape these
    tensors admit is recorded, :func:`_param_shapes`)."""
    have = (lambda n: base.shape_of(n)) if base is not None else (lambda n: None)
    mha = f"{module}.base_layer.out_proj" in modules or (
        have(f"{module}.weight") is None and have(f"{module}.in_proj_weight") is not None)
    if mha and len(a) == 2:
        return {f"{module}.in_proj_weight": [b[0], a[1]]}
    params = _param_target(config, module)
    if len(params) != 1 or len(a) != 2 or len(b) != 2:
        return {p: [] for p in params} or None
    [param] = params
    shapes = _param_shapes(config, module, param, a, b)
    shape = have(param)
    if base is None:
        return {param: one_of(shapes)}
    if shape is not None and list(shape) in shapes:
        return {param: list(shape)}
    # refused (or missing), naming the shapes of the base's rank that would fit
    return {param: one_of([s for s in shapes if shape is not None and len(s) == len(shape)] or shapes)}


class LoraMethod(AdapterMethod):
    name = "lora"
    peft_types = ("LORA",)
    variants = ("lora", "dora", "rslora")

    def detect(self, config: Mapping[str, Any]) -> str | None:
        if str(config.get("peft_type", "")).upper() != "LORA":
            return None
        if config.get("use_dora"):
            return "dora"
        if config.get("use_rslora"):
            return "rslora"
        return "lora"

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        own, req = split_full_copies(tensors, _LORA_PARTS)
        modules = group_by_module(own, _LORA_PARTS)
        refuse_untargeted(config, _wrapped(modules))
        for module, parts in modules.items():
            _check_lora_module(config, module, parts)
            a, b = parts.get("lora_A"), parts.get("lora_B")
            ea, eb = parts.get("lora_embedding_A"), parts.get("lora_embedding_B")
            delta = parts.get("token_adapter.trainable_tokens_delta")
            # a layer PEFT wraps inside another wrapped one (the out_proj of a wrapped
            # nn.MultiheadAttention) is saved under <outer>.base_layer.<inner>
            weight = f"{_unwrapped(module)}.weight"
            if a is not None and b is not None and (special := _special_weight(config, module, modules, a, b, base)):
                req.update(special)
            elif a is not None and b is not None:
                if len(a) == 2:
                    out_f, in_f = b[0], a[1] * _bd_blocks(config, module, "a")
                    req[weight] = [in_f, out_f] if fan_in_fan_out else [out_f, in_f]
                else:  # convolution: A is [r, in, k...], B is [out, r/groups, 1...]
                    req[weight] = [b[0], _conv_in(a, b), *a[2:]]
            elif ea is not None and eb is not None:
                req[weight] = [ea[1], eb[0]]
            elif delta is not None and len(delta) == 2:
                req[weight] = [None, delta[1]]
            else:
                raise AdapterFormatError(f"LoRA module {module!r} lacks a lora_A/lora_B pair",
                                         hint="the adapter file is incomplete; save it again with PEFT")
        return req

    def validate(self, config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any) -> list[str]:
        """Shapes against the base, then coverage: the adapter has a LoRA pair for exactly the
        base modules its config selects (PEFT loads a missing one as a silent no-op)."""
        reasons = check_requirements(self.requirements(config, tensors, base), base)
        own, _ = split_full_copies(tensors, _LORA_PARTS)
        return reasons + check_targets(config, _wrapped(group_by_module(own, _LORA_PARTS)), base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        targets = config.get("target_modules")
        summary = {
            "trainable_params": sum(numel(s) for s in tensors.values()),
            "rank": config.get("r"),
            "ranks": _ranks(tensors, "lora_A.weight", "lora_embedding_A"),
            "alpha": config.get("lora_alpha"),
            "targets": sorted(targets) if isinstance(targets, list) else targets,
            "modules_to_save": config.get("modules_to_save") or [],
            "dora": bool(config.get("use_dora")),
            "rslora": bool(config.get("use_rslora")),
            "rank_pattern": config.get("rank_pattern") or {},
            "alpha_pattern": config.get("alpha_pattern") or {},
        }
        if embeddings := _embedding_modules(tensors):  # (absent otherwise: other manifests unchanged)
            summary["embedding_modules"] = embeddings
        return summary


def _embedding_modules(tensors: Mapping[str, Shape]) -> list[str]:
    """The base modules that are ``nn.Embedding``s: those PEFT saved ``lora_embedding_A/B`` for
    (its ``lora.Embedding``), named as in the requirements. The runtimes' verdict reads them
    (``embedding_modules``): a 2-D weight in the requirements does not tell an embedding from a
    Linear, and a module's name need not say."""
    own, _ = split_full_copies(tensors, _LORA_PARTS)
    try:
        modules = group_by_module(own, _LORA_PARTS)
    except AdapterFormatError:  # (requirements, computed first, says what is wrong)
        return []
    return sorted({_unwrapped(m) for m, parts in modules.items()
                   if "lora_embedding_A" in parts or "lora_embedding_B" in parts})


class AdaLoraMethod(AdapterMethod):
    name = "adalora"
    peft_types = ("ADALORA",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, _ADALORA_PARTS)
        refuse_untargeted(config, group_by_module(own, _ADALORA_PARTS))
        for module, parts in group_by_module(own, _ADALORA_PARTS).items():
            a, b, e = parts.get("lora_A"), parts.get("lora_B"), parts.get("lora_E")
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                raise AdapterFormatError(f"AdaLoRA module {module!r} lacks a lora_A/lora_B pair")
            if e is None or len(e) != 2:
                raise AdapterFormatError(f"AdaLoRA module {module!r} lacks lora_E", hint=_INCONSISTENT)
            if not a[0] == e[0] == b[1]:
                raise AdapterFormatError(f"AdaLoRA module {module!r} has a rank mismatch: lora_A is of rank "
                                         f"{a[0]}, lora_E {e[0]}, lora_B {b[1]}", hint=_INCONSISTENT)
            req[f"{module}.weight"] = [a[1], b[0]] if config.get("fan_in_fan_out") else [b[0], a[1]]
        return pin_flattened(req, base)  # SVDConv2d sees its kernel flattened

    def validate(self, config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any) -> list[str]:
        reasons = check_requirements(self.requirements(config, tensors, base), base)
        own, _ = split_full_copies(tensors, _ADALORA_PARTS)
        return reasons + check_targets(config, group_by_module(own, _ADALORA_PARTS), base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "rank": config.get("target_r"), "init_rank": config.get("init_r"),
                "ranks": _ranks(tensors, "lora_A"), "alpha": config.get("lora_alpha"),
                "targets": config.get("target_modules")}


@hookimpl
def register_methods(register):
    register(LoraMethod())
    register(AdaLoraMethod())

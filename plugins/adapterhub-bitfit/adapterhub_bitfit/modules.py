"""Make, save and load BitFit adapters on a torch model (no adapterhub registry involved)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adapterhub_sdk import AdapterFormatError, IncompatibleAdapterError
from adapterhub_sdk.methods.base import PEFT_PREFIX, strip_prefix

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_TYPE = "BITFIT"
BIAS_SUFFIX = ".bias"

TargetModules = str | Sequence[str]


def matches_target(name: str, target_modules: TargetModules) -> bool:
    """PEFT's rule: a list matches a module whose name is, or ends with ``.<entry>``; a string
    is a regular expression the whole module name must match."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _check_targets(target_modules: Any) -> TargetModules:
    if isinstance(target_modules, str) and target_modules:
        return target_modules
    if (isinstance(target_modules, (list, tuple)) and target_modules
            and all(isinstance(t, str) and t for t in target_modules)):
        return list(target_modules)
    raise AdapterFormatError(f"target_modules must be a non-empty list of module names or a regex, "
                             f"not {target_modules!r}")


def bitfit_modules(model: Any, target_modules: TargetModules) -> dict[str, Any]:
    """The ``nn.Linear`` modules of ``model`` that ``target_modules`` selects, by name."""
    import torch

    targets = _check_targets(target_modules)
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and matches_target(name, targets)}
    if not found:
        raise ValueError(f"no nn.Linear module of the model matches target_modules {target_modules!r}")
    return found


def add_bitfit(model: Any, target_modules: TargetModules, *, freeze_others: bool = True) -> list[str]:
    """Give every targeted ``nn.Linear`` a trainable output bias (zeros where it had none, so
    the model's output is unchanged) and, by default, freeze every other parameter. Returns
    the names of the modules that now carry a BitFit bias."""
    import torch

    modules = bitfit_modules(model, target_modules)
    if freeze_others:
        for p in model.parameters():
            p.requires_grad_(False)
    for module in modules.values():
        if module.bias is None:
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                         device=module.weight.device))
        module.bias.requires_grad_(True)
    return sorted(modules)


def bitfit_state_dict(model: Any, target_modules: TargetModules) -> dict[str, Any]:
    """``base_model.model.<module>.bias`` -> bias (CPU, contiguous) for every targeted module."""
    out: dict[str, Any] = {}
    for name, module in sorted(bitfit_modules(model, target_modules).items()):
        if module.bias is None:
            raise ValueError(f"{name} has no bias; call add_bitfit(model, target_modules) first")
        out[f"{PEFT_PREFIX}{name}{BIAS_SUFFIX}"] = module.bias.detach().to("cpu").contiguous().clone()
    return out


def save_bitfit(model: Any, out_dir: str | Path, target_modules: TargetModules,
                base_name: str | None = None) -> Path:
    """Write the BitFit adapter of ``model`` to ``out_dir``: ``adapter_config.json`` and
    ``adapter_model.safetensors``. ``base_name`` defaults to the model's ``name_or_path``."""
    from safetensors.torch import save_file

    targets = _check_targets(target_modules)
    tensors = bitfit_state_dict(model, targets)
    if base_name is None:
        base_name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None),
                                                                      "_name_or_path", None) or None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {"peft_type": PEFT_TYPE, "base_model_name_or_path": base_name, "target_modules": targets}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def bias_modules(config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Check the adapter's tensor names and shapes against its config; return module -> out
    features. Raises AdapterFormatError for anything that is not a BitFit bias."""
    targets = _check_targets(config.get("target_modules"))
    out: dict[str, int] = {}
    for key, shape in shapes.items():
        rel = strip_prefix(key)
        if rel == key or not rel.endswith(BIAS_SUFFIX) or rel == BIAS_SUFFIX[1:]:
            raise AdapterFormatError(f"unexpected tensor {key!r} for a BitFit adapter",
                                     hint="BitFit tensors are named base_model.model.<module>.bias")
        module = rel[: -len(BIAS_SUFFIX)]
        if len(shape) != 1:
            raise AdapterFormatError(f"tensor {key!r} has shape {list(shape)}; a BitFit bias is "
                                     "one-dimensional [out_features]")
        if not matches_target(module, targets):
            raise AdapterFormatError(f"tensor {key!r}: module {module} is not in target_modules {targets!r}",
                                     hint="the adapter file does not match its adapter_config.json")
        out[module] = int(shape[0])
    if not out:
        raise AdapterFormatError("a BitFit adapter holds no bias tensors")
    return out


def _find_linear(model: Any, module: str) -> tuple[Any | None, str | None]:
    """(the nn.Linear named ``module`` in ``model`` (a PeftModel too), why not)."""
    import torch

    found = None
    for name in (module, PEFT_PREFIX + module):
        try:
            found = model.get_submodule(name)
            break
        except AttributeError:
            continue
    if found is None:
        return None, f"missing module: {module} not in the model"
    if hasattr(found, "get_base_layer"):  # a PEFT tuner layer wrapping the Linear
        found = found.get_base_layer()
    if not isinstance(found, torch.nn.Linear):
        return None, f"module {module} is a {type(found).__name__}, not an nn.Linear"
    return found, None


def load_bitfit(model: Any, adapter_dir: str | Path) -> Any:
    """Put the BitFit biases in ``adapter_dir`` on ``model`` (in place) and return it.

    Tensors are read with safetensors (nothing is unpickled). Every bias is checked against
    its module first; if any does not fit, IncompatibleAdapterError names the module and
    the model is left untouched. A module's existing bias is replaced by the adapter's."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(adapter_dir)
    try:
        config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{root}: no readable {CONFIG_FILE} ({exc})") from exc
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterFormatError(f"{root}: no {WEIGHTS_FILE}",
                                 hint="BitFit adapters are stored as safetensors only; nothing is unpickled")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{weights}: not a readable safetensors file ({exc})") from exc
    outs = bias_modules(config, {k: tuple(v.shape) for k, v in tensors.items()})
    key_of = {strip_prefix(k)[: -len(BIAS_SUFFIX)]: k for k in tensors}
    targets: dict[str, Any] = {}
    reasons: list[str] = []
    for module, out in sorted(outs.items()):
        linear, why = _find_linear(model, module)
        if linear is None:
            reasons.append(str(why))
        elif linear.weight.dim() != 2 or linear.weight.shape[0] != out:
            reasons.append(f"shape: {module}.weight is {list(linear.weight.shape)} in the model, "
                           f"the adapter needs [{out}, *]")
        else:
            targets[module] = linear
    if reasons:
        raise IncompatibleAdapterError(
            f"BitFit adapter {root} does not fit the model: {reasons[0]}"
            + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""),
            reasons=reasons, hint="load it onto the base model it was trained on")
    with torch.no_grad():
        for module, linear in targets.items():
            value = tensors[key_of[module]].to(dtype=linear.weight.dtype, device=linear.weight.device)
            if linear.bias is None:
                linear.bias = torch.nn.Parameter(value, requires_grad=False)
            else:
                linear.bias.copy_(value)
    return model

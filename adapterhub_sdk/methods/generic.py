"""Fallback for any PEFT method without a specific plugin.

Without a base it records which base modules the adapter touches (existence only).
With a base whose config is known, PEFT itself injects the adapter into the base built
on the meta device (no weights, no memory), and the adapter file must have exactly the
keys and shapes PEFT expects; the touched modules' shapes become the requirements.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import (
    PEFT_PREFIX,
    AdapterMethod,
    Requirements,
    Shape,
    check_requirements,
    numel,
    strip_prefix,
)

_SUFFIX = re.compile(r"\.[a-z0-9]+_[A-Za-z0-9_]+(?:\.(?:weight|bias))?$")


def _meta_model(config: Mapping[str, Any]) -> Any:
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**dict(config))
    cls = None
    for arch in config.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            break
    with torch.device("meta"):
        if cls is not None:
            return cls(cfg)
        return transformers.AutoModelForCausalLM.from_config(cfg)


def _peft_config(config: Mapping[str, Any]) -> Any:
    from peft import PeftConfig

    kwargs = {k: v for k, v in config.items() if k not in ("auto_mapping",)}
    return PeftConfig.from_peft_type(**kwargs)


def meta_inject(config: Mapping[str, Any], base_config: Mapping[str, Any], *,
                tuner: bool = False) -> tuple[dict[str, list[int]], Requirements]:
    """:func:`_meta_inject`, remembered for the last few (config, base config) pairs: a publish
    asks for it to validate, to pin the requirements and to say how it validated."""
    key = (json.dumps(config, sort_keys=True, default=str), json.dumps(base_config, sort_keys=True, default=str),
           tuner)
    expected, req = _cached_inject(key)
    return {k: list(v) for k, v in expected.items()}, {k: list(v) for k, v in req.items()}


@functools.lru_cache(maxsize=8)
def _cached_inject(key: tuple[str, str, bool]) -> tuple[dict[str, list[int]], Requirements]:
    return _meta_inject(json.loads(key[0]), json.loads(key[1]), tuner=key[2])


def _meta_inject(config: Mapping[str, Any], base_config: Mapping[str, Any], *,
                 tuner: bool = False) -> tuple[dict[str, list[int]], Requirements]:
    """(expected adapter tensor shapes, touched base tensors and shapes) as PEFT computes them
    for this adapter config on this base architecture. ``tuner``: the adapter holds state of
    the tuner model itself (a shared bank saved as ``base_model.<name>``), which only
    ``get_peft_model`` creates."""
    return inject(_meta_model(base_config), config, tuner=tuner)


def inject(model: Any, config: Mapping[str, Any], *, tuner: bool = False) -> tuple[dict[str, list[int]], Requirements]:
    """PEFT's injection of this adapter config into ``model`` (on the meta device): the adapter
    tensors it expects and their shapes, and the touched base tensors with theirs."""
    from peft import get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_config = _peft_config(config)
    try:
        if tuner:
            raise ValueError("shared state: use get_peft_model")
        model = inject_adapter_in_model(peft_config, model, adapter_name="default")
        state = get_peft_model_state_dict(model, adapter_name="default")
    except ValueError as exc:
        if "get_peft_model" not in str(exc):
            raise
        # methods with state shared across layers (VB-LoRA's vector bank) need the tuner
        # model; its state dict keys carry the tuner's "base_model." prefix, dropped here
        # like the adapter's own keys are
        peft_model = get_peft_model(model, peft_config, adapter_name="default")
        state = {k.removeprefix("base_model.model.").removeprefix("base_model."): v
                 for k, v in get_peft_model_state_dict(peft_model, adapter_name="default").items()}
        model = peft_model
    expected = {k: list(v.shape) for k, v in state.items()}
    req: Requirements = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            weight = getattr(module.get_base_layer(), "weight", None)
            if weight is not None:
                req[f"{name.removeprefix('base_model.model.')}.weight"] = list(weight.shape)
    return expected, req


def _peft_prefix(config: Mapping[str, Any]) -> str | None:
    try:
        from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    except ImportError:
        return None
    for kind, prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if str(getattr(kind, "value", kind)).upper() == str(config.get("peft_type", "")).upper():
            return prefix or None
    return None


def _is_prompt_learning(config: Mapping[str, Any]) -> bool:
    try:
        return bool(_peft_config(config).is_prompt_learning)
    except Exception:  # noqa: BLE001 - an unknown type is simply not prompt learning
        return False


def _tuner_state(tensors: Mapping[str, Shape]) -> bool:
    """Whether the adapter holds state of the tuner model itself (``base_model.<name>``, as
    VB-LoRA's bank or RandLoRA's saved projections), not only of wrapped modules."""
    return any(k.startswith("base_model.") and not k.startswith(PEFT_PREFIX) for k in tensors)


def _needs_values(exc: BaseException) -> bool:
    """PEFT failed on the meta device because the method's init reads the base's weights."""
    return isinstance(exc, (NotImplementedError, RuntimeError)) and "meta" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:160]


class GenericPeftMethod(AdapterMethod):
    name = "generic"

    def detect(self, config: Mapping[str, Any]) -> str | None:
        """Claims only the types the installed PEFT knows: anything else needs its own plugin."""
        peft_type = config.get("peft_type")
        if not isinstance(peft_type, str) or not peft_type:
            return None
        try:
            from peft import PeftType
        except ImportError:
            return None
        known = {str(getattr(t, "value", t)).upper() for t in PeftType}
        return peft_type.lower() if peft_type.upper() in known else None

    def _existence(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> Requirements:
        """Modules the adapter touches, from its key names: the part before PEFT's parameter
        prefix for this method (``hra_``, ``fourierft_``, ...) names the module."""
        prefix = _peft_prefix(config)
        req: Requirements = {}
        for key, shape in tensors.items():
            rel = strip_prefix(key)
            if rel == key and key.startswith("base_model."):  # state of the tuner itself (a shared bank)
                continue
            parts = rel.split(".")
            at = next((i for i, p in enumerate(parts) if prefix and p.startswith(prefix)), None)
            if at is None and not prefix:
                m = _SUFFIX.search(rel)
                at = len(rel[: m.start()].split(".")) if m is not None else None
            if at is not None and at > 0:
                req.setdefault(".".join(parts[:at]) + ".weight", [])
            elif rel.endswith((".weight", ".bias")) and rel != key:
                req[rel.replace(".base_layer.", ".")] = list(shape)  # a full copy (modules_to_save)
        return req

    def _pinned_existence(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                          base: Any) -> Requirements:
        """The touched modules, pinned to the shapes ``base`` has (when it has them)."""
        req = self._existence(config, tensors)
        if base is None:
            return req
        return {k: (v or list(have) if (have := base.shape_of(k)) is not None else v) for k, v in req.items()}

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        base_config = getattr(base, "config", None)
        if base_config and not _is_prompt_learning(config):
            try:
                _, req = meta_inject(config, base_config, tuner=_tuner_state(tensors))
                return req
            except Exception:  # noqa: BLE001 - validate() reports why
                pass
        return self._pinned_existence(config, tensors, base)

    def _rebuilt(self, config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any) -> list[str] | None:
        """:func:`.rebuilt.check_rebuilt` for a base without a config (None: it cannot tell)."""
        from .rebuilt import check_rebuilt

        touched = [k.removesuffix(".weight") for k, v in self._existence(config, tensors).items() if not v]
        return check_rebuilt(config, tensors, base, touched, inject, _tuner_state(tensors))

    def validation(self, config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any) -> str | None:
        base_config = getattr(base, "config", None)
        if _is_prompt_learning(config):
            return "generic: the touched modules exist in the base (prompt learning; no shapes checked)"
        if not base_config and self._rebuilt(config, tensors, base) is not None:
            return ("generic: PEFT's injection on the touched modules rebuilt on the meta device from the base's "
                    "weight shapes (the base has no model config) gives exactly the adapter's keys and shapes")
        if not base_config:
            return ("generic: the touched modules exist in the base; no shapes checked (the base has no "
                    "model config, and the layers rebuilt from its weight shapes do not tell)")
        try:
            meta_inject(config, base_config, tuner=_tuner_state(tensors))
        except Exception as exc:  # noqa: BLE001 - only values-needing inits get here (validate refused the rest)
            return (f"generic: the touched modules exist in the base; no shapes checked (PEFT's injection "
                    f"needs the base's weight values: {type(exc).__name__}: {_first_line(exc)})")
        return "generic: PEFT's injection on the meta device gives exactly the adapter's keys and shapes"

    def validate(self, config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any) -> list[str]:
        base_config = getattr(base, "config", None)
        if not base_config and not _is_prompt_learning(config):
            reasons = check_requirements(self._existence(config, tensors), base)
            return reasons or self._rebuilt(config, tensors, base) or []
        if not base_config or _is_prompt_learning(config):
            return check_requirements(self._existence(config, tensors), base)
        try:
            expected, req = meta_inject(config, base_config, tuner=_tuner_state(tensors))
        except Exception as exc:  # noqa: BLE001 - PEFT's refusal is the reason
            if _needs_values(exc):
                # an init computed from the weights (FRoD's decomposition): nothing to compute
                # on the meta device; the modules' existence is what can be checked
                return check_requirements(self._existence(config, tensors), base)
            return [f"PEFT cannot apply this adapter to the base: {type(exc).__name__}: {exc}"]
        actual = {strip_prefix(k) if k.startswith("base_model.model.") else k.removeprefix("base_model."): list(s)
                  for k, s in tensors.items()}
        reasons = check_requirements(req, base)
        missing = sorted(set(expected) - set(actual))
        unexpected = sorted(set(actual) - set(expected))
        if missing:
            reasons.append(f"missing keys: {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            reasons.append(f"unexpected keys (modules not in the base?): {', '.join(unexpected[:3])}"
                           + (" ..." if len(unexpected) > 3 else ""))
        for k in sorted(set(expected) & set(actual)):
            if expected[k] != actual[k]:
                reasons.append(f"shape: {k} is {actual[k]} in the adapter, the base needs {expected[k]}")
        return reasons

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()), "generic": True,
                "peft_type": config.get("peft_type"), "targets": config.get("target_modules")}


@hookimpl(trylast=True)
def register_methods(register):
    register(GenericPeftMethod())

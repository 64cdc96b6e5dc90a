"""Which options of a LoRA ``adapter_config.json`` change what the adapter computes.

A runtime or an export target that implements plain LoRA must not serve an adapter whose
config turns on something it does not implement (activated LoRA, layer replication, trainable
token rows, block-diagonal factors, ...): PEFT would compute something else, and the output
would differ without a word. The check is an allow-list, so an option that a newer PEFT adds
is refused until someone states what it does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Options that never change the output of a saved adapter at inference: metadata, which
# modules are selected (the saved tensors already say which are), dropout (off in eval),
# the configs of initialisation schemes (they only chose the starting values that training
# then saved; ``init_lora_weights`` itself is checked below), the backward-only VeLoRA, and
# PEFT runtime settings that are not saved.
INERT = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "lora_dropout", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
    "velora_config", "megatron_config", "megatron_core", "runtime_config", "qalora_group_size",
    "ensure_weight_tying",
})

# init_lora_weights values that only set the starting A/B (overwritten by the saved tensors
# when PEFT loads the adapter). Others (pissa*, corda*, olora, loftq) rewrite the base
# weights when PEFT loads the adapter (W - scale * B0 A0, a quantised W), so PEFT's output is
# not W + scale * B A; they are refused unless a target implements them.
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})

# What every LoRA runtime here implements: the scale of each module's update.
SCALING = frozenset({"r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern"})

# What each option does, for the reason given when it is refused.
_WHAT = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
    "bias": "trained base biases (bias != 'none')",
    "lora_bias": "a bias on lora_B (lora_bias)",
    "modules_to_save": "full copies of modules (modules_to_save)",
    "trainable_token_indices": "trained embedding rows (trainable_token_indices)",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens: the update applies only from "
                               "the invocation tokens on)",
    "layer_replication": "layer replication (layer_replication rebuilds the layer stack)",
    "use_qalora": "QA-LoRA input pooling (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing between adapters (arrow_config)",
    "kasa_config": "KaSA singular-value adaptation (kasa_config)",
    "monteclora_config": "Monte Carlo LoRA (monteclora_config)",
}


def _off(key: str, value: Any) -> bool:
    if key == "bias":
        return value in (None, "none")
    return value is None or value is False or (isinstance(value, (list, dict, tuple, str)) and not value)


def unsupported_options(config: Mapping[str, Any], supported: Iterable[str] = ()) -> list[str]:
    """Reasons, one per option ``config`` turns on that is neither inert, nor scaling, nor in
    ``supported``; empty when a plain-LoRA runtime computes exactly what PEFT computes."""
    ok = INERT | SCALING | frozenset(supported)
    reasons = []
    for key in sorted(config):
        value = config[key]
        if key in ok or _off(key, value):
            continue
        if key == "init_lora_weights":
            if value is True or (isinstance(value, str) and value.lower() in PLAIN_INITS):
                continue
            reasons.append(f"was initialised with init_lora_weights={value!r}, which rewrites the base weights "
                           "when PEFT loads it (convert it to a plain LoRA with PEFT's "
                           "path_initial_model_for_weight_conversion)")
            continue
        what = _WHAT.get(key)
        reasons.append(f"uses {what}" if what else
                       f"uses the LoRA option {key}={value!r}, which this SDK does not know (a newer PEFT?)")
    return reasons


#: LoRA options a Deployment (the transformers runtime) computes as PEFT does, beyond the scaling
SERVED_LORA_OPTIONS = frozenset({"use_dora", "lora_bias", "modules_to_save"})

# IA3's config: what only selects modules or chose starting values; feedforward_modules is
# read from the saved vectors' shapes (PEFT's own choice, fixed at save time)
IA3_INERT = frozenset({
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "feedforward_modules", "init_ia3_weights",
})
_IA3_WHAT = {
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
    "modules_to_save": "full copies of modules (modules_to_save)",
}


def unsupported_ia3_options(config: Mapping[str, Any], supported: Iterable[str] = ()) -> list[str]:
    """Reasons, one per option of an IA3 ``config`` that changes the output and is not in ``supported``."""
    ok = IA3_INERT | frozenset(supported)
    return [f"uses {_IA3_WHAT[key]}" if key in _IA3_WHAT else
            f"uses the IA3 option {key}={config[key]!r}, which this SDK does not know (a newer PEFT?)"
            for key in sorted(config) if key not in ok and not _off(key, config[key])]


def saved_module(config: Mapping[str, Any], module: str) -> str | None:
    """The module (``module`` or one above it) that PEFT's ``modules_to_save`` selects for a
    saved tensor of ``module`` (PEFT's match: the name ends with an entry), else None."""
    names = config.get("modules_to_save") or []
    if not isinstance(names, (list, tuple)):
        return None
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if any(isinstance(n, str) and n and candidate.endswith(n) for n in names):
            return candidate
    return None


def peft_type_of(config: Mapping[str, Any]) -> str:
    """``peft_type`` upper-cased, from a saved config (a string) or a PEFT config's to_dict (an enum)."""
    value = config.get("peft_type") or ""
    return str(getattr(value, "value", value)).upper()


def deployment_refusals(config: Mapping[str, Any]) -> list[str]:
    """Why a :class:`~adapterhub_sdk.deploy.Deployment` would not compute what PEFT computes for
    ``config`` (empty: it serves it, mixed in batches). ``resolve --runtime transformers`` and
    attach both ask this, so their verdicts agree."""
    if peft_type_of(config) == "IA3":
        return unsupported_ia3_options(config, supported={"modules_to_save"})
    reasons = unsupported_options(config, supported=SERVED_LORA_OPTIONS)
    if config.get("use_dora") and config.get("lora_bias"):  # PEFT's LoraConfig refuses it: no output to match
        reasons.append("uses DoRA with lora_bias, which PEFT itself refuses to load")
    if config.get("modules_to_save") and config.get("ensure_weight_tying"):
        reasons.append("uses modules_to_save with ensure_weight_tying (PEFT ties the copies across modules)")
    return reasons


def lora_alpha(config: Mapping[str, Any]) -> float:
    """``lora_alpha`` as PEFT reads it: 8 when absent (0 is a valid value, not a default)."""
    value = config.get("lora_alpha", 8)
    return 8.0 if value is None else float(value)


__all__ = ["IA3_INERT", "INERT", "PLAIN_INITS", "SCALING", "SERVED_LORA_OPTIONS", "deployment_refusals", "lora_alpha",
           "peft_type_of", "saved_module", "unsupported_ia3_options", "unsupported_options"]

"""The LoRA family (LoRA, DoRA, rsLoRA; modules_to_save; rank and alpha patterns;
trainable tokens) and AdaLoRA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import AdapterFormatError
from ..hookspecs import hookimpl
from .base import AdapterMethod, Requirements, Shape, group_by_module, numel, split_full_copies

_LORA_PARTS = "lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|token_adapter.trainable_tokens_delta"


def _ranks(tensors: Mapping[str, Shape], *suffixes: str) -> list[int]:
    return sorted({s[0] for k, s in tensors.items() if k.endswith(suffixes) and s})


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
        for module, parts in group_by_module(own, _LORA_PARTS).items():
            a, b = parts.get("lora_A"), parts.get("lora_B")
            ea, eb = parts.get("lora_embedding_A"), parts.get("lora_embedding_B")
            delta = parts.get("token_adapter.trainable_tokens_delta")
            if a is not None and b is not None:
                if len(a) == 2:
                    out_f, in_f = b[0], a[1]
                    req[f"{module}.weight"] = [in_f, out_f] if fan_in_fan_out else [out_f, in_f]
                else:  # convolution: A is [r, in/groups, k...], B is [out, r, 1...]
                    req[f"{module}.weight"] = [b[0], None, *a[2:]]
            elif ea is not None and eb is not None:
                req[f"{module}.weight"] = [ea[1], eb[0]]
            elif delta is not None and len(delta) == 2:
                req[f"{module}.weight"] = [None, delta[1]]
            else:
                raise AdapterFormatError(f"LoRA module {module!r} lacks a lora_A/lora_B pair",
                                         hint="the adapter file is incomplete; save it again with PEFT")
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        targets = config.get("target_modules")
        return {
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


class AdaLoraMethod(AdapterMethod):
    name = "adalora"
    peft_types = ("ADALORA",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, "lora_A|lora_B|lora_E")
        for module, parts in group_by_module(own, "lora_A|lora_B|lora_E").items():
            a, b = parts.get("lora_A"), parts.get("lora_B")
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                raise AdapterFormatError(f"AdaLoRA module {module!r} lacks a lora_A/lora_B pair")
            req[f"{module}.weight"] = [a[1], b[0]] if config.get("fan_in_fan_out") else [b[0], a[1]]
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "rank": config.get("target_r"), "init_rank": config.get("init_r"),
                "ranks": _ranks(tensors, "lora_A"), "alpha": config.get("lora_alpha"),
                "targets": config.get("target_modules")}


@hookimpl
def register_methods(register):
    register(LoraMethod())
    register(AdaLoraMethod())

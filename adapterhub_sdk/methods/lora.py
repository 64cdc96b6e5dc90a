"""The LoRA family: LoRA, DoRA and rsLoRA, with modules_to_save and rank/alpha patterns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import AdapterFormatError
from ..hookspecs import hookimpl
from .base import AdapterMethod, Requirements, Shape, _numel, strip_prefix

_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<param>weight|bias))?"
)


class LoraMethod(AdapterMethod):
    name = "lora"
    peft_types = ("LORA",)

    def detect(self, config: Mapping[str, Any]) -> str | None:
        if str(config.get("peft_type", "")).upper() != "LORA":
            return None
        if config.get("use_dora"):
            return "dora"
        if config.get("use_rslora"):
            return "rslora"
        return "lora"

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> Requirements:
        fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        modules: dict[str, dict[str, Shape]] = {}
        req: Requirements = {}
        for key, shape in tensors.items():
            rel = strip_prefix(key)
            m = _LORA_KEY.fullmatch(rel)
            if m is None:
                if rel.endswith((".weight", ".bias")) and "lora_" not in rel:
                    req[rel] = list(shape)  # modules_to_save: a full copy of a base tensor
                    continue
                raise AdapterFormatError(f"unexpected tensor {key!r} in a LoRA adapter",
                                         hint="the adapter file does not match its adapter_config.json")
            part = m["part"] + ("." + m["param"] if m["param"] else "")
            modules.setdefault(m["module"], {})[part] = shape
        for module, parts in modules.items():
            a = parts.get("lora_A.weight")
            b = parts.get("lora_B.weight")
            ea, eb = parts.get("lora_embedding_A"), parts.get("lora_embedding_B")
            if a is not None and b is not None:
                if len(a) == 2:
                    out_f, in_f = b[0], a[1]
                    req[f"{module}.weight"] = [in_f, out_f] if fan_in_fan_out else [out_f, in_f]
                else:  # convolution: A is [r, in/groups, k...], B is [out, r, 1...]
                    req[f"{module}.weight"] = [b[0], None, *a[2:]]
            elif ea is not None and eb is not None:
                req[f"{module}.weight"] = [ea[1], eb[0]]
            else:
                raise AdapterFormatError(f"LoRA module {module!r} lacks a lora_A/lora_B pair",
                                         hint="the adapter file is incomplete; save it again with PEFT")
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        ranks = sorted({s[0] for k, s in tensors.items() if k.endswith("lora_A.weight")}
                       | {s[0] for k, s in tensors.items() if k.endswith("lora_embedding_A")})
        targets = config.get("target_modules")
        if isinstance(targets, list):
            targets = sorted(targets)
        return {
            "trainable_params": sum(_numel(s) for s in tensors.values()),
            "rank": config.get("r"),
            "ranks": ranks,
            "alpha": config.get("lora_alpha"),
            "targets": targets,
            "modules_to_save": config.get("modules_to_save") or [],
            "dora": bool(config.get("use_dora")),
            "rslora": bool(config.get("use_rslora")),
            "rank_pattern": config.get("rank_pattern") or {},
            "alpha_pattern": config.get("alpha_pattern") or {},
        }


@hookimpl
def register_methods(register):
    register(LoraMethod())

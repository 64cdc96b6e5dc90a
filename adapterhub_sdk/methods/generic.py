"""Fallback for PEFT methods without a specific plugin: checks that each touched module
exists in the base and that full-tensor copies (modules_to_save) have the base's shape."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import AdapterMethod, Requirements, Shape, _numel, strip_prefix

_SUFFIX = re.compile(r"\.(?:[a-z]+_[A-Za-z0-9_]+|hada_\w+|lokr_\w+)(?:\.(?:weight|bias))?$")


class GenericPeftMethod(AdapterMethod):
    name = "generic"

    def detect(self, config: Mapping[str, Any]) -> str | None:
        peft_type = config.get("peft_type")
        return str(peft_type).lower() if isinstance(peft_type, str) and peft_type else None

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> Requirements:
        req: Requirements = {}
        for key, shape in tensors.items():
            rel = strip_prefix(key)
            m = _SUFFIX.search(rel)
            if m is None and rel.endswith((".weight", ".bias")):
                req[rel] = list(shape)
            elif m is not None:
                module = rel[: m.start()]
                req.setdefault(f"{module}.weight", [])  # [] = must exist, any shape
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(_numel(s) for s in tensors.values()), "generic": True,
                "targets": config.get("target_modules")}


@hookimpl(trylast=True)
def register_methods(register):
    register(GenericPeftMethod())

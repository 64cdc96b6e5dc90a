"""LyCORIS-style methods from PEFT: LoHa (Hadamard product) and LoKr (Kronecker product)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import AdapterMethod, Requirements, Shape, group_by_module, numel, split_full_copies

_LOHA = "hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2"
_LOKR = "lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2"


class LohaMethod(AdapterMethod):
    name = "loha"
    peft_types = ("LOHA",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, _LOHA)
        for module, p in group_by_module(own, _LOHA).items():
            w1a, w1b = p.get("hada_w1_a"), p.get("hada_w1_b")
            if w1a is not None and w1b is not None and "hada_t1" not in p and len(w1b) == 2:
                req[f"{module}.weight"] = [w1a[0], w1b[1]]
            else:  # convolution (Tucker): shapes depend on the kernel; existence only
                req[f"{module}.weight"] = []
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()), "rank": config.get("r"),
                "alpha": config.get("alpha"), "targets": config.get("target_modules")}


class LokrMethod(AdapterMethod):
    name = "lokr"
    peft_types = ("LOKR",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, _LOKR)
        for module, p in group_by_module(own, _LOKR).items():
            w1 = p.get("lokr_w1") or (
                (p["lokr_w1_a"][0], p["lokr_w1_b"][1]) if "lokr_w1_a" in p and "lokr_w1_b" in p else None)
            w2 = p.get("lokr_w2") or (
                (p["lokr_w2_a"][0], p["lokr_w2_b"][1]) if "lokr_w2_a" in p and "lokr_w2_b" in p else None)
            if w1 is not None and w2 is not None and len(w1) == 2 and len(w2) == 2 and "lokr_t2" not in p:
                req[f"{module}.weight"] = [w1[0] * w2[0], w1[1] * w2[1]]
            else:
                req[f"{module}.weight"] = []
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()), "rank": config.get("r"),
                "alpha": config.get("alpha"), "decompose_factor": config.get("decompose_factor"),
                "targets": config.get("target_modules")}


@hookimpl
def register_methods(register):
    register(LohaMethod())
    register(LokrMethod())

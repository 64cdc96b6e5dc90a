"""Methods that learn scaling vectors: IA3 and VeRA.

A module that stores its weight transposed (transformers' ``Conv1D``, GPT-2 style: ``(in, out)``)
has ``fan_in_fan_out`` set in the saved config (PEFT sets it for such modules), so the sizes the
vectors fix are read in the other order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import (
    AdapterMethod,
    Requirements,
    Shape,
    group_by_module,
    numel,
    selects,
    split_full_copies,
)


class Ia3Method(AdapterMethod):
    name = "ia3"
    peft_types = ("IA3",)
    target_parts = "ia3_l"  # validate checks coverage (AdapterMethod.target_parts)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, "ia3_l")
        fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        for module, p in group_by_module(own, "ia3_l").items():
            vec = p.get("ia3_l", ())
            shape: list[int | None] = []
            if len(vec) > 2 and all(d == 1 for i, d in enumerate(vec) if i != 1):
                # a convolution's vector is (1, channels, 1, ...): input channels for a
                # feed-forward module, output channels otherwise
                rest: list[int | None] = [None] * (len(vec) - 2)
                ff = selects(config.get("feedforward_modules"), module)
                shape = [None, vec[1], *rest] if ff else [vec[1], None, *rest]
            elif len(vec) == 2 and vec[0] == 1 and vec[1] != 1:  # feed-forward: scales the input
                shape = [vec[1], None] if fan_in_fan_out else [None, vec[1]]
            elif len(vec) == 2 and vec[1] == 1:  # attention: scales the output
                shape = [None, vec[0]] if fan_in_fan_out else [vec[0], None]
            req[f"{module}.weight"] = shape
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "targets": config.get("target_modules"), "feedforward": config.get("feedforward_modules")}


class VeraMethod(AdapterMethod):
    name = "vera"
    peft_types = ("VERA",)
    target_parts = "vera_lambda_b|vera_lambda_d"  # validate checks coverage (AdapterMethod.target_parts)
    _SHARED = ("base_model.vera_A", "base_model.vera_B")

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        mine = {k: s for k, s in tensors.items() if k not in self._SHARED}
        own, req = split_full_copies(mine, "vera_lambda_b|vera_lambda_d")
        for module, p in group_by_module(own, "vera_lambda_b|vera_lambda_d").items():
            out = p.get("vera_lambda_b")
            if out and len(out) == 1:
                req[f"{module}.weight"] = [None, out[0]] if config.get("fan_in_fan_out") else [out[0], None]
            else:
                req[f"{module}.weight"] = []
        return req

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for k, s in tensors.items() if k not in self._SHARED),
                "rank": config.get("r"), "targets": config.get("target_modules"),
                "projections_saved": any(k in tensors for k in self._SHARED)}


@hookimpl
def register_methods(register):
    register(Ia3Method())
    register(VeraMethod())

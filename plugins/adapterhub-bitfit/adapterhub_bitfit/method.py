"""The adapterhub method for BitFit adapters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import adapterhub_sdk as ah
from adapterhub_sdk.methods.base import Requirements, Shape, numel

from .modules import PEFT_TYPE, bias_modules, load_bitfit


class BitFitMethod(ah.AdapterMethod):
    """Bias-only fine-tuning: one learned output bias per targeted ``nn.Linear``.

    Requirements: every ``<module>.bias`` of ``[out]`` needs ``<module>.weight`` in the base
    with shape ``[out, *]`` (a linear layer with that many outputs)."""

    name = "bitfit"
    peft_types = (PEFT_TYPE,)
    variants = ("bitfit",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        return {f"{module}.weight": [out, None] for module, out in bias_modules(config, tensors).items()}

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "targets": config.get("target_modules"), "modules": len(tensors)}

    def apply(self, model: Any, adapter_dir: str, config: Mapping[str, Any], adapter_name: str) -> Any:
        # BitFit changes the model's own biases: there is one set at a time, so a later
        # BitFit adapter replaces an earlier one's biases on the modules both touch.
        return load_bitfit(model, adapter_dir)

"""adapterhub-bitfit: BitFit (bias-only fine-tuning) adapters for adapterhub_sdk.

PEFT has no BitFit, and Llama's linear layers have no bias, so a BitFit adapter here is a
learned *output bias* per targeted ``nn.Linear``::

    adapter_config.json        {"peft_type": "BITFIT", "base_model_name_or_path": ...,
                                "target_modules": ["q_proj", "v_proj"]}
    adapter_model.safetensors  base_model.model.<module>.bias  -> [out_features]

Make one with :func:`add_bitfit` (train) and :func:`save_bitfit`; adapterhub packs,
checks, publishes and resolves it through :class:`BitFitMethod`, and
``adapterhub_sdk.load_adapter(model, path)`` puts the biases back on a base model.
"""

from __future__ import annotations

import adapterhub_sdk as ah

from .method import PEFT_TYPE, BitFitMethod
from .modules import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    add_bitfit,
    bitfit_modules,
    bitfit_state_dict,
    load_bitfit,
    matches_target,
    save_bitfit,
)

__version__ = "0.1.0"

__all__ = [
    "CONFIG_FILE",
    "PEFT_TYPE",
    "WEIGHTS_FILE",
    "BitFitMethod",
    "add_bitfit",
    "bitfit_modules",
    "bitfit_state_dict",
    "load_bitfit",
    "matches_target",
    "register_methods",
    "save_bitfit",
]


@ah.hookimpl
def register_methods(register):
    register(BitFitMethod())

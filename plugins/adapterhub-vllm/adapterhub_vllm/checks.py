"""What the vLLM installed in this process would serve differently from PEFT.

:func:`adapterhub_sdk.export.vllm_limitations` (which :func:`adapterhub_vllm.lora.refusal_reasons`
uses) decides from the adapter alone: DoRA, bias, modules_to_save, LoRA options vLLM does
not implement, rank. What also depends on the vLLM release is checked here, against the vLLM
that will load the adapter:

- per-module ``rank_pattern`` / ``alpha_pattern``: vLLM 0.33 scales each module as PEFT does
  (``PEFTHelper.get_rank_and_scaling``); earlier releases read neither pattern and apply one
  scaling, ``lora_alpha / r``, to every module, so a patterned module would be served with
  another scale than PEFT's.

Without vLLM importable here nothing is checked (the arguments are for a vLLM elsewhere).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def _vllm_peft_helper() -> Any:
    """vLLM's ``PEFTHelper`` class when vLLM is importable here, else None."""
    try:
        return importlib.import_module("vllm.lora.peft_helper").PEFTHelper
    except Exception:  # noqa: BLE001 - vLLM absent or not importable on this machine
        return None


def _vllm_version() -> str:
    try:
        return str(importlib.import_module("vllm").__version__)
    except Exception:  # noqa: BLE001
        return "?"


def running_vllm_reasons(config: Mapping[str, Any]) -> list[str]:
    """Reasons the vLLM importable in this process would serve an adapter with this LoRA
    ``adapter_config`` differently from PEFT (empty: none, or no vLLM here to check)."""
    patterned = [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if not patterned:
        return []
    helper = _vllm_peft_helper()
    if helper is None or callable(getattr(helper, "get_rank_and_scaling", None)):
        return []
    return [f"the installed vLLM ({_vllm_version()}) ignores {' and '.join(patterned)} and scales every "
            "module by lora_alpha/r, where PEFT scales the patterned modules by their own rank and alpha; "
            "upgrade vLLM (0.33 applies the patterns)"]

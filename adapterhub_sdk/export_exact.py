"""Moved to :mod:`adapterhub_sdk.export.folding`; this name keeps old imports working."""

from __future__ import annotations

from .export.folding import (
    CHECKED,
    CONFIG,
    INIT_OK,
    OLLAMA_ADAPTER_BASES,
    OLLAMA_MODULE_RE,
    SERVER_LORA_MODULES,
    UINT32_MAX,
    WEIGHTS,
    Conformed,
    config_refusals,
    conform,
    ollama_alpha,
    peft_scale,
    uniform_scale,
)

__all__ = ["CHECKED", "CONFIG", "INIT_OK", "OLLAMA_ADAPTER_BASES", "OLLAMA_MODULE_RE", "SERVER_LORA_MODULES",
           "UINT32_MAX", "WEIGHTS", "Conformed", "config_refusals", "conform", "ollama_alpha", "peft_scale",
           "uniform_scale"]

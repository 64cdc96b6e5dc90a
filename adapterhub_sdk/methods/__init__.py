"""Adapter methods (LoRA family, generic PEFT) as plugins; see :mod:`.base` for the API."""

from typing import Any

from .base import AdapterMethod, Requirements, check_requirements

__all__ = ["AdapterMethod", "Requirements", "check_requirements", "detect_method"]


def __getattr__(name: str) -> Any:
    """``detect_method`` is a plugin lookup: it lives in :mod:`adapterhub_sdk.plugins`."""
    if name == "detect_method":
        from .. import plugins

        return plugins.detect_method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

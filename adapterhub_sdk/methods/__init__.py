"""Adapter methods (LoRA family, generic PEFT) as plugins; see :mod:`.base` for the API."""

from .base import AdapterMethod, Requirements, check_requirements, detect_method

__all__ = ["AdapterMethod", "Requirements", "check_requirements", "detect_method"]

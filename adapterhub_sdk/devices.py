"""Torch devices as users name them (``cpu``, ``cuda:1``, ``mps``), checked before a model
is loaded onto one, so a typo or a missing GPU is one clear error instead of torch's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DeviceError

if TYPE_CHECKING:
    import torch


def parse_device(name: Any) -> torch.device:
    """``name`` as a torch device, whether or not this machine has it."""
    import torch

    if isinstance(name, torch.device):
        return name
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{name!r} is not a torch device") from None


def usable_device(name: Any) -> torch.device:
    """``name`` as a torch device this machine has (a CUDA index below the device count, MPS
    where it is built and available)."""
    import torch

    dev = parse_device(name)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise DeviceError(f"device {str(dev)!r} is not available: this machine has {count} CUDA device(s)"
                              + ("" if torch.backends.cuda.is_built() else " (torch is built without CUDA)"))
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' is not available on this machine")
    return dev

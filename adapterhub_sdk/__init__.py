"""adapterhub_sdk: package, pin, store, resolve and pull PEFT adapters.

    import adapterhub_sdk as ah
    fp = ah.fingerprint("path/to/base")
    reg = ah.Registry.open()
    reg.publish("adapter_dir", name="acme/sentiment", version="1.0.0", base="path/to/base")
    hits = reg.resolve(base="path/to/base", task="sentiment")
    reg.pull("acme/sentiment@^1", dest="out")

Names are imported on first use (PEP 562), so ``import adapterhub_sdk`` and a CLI command
that needs only the registry do not pay for torch, the server or the exports.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "AttachedAdapter": "deploy", "Deployment": "deploy", "StructuralMatchWarning": "deploy",
    **dict.fromkeys((
        "AdapterFormatError", "AdapterHubError", "CorruptFileError", "DestinationError",
        "IncompatibleAdapterError", "IntegrityError", "InvalidNameError", "InvalidVersionError",
        "NotFoundError", "PluginError", "RegistryError", "UnsafeFormatError", "VersionConflictError",
        "WeightsNotFoundError", "DeviceError", "UnpinnedPublishWarning", "SignaturePolicyError", "SigningError"),
        "errors"),
    "NonFiniteError": "adapter_files", "NotRegularFileError": "adapter_files",
    "BaseModelKindError": "base_loading", "LoadedBaseWarning": "base_loading",
    "AmbiguousCheckpointError": "layouts",
    "BaseFingerprint": "fingerprint", "fingerprint": "fingerprint",
    "hookimpl": "hookspecs",
    "load_adapter": "loading", "UnpinnedAdapterWarning": "loading",
    "BaseRef": "manifest", "FileEntry": "manifest", "Manifest": "manifest",
    "AdapterMethod": "methods.base",
    "AdapterPackage": "package", "pack": "package",
    "PluginWarning": "plugins",
    **dict.fromkeys(("GcReport", "Match", "PublishResult", "Registry", "VerifyReport", "VersionInfo"), "registry"),
    "Version": "versions", "VersionSpec": "versions",
}

__all__ = [
    "AdapterFormatError",
    "AdapterHubError",
    "AmbiguousCheckpointError",
    "BaseModelKindError",
    "DeviceError",
    "LoadedBaseWarning",
    "NonFiniteError",
    "NotRegularFileError",
    "UnpinnedPublishWarning",
    "AdapterMethod",
    "AdapterPackage",
    "AttachedAdapter",
    "Deployment",
    "StructuralMatchWarning",
    "BaseFingerprint",
    "BaseRef",
    "CorruptFileError",
    "DestinationError",
    "FileEntry",
    "GcReport",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidNameError",
    "InvalidVersionError",
    "Manifest",
    "Match",
    "NotFoundError",
    "PluginError",
    "PluginWarning",
    "PublishResult",
    "Registry",
    "RegistryError",
    "SignaturePolicyError",
    "SigningError",
    "UnsafeFormatError",
    "VerifyReport",
    "Version",
    "VersionConflictError",
    "VersionInfo",
    "VersionSpec",
    "WeightsNotFoundError",
    "fingerprint",
    "hookimpl",
    "load_adapter",
    "UnpinnedAdapterWarning",
    "pack",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package; ``fingerprint`` the module would then
    hide ``fingerprint`` the function. The package keeps the public name instead (as the
    eager ``from .fingerprint import fingerprint`` did)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .deploy import AttachedAdapter, Deployment, StructuralMatchWarning
    from .errors import (
        AdapterFormatError,
        AdapterHubError,
        CorruptFileError,
        DestinationError,
        IncompatibleAdapterError,
        IntegrityError,
        InvalidNameError,
        InvalidVersionError,
        NotFoundError,
        PluginError,
        RegistryError,
        SignaturePolicyError,
        SigningError,
        UnsafeFormatError,
        VersionConflictError,
        WeightsNotFoundError,
    )
    from .fingerprint import BaseFingerprint, fingerprint
    from .hookspecs import hookimpl
    from .loading import UnpinnedAdapterWarning, load_adapter
    from .manifest import BaseRef, FileEntry, Manifest
    from .methods.base import AdapterMethod
    from .package import AdapterPackage, pack
    from .plugins import PluginWarning
    from .registry import GcReport, Match, PublishResult, Registry, VerifyReport, VersionInfo
    from .versions import Version, VersionSpec

"""adapterhub_sdk: package, pin, store, resolve and pull PEFT adapters.

    import adapterhub_sdk as ah
    fp = ah.fingerprint("path/to/base")
    reg = ah.Registry.open()
    reg.publish("adapter_dir", name="acme/sentiment", version="1.0.0", base="path/to/base")
    hits = reg.resolve(base="path/to/base", task="sentiment")
    reg.pull("acme/sentiment@^1", dest="out")
"""

from __future__ import annotations

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
    UnsafeFormatError,
    VersionConflictError,
    WeightsNotFoundError,
)
from .fingerprint import BaseFingerprint, fingerprint
from .hookspecs import hookimpl
from .loading import load_adapter
from .manifest import BaseRef, FileEntry, Manifest
from .methods.base import AdapterMethod
from .package import AdapterPackage, pack
from .plugins import PluginWarning
from .registry import GcReport, Match, PublishResult, Registry, VerifyReport, VersionInfo
from .versions import Version, VersionSpec

__version__ = "0.1.0"

__all__ = [
    "AdapterFormatError",
    "AdapterHubError",
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
    "pack",
]

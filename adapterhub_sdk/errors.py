"""Exceptions. Every error raised on purpose derives from :class:`AdapterHubError` and,
where one fits, from the builtin it resembles, so callers can catch either way.

Each error carries ``hint``: the next thing the user should do. The CLI prints one
line: ``error: <message>; <hint>``.
"""

from __future__ import annotations

import re


class AdapterHubError(Exception):
    """Base class of all errors raised by adapterhub_sdk."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidNameError(AdapterHubError, ValueError):
    """An adapter name is not a valid ``namespace/name``."""

    hint = "use ASCII 'namespace/name': letters, digits, '-', '_', '.'; e.g. acme/sentiment"


class InvalidVersionError(AdapterHubError, ValueError):
    """A version or version spec cannot be parsed."""

    hint = "versions are semantic (1.2.3); specs: 1.2.3, ^1.2, ~1.2, >=1,<2, latest, or an alias"


class UnsafeFormatError(AdapterHubError, ValueError):
    """A pickle-based file (``.bin``, ``.pt``, ...) was offered. Nothing is unpickled."""


class CorruptFileError(AdapterHubError, ValueError):
    """A file is truncated, malformed, or not what its name says."""


class WeightsNotFoundError(AdapterHubError, FileNotFoundError):
    """A directory holds no weights we can read."""


class AdapterFormatError(AdapterHubError, ValueError):
    """An adapter directory or config is not something we can package."""


class IncompatibleAdapterError(AdapterHubError, ValueError):
    """An adapter does not fit a base model (missing module, shape, ...)."""

    def __init__(self, message: str, *, reasons: list[str] | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reasons = list(reasons or [])


class NotFoundError(AdapterHubError, LookupError):
    """An adapter, version, alias or base is not in the registry."""


class VersionConflictError(AdapterHubError, FileExistsError):
    """``name@version`` already exists with other content; versions are immutable.
    ``differences``: what differs from the stored version, one "field: old → new" each."""

    hint = "publish under a new version; published versions never change"
    differences: tuple[str, ...] = ()


#: the hint of a refusal of what a remote registry sent (its manifest, files or tags disagree)
DISTRUST = "the remote's copy is not what it claims; do not use it, and tell its publisher"


class IntegrityError(AdapterHubError, OSError):
    """Stored bytes do not match their digest (tampering or disk corruption)."""

    hint = ("run 'adapterhub verify' to list every damaged blob, then publish the same files again "
            "under the same name@version: that rewrites damaged or missing blobs")


class DestinationError(AdapterHubError, OSError):
    """A destination directory cannot be created or written."""

    hint = "pass a directory you can write to"


class RegistryError(AdapterHubError, RuntimeError):
    """The registry database cannot be opened or is in an unexpected state."""


class PluginError(AdapterHubError, RuntimeError):
    """A plugin failed to load or raised inside a hook."""


class DeviceError(AdapterHubError, ValueError):
    """A torch device that is not one (``nodev``) or that this machine does not have."""

    hint = "use cpu, cuda, cuda:1 or mps, one this machine has"


class SigningError(AdapterHubError, ValueError):
    """A signing key is missing, malformed, not owner-only, or not known to the registry."""

    hint = "'adapterhub keys list' shows the keys here; 'adapterhub keys generate NAME' makes one"


class SignaturePolicyError(AdapterHubError, PermissionError):
    """A signed-only policy refused a version or directory: not signed by a key it names."""

    hint = ("sign it with one of those keys ('adapterhub sign NS/NAME@VERSION --key NAME'), or trust the "
            "signer's public key ('adapterhub keys trust PUB.pem --name NAME')")


class ForeignStoreWarning(UserWarning):
    """A publish or import wrote blobs into a store that belongs to another registry."""


class UnpinnedPublishWarning(UserWarning):
    """A version was published without a base: it is pinned to no weights."""


#: keyword arguments a message or hint may name, and the CLI option that sets each one
CLI_OPTIONS = {"overwrite": "--force", "base": "--base", "blobs": "--blobs", "name": "--name",
               "subfolder": "--subfolder", "allow_nonfinite": "--allow-nonfinite", "base_path": "--base-path",
               "fmt": "--format"}
_KEYWORD = re.compile(r"(?<![\w.-])(" + "|".join(CLI_OPTIONS) + r")=(True|'[^']*'|[A-Z][A-Z0-9_/.:-]*)")


def cli_wording(text: str) -> str:
    """A message or hint written for Python callers (``overwrite=True``, ``blobs=DIR``,
    ``name='acme/x'``) in the CLI's terms (``--force``, ``--blobs DIR``, ``--name acme/x``).
    Errors name the Python keyword; the CLI prints them through this."""
    def option(m: re.Match[str]) -> str:
        flag, value = CLI_OPTIONS[m.group(1)], m.group(2)
        return flag if value == "True" else f"{flag} {value.strip(chr(39))}"

    return _KEYWORD.sub(option, text)


__all__ = [
    "CLI_OPTIONS",
    "AdapterHubError",
    "AdapterFormatError",
    "CorruptFileError",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidNameError",
    "InvalidVersionError",
    "NotFoundError",
    "PluginError",
    "RegistryError",
    "SignaturePolicyError",
    "SigningError",
    "UnpinnedPublishWarning",
    "UnsafeFormatError",
    "VersionConflictError",
    "WeightsNotFoundError",
    "cli_wording",
]

"""Remote registries by URL scheme (``hf://``, ``oci://``): the one place the core finds
the :class:`~adapterhub_sdk.interfaces.Remote` for a URL. Remotes come from plugins (hook
``register_remotes``); the Hugging Face Hub (:mod:`adapterhub_sdk.hub_remote`) and OCI
registries (:mod:`adapterhub_sdk.oci.remote`) are the built-in ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import NotFoundError
from .interfaces import Remote

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def remote_factories() -> dict[str, Callable[[str], Remote]]:
    """Remote factories by scheme (lowercase), from every plugin."""
    from .plugins import by_scheme

    return by_scheme("register_remotes")


def scheme_of(text: Any) -> str | None:
    """``hf`` for ``hf://ORG/REPO``; None for anything that is not a ``scheme://`` URL."""
    m = _SCHEME.match(text) if isinstance(text, str) else None
    return m[1].lower() if m else None


def remote_for(text: Any) -> Remote | None:
    """The remote that serves the URL ``text``, or None when ``text`` is not a URL of a
    scheme some plugin registered (a local path, a name, a fingerprint)."""
    scheme = scheme_of(text)
    if scheme is None:
        return None
    factory = remote_factories().get(scheme)
    return factory(text) if factory is not None else None


def get_remote(text: str) -> Remote:
    """The remote for the URL ``text``; NotFoundError naming the installed schemes if none."""
    remote = remote_for(text)
    if remote is None:
        schemes = ", ".join(f"{s}://" for s in sorted(remote_factories())) or "none"
        raise NotFoundError(f"{text!r} is not the URL of a remote registry (installed: {schemes})",
                            hint="e.g. hf://ORG/REPO[@VERSION]; a plugin adds other schemes")
    return remote


def is_remote_ref(text: Any) -> bool:
    """Whether ``text`` names something on a remote registry rather than in the local one."""
    return remote_for(text) is not None


"""Blob stores by URL scheme. The built-in ``file`` scheme (and plain paths) is the local
content-addressed store (:mod:`adapterhub_sdk.blobs`, which registers it); plugins add
others through ``register_storage``. Every store is a
:class:`~adapterhub_sdk.interfaces.BlobStorage`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .blobs import BlobStore
from .errors import NotFoundError
from .interfaces import BlobStorage


def storage_factories() -> dict[str, Callable[[str], BlobStorage]]:
    from .plugins import by_scheme

    return by_scheme("register_storage")


def open_blob_store(location: str | os.PathLike[str]) -> BlobStorage:
    """A blob store for a path or ``scheme://...`` URL."""
    text = os.fspath(location)
    if "://" not in text:
        return BlobStore(Path(text).expanduser().absolute())
    scheme = text.split("://", 1)[0].lower()
    factories = storage_factories()
    if scheme not in factories:
        raise NotFoundError(f"no blob storage for {scheme}:// (installed: {', '.join(sorted(factories))})",
                            hint="install a storage plugin for this scheme, or give a directory path")
    return factories[scheme](text)


"""Blob stores by URL scheme. The built-in ``file`` scheme (and plain paths) is the local
content-addressed store; plugins add others through ``register_storage``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .blobs import BlobStore
from .errors import NotFoundError
from .hookspecs import hookimpl


def storage_factories() -> dict[str, Callable[[str], Any]]:
    from .plugins import collect

    found: dict[str, Callable[[str], Any]] = {}

    def register(scheme: str, factory: Callable[[str], Any]) -> None:
        found.setdefault(scheme.lower(), factory)

    collect("register_storage", register=register)
    return found


def open_blob_store(location: str | os.PathLike[str]) -> Any:
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


def _file_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise NotFoundError(f"{url}: file:// URLs name a local path (file:///path)")
    return BlobStore(Path(unquote(parsed.path)))


@hookimpl
def register_storage(register):
    register("file", _file_store)

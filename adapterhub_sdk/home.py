"""Where adapterhub keeps its files: ``ADAPTERHUB_HOME`` or the user data directory."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    env = os.environ.get("ADAPTERHUB_HOME")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_data_dir("adapterhub", appauthor=False))


def cache_dir() -> Path:
    return home_dir() / "cache"


def default_registry_url() -> str:
    env = os.environ.get("ADAPTERHUB_REGISTRY_URL")
    if env:
        return env
    return f"sqlite:///{home_dir() / 'registry.db'}"


def default_blob_root() -> str | Path:
    """ADAPTERHUB_BLOBS (a directory or a storage plugin's URL), else ``<home>/blobs``."""
    env = os.environ.get("ADAPTERHUB_BLOBS")
    if env and "://" in env:
        return env
    return Path(env).expanduser().absolute() if env else home_dir() / "blobs"


def sqlite_blob_root(db_file: str | os.PathLike[str]) -> str | Path:
    """Where a SQLite registry's blobs are when none is given: ``blobs/`` beside its database
    file, unless ADAPTERHUB_BLOBS names a store."""
    if os.environ.get("ADAPTERHUB_BLOBS"):
        return default_blob_root()
    return Path(db_file).parent / "blobs"

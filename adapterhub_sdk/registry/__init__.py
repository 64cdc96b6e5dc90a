"""The registry: a SQL catalog (SQLite by default, PostgreSQL for teams) over a
content-addressed blob store.

A version becomes visible in one transaction that runs only after every blob it
references is stored, so a version is whole or absent whatever process dies when.

:class:`Registry` is the public façade; its parts, one job each, live beside it:
:mod:`.bases` (bases and what identifies them), :mod:`.publish` (the publish
transaction), :mod:`.query` (show, versions, list, aliases, yank), :mod:`.resolve`,
:mod:`.transfer` (pull, push) and :mod:`.lifecycle` (verify, gc).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import db as dbmod
from ..errors import RegistryError
from ._core import (
    T_ADAPTERS,
    T_ALIASES,
    T_BASES,
    T_FILES,
    T_FITS,
    T_REQS,
    T_SOURCES,
    T_TASKS,
    T_VERSIONS,
)
from .bases import BasesPart
from .lifecycle import LifecyclePart
from .publish import PublishPart, UnpinnedPublishWarning  # noqa: F401 - re-exported
from .query import QueryPart
from .resolve import ResolvePart
from .results import (
    MANIFEST_FILE,
    VERDICTS,
    GcReport,
    Match,
    PublishResult,
    VerifyReport,
    VersionInfo,
)
from .signatures import SignaturesPart
from .transfer import TransferPart

if TYPE_CHECKING:
    from ..package import AdapterPackage

__all__ = [
    "MANIFEST_FILE",
    "T_ADAPTERS",
    "T_ALIASES",
    "T_BASES",
    "T_FILES",
    "T_FITS",
    "T_REQS",
    "T_SOURCES",
    "T_TASKS",
    "T_VERSIONS",
    "UnpinnedPublishWarning",
    "VERDICTS",
    "GcReport",
    "Match",
    "PublishResult",
    "Registry",
    "VerifyReport",
    "VersionInfo",
]


class Registry(BasesPart, PublishPart, QueryPart, ResolvePart, TransferPart, LifecyclePart, SignaturesPart):
    """Catalog + blob store. Open with :meth:`open`; close (or use ``with``) when done."""

    @classmethod
    def open(cls, url: str | None = None, *, blobs: str | os.PathLike[str] | None = None,
             upgrade: bool = False) -> Registry:
        """Open (creating if new) the registry at ``url``; default SQLite under ADAPTERHUB_HOME.
        ``blobs`` is the blob store: a directory or a ``scheme://`` URL of a storage plugin
        (env ADAPTERHUB_BLOBS; default ``blobs/`` beside a SQLite database file; a PostgreSQL
        registry needs one given, since all its users must share it)."""
        from ..home import default_blob_root, default_registry_url

        url = url or default_registry_url()
        engine = dbmod.make_engine(url)
        if upgrade:
            dbmod.upgrade(engine)
        else:
            dbmod.ensure_schema(engine)
        if blobs is None:
            path = dbmod.sqlite_path(engine)
            if path and not os.environ.get("ADAPTERHUB_BLOBS"):
                blobs = Path(path).parent / "blobs"  # a SQLite registry keeps its blobs beside it
            elif not dbmod.is_sqlite(engine) and not os.environ.get("ADAPTERHUB_BLOBS"):
                engine.dispose()
                raise RegistryError(
                    "a PostgreSQL registry needs the blob store its users share, and none was given",
                    hint="pass blobs=DIR or set ADAPTERHUB_BLOBS; "
                         "every user of this registry must use the same one")
            else:
                blobs = default_blob_root()
        from ..storage import open_blob_store

        return cls(engine, open_blob_store(blobs), url)

    def close(self) -> None:
        self.engine.dispose()

    def pack_files(self, files: Mapping[str, str | os.PathLike[str]], *,
                   root: str | os.PathLike[str] | None = None, select: bool = False,
                   stage: Callable[[Any], Any] | None = None) -> AdapterPackage:
        """Pack named files (a remote's snapshot: package name -> path of a regular file) as
        publish packs a directory, the method found by the installed plugins. Remotes pack
        through the registry they are given, so the built-in ones import no packer (and no
        plugin lookup) of their own. ``stage``: as :func:`~adapterhub_sdk.package.pack_files`'s
        (a remote whose files are private copies already passes one that copies nothing)."""
        from ..package import pack_files

        return pack_files(files, root=root, select=select, stage=stage)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r}, blobs={str(self.blobs)!r})"

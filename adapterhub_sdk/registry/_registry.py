"""The :class:`Registry` façade, made of its parts (see the package's docstring)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import db as dbmod
from ..errors import RegistryError
from .bases import BasesPart
from .lifecycle import LifecyclePart
from .publish import PublishPart
from .query import QueryPart
from .resolve import ResolvePart
from .signatures import SignaturesPart
from .transfer import TransferPart

if TYPE_CHECKING:
    pass

__all__ = ["Registry"]


class Registry(BasesPart, PublishPart, QueryPart, ResolvePart, TransferPart, LifecyclePart, SignaturesPart):
    """Catalog + blob store. Open with :meth:`open`; close (or use ``with``) when done."""

    @classmethod
    def open(cls, url: str | None = None, *, blobs: str | os.PathLike[str] | None = None,
             upgrade: bool = False, create: bool = True) -> Registry:
        """Open (creating if new) the registry at ``url``; default SQLite under ADAPTERHUB_HOME.
        ``create=False``: a SQLite file that does not exist is a RegistryError, nothing created.
        ``blobs`` is the blob store: a directory or a ``scheme://`` URL of a storage plugin
        (env ADAPTERHUB_BLOBS; default ``blobs/`` beside a SQLite database file; a PostgreSQL
        registry needs one given, since all its users must share it)."""
        from ..home import default_blob_root, default_registry_url, sqlite_blob_root

        url = url or default_registry_url()
        engine = dbmod.make_engine(url, create=create)
        if upgrade:
            dbmod.upgrade(engine)
        else:
            dbmod.ensure_schema(engine)
        if blobs is None:
            path = dbmod.sqlite_path(engine)
            if path:
                blobs = sqlite_blob_root(path)  # a SQLite registry keeps its blobs beside it
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

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r}, blobs={str(self.blobs)!r})"

"""State and tables every part of the registry shares: the engine, the blob store, the
memos, and the transaction helpers."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table

from .. import db as dbmod
from .. import tables
from ..fingerprint import BaseFingerprint
from ..resolving import Fetch, dbapi_fetch

if TYPE_CHECKING:
    from .results import VersionInfo


T_ADAPTERS: Table = tables.adapters
T_VERSIONS: Table = tables.versions
T_TASKS: Table = tables.version_tasks
T_FILES: Table = tables.files
T_ALIASES: Table = tables.aliases
T_BASES: Table = tables.bases
T_SOURCES: Table = tables.base_sources
T_REQS: Table = tables.requirement_sets
T_FITS: Table = tables.fits


def _fetch(conn: Connection) -> Fetch:
    """A ``fetch(sql, params)`` of :mod:`adapterhub_sdk.resolving`'s statements on ``conn``'s
    DBAPI cursor, inside its transaction (driver errors become one-line RegistryErrors)."""
    return dbapi_fetch(conn.connection.cursor, conn.dialect.paramstyle, conn.dialect.loaded_dbapi.Error,
                       dbmod.database_error)


class RegistryCore:
    """What every part of :class:`~adapterhub_sdk.registry.Registry` works on."""

    def __init__(self, engine: Any, blobs: Any, url: str):
        self.engine = engine
        self.blobs = blobs
        self.url = url
        # arch signature -> (number of requirement sets, those that fit). Fits never change and
        # requirement sets are only ever added, so the memo holds while the count matches.
        self._fits_memo: dict[str, tuple[int, builtins.list[str]]] = {}
        # fingerprint -> BaseFingerprint; base rows are written once and never change
        self._base_memo: dict[str, BaseFingerprint] = {}
        self._name_memo: dict[int, str] = {}
        self._task_memo: dict[str, str] = {}  # manifest digest -> tasks joined by newlines
        self._task_tuples: dict[str, tuple[str, ...]] = {}

    def _read(self):
        return dbmod.transaction(self.engine)

    def _write(self):
        return dbmod.transaction(self.engine, write=True)

    if TYPE_CHECKING:  # provided by the parts, used across them
        def _as_base(self, base: Any) -> BaseFingerprint | str: ...

        @staticmethod
        def _seen_as(conn: Any, fp: str) -> tuple[str, ...]: ...

        def _select_version(self, conn: Connection, name: str, spec: str | None) -> Any: ...

        def show(self, ref: str) -> VersionInfo: ...

"""State and tables every part of the registry shares: the engine, the blob store, the
memos, and the transaction helpers. Importing it loads no SQLAlchemy (the tables, ``T_*``,
load it when first named), so that the parts written on :mod:`adapterhub_sdk.catalog`'s
statements serve :mod:`adapterhub_sdk.sqlite_registry` too."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..catalog import Sql
from ..errors import NotFoundError
from ..fingerprint import BaseFingerprint
from ..resolving import HEXPREFIX, Fetch, lookup_base

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

    from .results import VersionInfo

    T_ADAPTERS: Table
    T_VERSIONS: Table
    T_TASKS: Table
    T_FILES: Table
    T_ALIASES: Table
    T_BASES: Table
    T_SOURCES: Table
    T_REQS: Table
    T_FITS: Table

_TABLES = {"T_ADAPTERS": "adapters", "T_VERSIONS": "versions", "T_TASKS": "version_tasks", "T_FILES": "files",
           "T_ALIASES": "aliases", "T_BASES": "bases", "T_SOURCES": "base_sources", "T_REQS": "requirement_sets",
           "T_FITS": "fits"}


def __getattr__(name: str) -> Any:
    if name in _TABLES:
        from .. import tables

        return getattr(tables, _TABLES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fetch(conn: Connection) -> Fetch:
    """A ``fetch(sql, params)`` of :mod:`adapterhub_sdk.resolving`'s statements on ``conn``'s
    DBAPI cursor, inside its transaction: the catalog's runner (:func:`sql_on`)."""
    return sql_on(conn)


def sql_on(conn: Connection) -> Sql:
    """:mod:`adapterhub_sdk.catalog`'s statements on ``conn``'s DBAPI cursor, inside its transaction."""
    from ..dbinfo import database_error

    dbapi = conn.dialect.loaded_dbapi
    return Sql(conn.connection.cursor, postgres=conn.dialect.name == "postgresql", errors=dbapi.Error,
               integrity=dbapi.IntegrityError, wrap=database_error)


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
        from .. import db as dbmod

        return dbmod.transaction(self.engine)

    def _write(self):
        from .. import db as dbmod

        return dbmod.transaction(self.engine, write=True)

    @contextlib.contextmanager
    def _sql(self, *, write: bool = False) -> Iterator[Sql]:
        """A transaction (a write one: ``write``) as :mod:`adapterhub_sdk.catalog` statements."""
        with (self._write() if write else self._read()) as conn:
            yield sql_on(conn)

    def _read_only(self) -> bool:
        """Whether this registry's database is one this process cannot write."""
        from .. import db as dbmod

        return dbmod.is_read_only(self.engine)

    def get_base(self, fp: str) -> BaseFingerprint:
        """A base known to this registry, by fingerprint or a unique prefix of at least 8 hex digits."""
        fp = fp.strip().lower()
        if not HEXPREFIX.fullmatch(fp):
            raise NotFoundError(f"{fp!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
        memo = self._base_memo.get(fp)
        if memo is not None:
            return memo
        with self._sql() as q:
            base = lookup_base(q, fp)
        if len(fp) == 64:  # parsing the shape table costs ~1 ms; keep the last 256 bases
            if len(self._base_memo) >= 256:
                self._base_memo.pop(next(iter(self._base_memo), ""), None)
            self._base_memo[fp] = base
        return base

    def show(self, ref: str) -> VersionInfo:
        """One version with its manifest (``ns/name`` alone means the latest)."""
        from ..names import parse_ref

        r = parse_ref(ref)
        with self._sql() as q:
            return catalog.show(q, r.name, r.spec)

    if TYPE_CHECKING:  # provided by the parts, used across them
        def _as_base(self, base: Any) -> BaseFingerprint | str: ...

        def _select_version(self, conn: Connection, name: str, spec: str | None) -> Any: ...


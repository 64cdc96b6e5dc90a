"""A SQLite registry opened with the standard library's sqlite3 alone: what ``adapterhub pull
oci://...`` and ``adapterhub push ... --to oci://`` need, without SQLAlchemy's import (a fifth
of a second, more than the whole transfer of a small adapter from a registry nearby).

It is not a second implementation: it is the registry's own bases, publish, transfer and
signature parts (:mod:`adapterhub_sdk.registry.bases`, ``.publish``, ``.transfer``,
``.signatures``), whose every
statement is :mod:`adapterhub_sdk.catalog`'s plain SQL, run here on a sqlite3 connection set
up as the registry's engine sets up its own (busy timeout, WAL, foreign keys, ``BEGIN
IMMEDIATE`` for writes). It opens only an existing database file at the current schema that
this process can write; for anything else (a new home, an older schema, a read-only copy, a
PostgreSQL URL) :meth:`SqliteRegistry.open` returns None and the caller opens the full
:class:`~adapterhub_sdk.registry.Registry`, which creates, migrates, refuses or explains."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from .catalog import Sql
from .dbinfo import (
    BUSY_TIMEOUT_MS,
    HEAD_REVISION,
    database_error,
    read_only_uri,
    sqlite_file,
    sqlite_revision,
)
from .registry.bases import BasesPart
from .registry.publish import PublishPart
from .registry.signatures import SignaturesPart
from .registry.transfer import TransferPart


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteRegistry(BasesPart, PublishPart, TransferPart, SignaturesPart):
    """The registry's record, pull, push and signature operations on a SQLite file, over
    sqlite3 (see the module's docstring). Open with :meth:`open`; close when done."""

    @classmethod
    def open(cls, url: str, *, blobs: str | os.PathLike[str] | None = None) -> SqliteRegistry | None:
        """The registry at ``url`` when it is a plain ``sqlite:///PATH`` to an existing file at
        the current schema, in WAL mode, that this process can write; else None."""
        from .home import sqlite_blob_root
        from .storage import open_blob_store

        path = sqlite_file(url)
        if path is None or not os.path.isfile(path) or read_only_uri(path) is not None:
            return None
        try:
            conn = _connect(path)
        except sqlite3.Error:
            return None
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal" \
                    or sqlite_revision(conn) != HEAD_REVISION:
                conn.close()
                return None
        except sqlite3.Error:
            conn.close()
            return None
        store = open_blob_store(blobs if blobs is not None else sqlite_blob_root(path))
        reg = cls(None, store, url)
        reg._path, reg._conn = path, conn
        return reg

    _path: str
    _conn: sqlite3.Connection | None

    @contextlib.contextmanager
    def _sql(self, *, write: bool = False) -> Iterator[Sql]:
        """One transaction (``BEGIN IMMEDIATE`` for a write, as the registry's engine begins
        one): committed when the block ends, rolled back when it raises. A transaction begun
        inside another gets a connection of its own, as the engine's pool would give it."""
        own = self._conn is None or self._conn.in_transaction
        conn = _connect(self._path) if own else self._conn
        assert conn is not None
        try:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise database_error(exc) from exc
            try:
                yield Sql(conn.cursor, postgres=False, errors=sqlite3.Error, integrity=sqlite3.IntegrityError,
                          wrap=database_error)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise database_error(exc) from exc
        finally:
            if own:
                conn.close()

    def _read(self) -> Any:
        raise TypeError("SqliteRegistry runs adapterhub_sdk.catalog statements only (use _sql)")

    _write = _read

    def _read_only(self) -> bool:
        return False  # open() takes only a file this process can write

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SqliteRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteRegistry({self.url!r}, blobs={str(self.blobs)!r})"

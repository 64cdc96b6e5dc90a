"""What a read-only command needs to know about the registry database without loading
SQLAlchemy: the schema revisions this code knows, one-line errors for driver errors, and a
bare ``sqlite3`` connection to a SQLite registry that is already at the current schema
(``db`` builds engines, creates and migrates schemas, and re-exports these names)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from urllib.parse import quote, unquote

from .errors import RegistryError

BUSY_TIMEOUT_MS = 120_000
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that accepts connections but never answers

# The migrations in registry/migrations, oldest first; the last is the schema this code writes.
# Kept here so that opening a registry is one query against alembic_version, without loading
# Alembic and its script directory (tests/test_startup.py keeps them in sync with the scripts).
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
HEAD_REVISION = REVISIONS[-1]


def database_error(exc: BaseException) -> RegistryError:
    """A one-line RegistryError for a database driver's error."""
    msg = (str(exc) or type(exc).__name__).strip()
    if "no such column" in msg or "does not exist" in msg and "column" in msg:
        return RegistryError(f"the registry schema does not match this adapterhub_sdk ({msg.splitlines()[0]})",
                             hint="run 'adapterhub db upgrade'; if it says the schema is current, the database "
                                  "was written by another adapterhub_sdk build")
    if "timeout expired" in msg or "canceling statement due to statement timeout" in msg:
        what = "a statement" if "statement" in msg else "the connection"
        return RegistryError(f"the database server did not answer {what} in time ({msg.splitlines()[0]})",
                             hint="check that the registry's database server is up and reachable "
                                  "(a stalled server or a network filter looks like this)")
    if "disk I/O error" in msg or "disk is full" in msg or "File too large" in msg:
        return RegistryError(f"the registry's database could not be written ({msg.splitlines()[0]})",
                             hint="check the free space and the file-size limit (ulimit -f) where the registry lives")
    if "locked" in msg or "busy" in msg:
        return RegistryError(f"the registry stayed locked by another process for {BUSY_TIMEOUT_MS // 1000}s",
                             hint="another adapterhub command holds a long write; retry when it ends")
    return RegistryError(f"database error: {msg.splitlines()[0]}",
                         hint="check the registry URL and that the database server is running")


def _no_such_table(exc: BaseException) -> bool:
    msg = str(exc)
    return "no such table" in msg or ("does not exist" in msg and "alembic_version" in msg)


def sqlite_revision(cur: Any) -> str | None:
    """The revision in alembic_version, on a plain sqlite3 cursor (None: no table, or not one row)."""
    try:
        rows = cur.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError as exc:
        if not _no_such_table(exc):
            raise
        return None
    return rows[0][0] if len(rows) == 1 else None


def sqlite_file(url: str) -> str | None:
    """The database file of a plain ``sqlite:///PATH`` URL (None for anything else: memory,
    URL parameters, another driver or database), as SQLAlchemy reads it."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix):]
            if not path or "?" in path or path == ":memory:":
                return None
            return os.path.abspath(os.path.expanduser(unquote(path)))
    return None


def read_only_uri(path: str) -> str | None:
    """The ``file:`` URI to open an existing registry file this process cannot write (a
    read-only mount, a copy without write permission), or None when it can write it.
    SQLite opens a WAL database read-only only when its -wal and -shm files exist or can be
    created; where neither holds (a copy closed cleanly, on a read-only mount) the main file
    holds every committed row, and ``immutable=1`` reads it without them."""
    folder = os.path.dirname(path)
    if not os.path.isfile(path) or (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
        return None
    uri = "file:" + quote(path) + "?mode=ro"
    sidecars = all(os.path.exists(path + s) for s in ("-wal", "-shm"))
    return uri if sidecars or os.access(folder, os.W_OK) else uri + "&immutable=1"


def read_only_error(what: str) -> RegistryError:
    return RegistryError(f"the registry is read-only here; {what} needs a registry this process can write",
                         hint="read commands work on this copy; write to the registry it was copied from "
                              "or choose another with --registry")


def sqlite_reader(url: str) -> sqlite3.Connection | None:
    """A read-only-use sqlite3 connection to the registry at ``url`` when it is an existing
    SQLite file at the current schema, else None (the caller then opens the full Registry,
    which creates, refuses or explains)."""
    path = sqlite_file(url)
    if path is None or not os.path.isfile(path):
        return None
    ro = read_only_uri(path)
    try:
        conn = sqlite3.connect(ro or path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, uri=ro is not None)
    except sqlite3.Error:
        return None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if (mode == "wal" or ro) and sqlite_revision(conn) == HEAD_REVISION:
            return conn
    except sqlite3.Error:
        pass
    conn.close()
    return None


def sqlite_fetch(conn: sqlite3.Connection) -> Any:
    """A ``fetch(sql, params)`` over ``conn`` for :func:`adapterhub_sdk.listing.iter_versions`:
    driver errors become one-line RegistryErrors."""
    def fetch(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise database_error(exc) from exc

    return fetch

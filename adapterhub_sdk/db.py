"""Database engines and schema migrations for the registry.

SQLite: WAL journal, a busy timeout, foreign keys, and write transactions that begin
with ``BEGIN IMMEDIATE`` so concurrent writers queue for the lock instead of failing
half-way. PostgreSQL: plain transactions; uniqueness races are retried by the caller, and the
writers of one adapter's versions queue for an advisory lock (catalog.lock_versions_of).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from ._sqlite import enable_wal
from .dbinfo import (  # noqa: F401 - re-exported: db.HEAD_REVISION, db.database_error, ...
    BUSY_TIMEOUT_MS,
    CONNECT_TIMEOUT_S,
    HEAD_REVISION,
    REVISIONS,
    _no_such_table,
    database_error,
    read_only_error,
    read_only_uri,
    sqlite_revision,
)
from .errors import RegistryError

_ADVISORY_KEY = 0x61647068  # "adph"
_READ_ONLY: weakref.WeakSet[Engine] = weakref.WeakSet()




def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_registry" / "migrations", here.parent / "registry" / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RegistryError("registry migrations are missing from this installation",
                        hint="reinstall adapterhub_sdk")


def normalize_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def parse_url(url: str) -> URL:
    """A registry URL of a supported database, parsed; RegistryError for any other text."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"registry URL {url!r} is not valid",
                            hint="use sqlite:///PATH or postgresql://USER@HOST:PORT/DB") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise RegistryError(f"registry URL scheme {parsed.drivername!r} is not supported",
                            hint="use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return parsed


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine on the registry database at ``url``. A SQLite file that does not exist is
    created (its folder too) when the schema is, unless ``create`` is False (a command that
    only reads: a mistyped path must not become a new, empty registry): RegistryError then."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        ro = None
        if db and db != ":memory:" and not parsed.query:
            file = Path(db).expanduser().absolute()
            ro = read_only_uri(str(file))
            if ro is None and not create and not file.exists():
                raise RegistryError(f"no registry at {file}: the file does not exist",
                                    hint="check --registry / ADAPTERHUB_REGISTRY_URL, or publish an adapter "
                                         "there to create it")
            if ro is None:
                file.parent.mkdir(parents=True, exist_ok=True)
        timeout = BUSY_TIMEOUT_MS / 1000
        if ro is not None:
            uri = ro
            engine = create_engine(parsed, creator=lambda: sqlite3.connect(uri, uri=True, timeout=timeout,
                                                                           check_same_thread=False))
            _READ_ONLY.add(engine)
        else:
            engine = create_engine(parsed, connect_args={"timeout": timeout, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # transactions are begun explicitly below
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if ro is None:
                enable_wal(cur, BUSY_TIMEOUT_MS / 1000)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            write = conn.get_execution_options().get("adapterhub_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=_pg_connect_args(parsed))
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        if parsed.get_backend_name() == "postgresql":
            raise RegistryError(f"no database driver for {parsed.drivername!r}",
                                hint="pip install 'adapterhub_sdk[postgres]'") from exc
        raise RegistryError(f"registry URL scheme {parsed.drivername!r} is not supported",
                            hint="use sqlite:///PATH or postgresql://USER@HOST:PORT/DB") from exc


def _pg_connect_args(parsed: URL) -> dict[str, object]:
    """Timeouts so that a server that accepts connections but never answers is an error
    within seconds, not a hang: the connection handshake (``connect_timeout``), statements
    (``statement_timeout``, as long as SQLite's busy timeout) and a dead peer (TCP
    keepalives). Any of them given in the URL's query wins."""
    args: dict[str, object] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": f"-c statement_timeout={BUSY_TIMEOUT_MS}",
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    }
    return {k: v for k, v in args.items() if k not in parsed.query}


@contextlib.contextmanager
def transaction(engine: Engine, *, write: bool = False) -> Iterator[Connection]:
    """A connection in a transaction that commits on success and rolls back on error."""
    if write and is_read_only(engine):
        raise read_only_error("this command")
    conn = engine.connect()
    if write:
        conn = conn.execution_options(adapterhub_write=True)
    try:
        with conn.begin():
            yield conn
    except OperationalError as exc:
        raise _operational(exc) from exc
    finally:
        conn.close()


def _operational(exc: OperationalError) -> RegistryError:
    return database_error(exc.orig if exc.orig is not None else exc)


def _alembic_config(conn: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


#: Alembic's version table, as ``alembic.runtime.migration`` defines it (create_fresh writes it)
VERSION_TABLE = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                      PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


@functools.lru_cache(maxsize=1)
def _scripts():
    """The migration scripts, read once per process (every Registry.open asks for the head)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def schema_revision(conn: Connection) -> str | None:
    """The revision in alembic_version (None when the table is missing or empty): one query.
    On PostgreSQL a failed statement aborts the transaction, which is then rolled back."""
    from sqlalchemy.exc import ProgrammingError

    try:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except (OperationalError, ProgrammingError) as exc:
        if not _no_such_table(exc):
            raise
        conn.rollback()
        return None
    if len(rows) > 1:  # a branched history: only Alembic can say which head is current
        conn.rollback()
        return current_revision(conn)
    return rows[0][0] if rows else None


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise schema creation between processes."""
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        if not db or db == ":memory:":
            yield
            return
        from filelock import FileLock

        with FileLock(str(Path(db).expanduser().absolute()) + ".lock", timeout=BUSY_TIMEOUT_MS / 1000):
            yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
            conn.commit()


@contextlib.contextmanager
def operational_errors() -> Iterator[None]:
    """Database errors as one-line RegistryErrors (a server that is down, a missing database,
    a statement the schema refuses)."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        raise database_error(exc.orig if exc.orig is not None else exc) from exc


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply all migrations. Returns (revision before, revision after). A database holding
    other tables and no adapterhub schema is refused, never migrated into."""
    from alembic import command

    with _schema_lock(engine):
        with engine.connect() as conn:
            before = current_revision(conn)
            foreign = set(inspect(conn).get_table_names()) - {"alembic_version"} if before is None else set()
        if foreign:
            raise RegistryError("the database has tables but no adapterhub schema; not upgrading it",
                                hint="point --registry at an empty database or an adapterhub registry")
        head = head_revision()
        if before != head:
            with engine.connect() as conn:
                cfg = _alembic_config(conn)
                command.upgrade(cfg, "head")
                conn.commit()
        return before, head


def create_fresh(engine: Engine) -> None:
    """Create the whole schema of a new database in ONE transaction and stamp it at head:
    a process killed half-way leaves an empty database, never a half-migrated one.

    Every check runs inside that transaction, under a lock that the transaction itself holds
    (SQLite: ``BEGIN IMMEDIATE``'s write lock; PostgreSQL: ``pg_advisory_xact_lock``, released
    at commit or when the process dies), so a racing opener sees no schema or all of it.

    The stamp is written as Alembic writes it (its ``alembic_version`` table, primary key
    ``alembic_version_pkc``, one row: :data:`HEAD_REVISION`) without importing Alembic,
    whose import (with Mako and Pygments) cost the first command in a new home ~0.2 s;
    ``tests/test_migrations.py`` checks the result against Alembic's own stamp."""
    from .tables import metadata

    conn = engine.connect().execution_options(adapterhub_write=True)
    try:
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" in tables and conn.execute(VERSION_TABLE.select()).first() is not None:
                return  # another process created it meanwhile
            if tables - {"alembic_version"}:
                raise RegistryError("the database has tables but no adapterhub schema version",
                                    hint="point --registry at an empty database or an adapterhub registry")
            metadata.create_all(conn)
            VERSION_TABLE.create(conn, checkfirst=True)
            conn.execute(VERSION_TABLE.insert(), {"version_num": HEAD_REVISION})
    finally:
        conn.close()


def ensure_schema(engine: Engine) -> None:
    """Create the schema on a new database; refuse an outdated one with the command to run."""
    try:
        with engine.connect() as conn:
            current = schema_revision(conn)
            if current == HEAD_REVISION:
                return
    except DBAPIError as exc:  # a server that is down, a file that is not a database
        raise database_error(exc.orig if exc.orig is not None else exc) from exc
    head = HEAD_REVISION
    if current is None:  # new, or being created right now: create_fresh decides under its lock
        for attempt in range(3):
            try:
                create_fresh(engine)
                return
            except OperationalError as exc:
                if attempt == 2:
                    raise _operational(exc) from exc
                time.sleep(0.2)
        return
    if current not in REVISIONS:
        raise RegistryError(f"the registry schema ({current}) is newer than this adapterhub_sdk knows",
                            hint="upgrade adapterhub_sdk")
    raise RegistryError(f"the registry schema is at {current}, this adapterhub_sdk needs {head}",
                        hint="run 'adapterhub db upgrade'")


def is_read_only(engine: Engine) -> bool:
    """Whether ``engine`` reads a registry file this process cannot write (see
    :func:`~adapterhub_sdk.dbinfo.read_only_uri`): caches are then skipped, writes refused."""
    return engine in _READ_ONLY


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(engine: Engine) -> str | None:
    if is_sqlite(engine) and engine.url.database not in (None, "", ":memory:"):
        return os.path.abspath(os.path.expanduser(engine.url.database))
    return None

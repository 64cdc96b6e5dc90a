"""Running plain SQL (``?`` parameters) on a DBAPI cursor inside the caller's transaction, on
SQLite or PostgreSQL: the one runner of :mod:`adapterhub_sdk.catalog`'s statements and of the
blob store records (:mod:`adapterhub_sdk.store_owner`). No SQLAlchemy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RowConflict(Exception):
    """A statement broke a unique constraint (another writer got there first): the caller's
    transaction is rolled back and may be retried."""


class Sql:
    """Statements on one connection, inside the caller's transaction. Calling it runs one
    statement and returns its rows (a :data:`adapterhub_sdk.resolving.Fetch`); driver errors
    become one-line RegistryErrors, a unique-constraint violation :class:`RowConflict`."""

    def __init__(self, cursor: Callable[[], Any], *, postgres: bool, errors: Any, integrity: Any,
                 wrap: Callable[[BaseException], Exception]):
        self._cursor = cursor
        self.postgres = postgres
        self._errors = errors
        self._integrity = integrity
        self._wrap = wrap

    def _run(self, sql: str, params: Sequence[Any], many: bool) -> tuple[list[tuple[Any, ...]], int]:
        cur = self._cursor()
        try:
            sql = sql.replace("?", "%s") if self.postgres else sql
            if many:
                cur.executemany(sql, [tuple(p) for p in params])
                return [], cur.rowcount
            cur.execute(sql, tuple(params))
            rows = cur.fetchall() if cur.description is not None else []
            return (rows if isinstance(rows, list) else list(rows)), cur.rowcount
        except self._integrity as exc:
            raise RowConflict(str(exc)) from exc
        except self._errors as exc:
            raise self._wrap(exc) from exc
        finally:
            cur.close()

    def __call__(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params, False)[0]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement that returns no rows; the rows it changed."""
        return self._run(sql, params, False)[1]

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run(sql, rows, True)

    def now(self) -> Any:
        """The current time as a timestamp column takes it: an aware datetime on PostgreSQL;
        on SQLite the text SQLAlchemy writes there (UTC, no offset), so either reads it back."""
        now = utcnow()
        return now if self.postgres else now.strftime("%Y-%m-%d %H:%M:%S.%f")

    def flag(self, value: bool) -> Any:
        return bool(value) if self.postgres else int(bool(value))

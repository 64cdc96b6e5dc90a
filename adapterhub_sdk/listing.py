"""Listing versions in pages: keyset pagination over (adapter name, version id), so that
memory stays flat and the first page costs the same at 100 versions or a million; only the
columns a listing shows are read, never the manifest bodies.

SQL is written once, with ``:name`` parameters, and run on the DBAPI cursor (SQLite takes
them as they are; psycopg gets ``%(name)s``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from .version_info import VersionInfo, _iso
from .versions import Version

#: runs one statement (``:name`` parameters) and returns its rows as tuples
Fetch = Callable[[str, dict[str, Any]], Sequence[tuple[Any, ...]]]

PAGE = 500  # versions per statement: a few hundred KB of rows at most

_COLS = ("v.id, v.adapter_id, a.name, a.name_key, v.version, v.digest, v.method, v.variant, v.base_fingerprint, "
         "v.base_name, v.size, v.yanked, v.created_at, v.source")
_VCOLS = ("v.id, v.adapter_id, v.version, v.digest, v.method, v.variant, v.base_fingerprint, v.base_name, v.size, "
          "v.yanked, v.created_at, v.source")
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=64)
def pyformat(sql: str) -> str:
    """``:name`` parameters as ``%(name)s`` (psycopg's style)."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def page_sql(*, task: bool, method: bool, base: bool, name: bool, include_yanked: bool, first: bool,
             collate_c: bool, postgres: bool | None = None) -> str:
    """One page: versions after the (name_key, id) position, in that order. ``collate_c``:
    order names by ``COLLATE "C"`` (byte order, as Python sorts str) where the database's
    own collation orders them otherwise; ``postgres`` (default: ``collate_c``) shapes the
    statement for PostgreSQL's planner."""
    postgres = collate_c if postgres is None else postgres
    lateral = postgres and not (base or name)
    # by base or name on PostgreSQL the filter's index drives and a few rows are sorted: in
    # byte order then, or the planner walks the name index through every adapter instead
    key = 'a.name_key COLLATE "C"' if collate_c or (postgres and not lateral) else "a.name_key"
    where = []
    after = f"({key} > :after_key OR v.id > :after_id)"
    # a probe of the tasks' primary key per candidate row; on PostgreSQL OFFSET 0 keeps it
    # one: as a semi-join it would be driven from every version carrying the task (10% of
    # them), read and sorted on every page (60-80 ms at 100k versions, and growing)
    exists = ("EXISTS (SELECT 1 FROM version_tasks t WHERE t.version_id = v.id AND t.task = :task"
              + (" OFFSET 0)" if postgres else ")"))
    if task:
        where.append(exists)
    if method:
        where.append("(v.method = :method OR v.variant = :method)")
    if base:
        where.append("v.base_fingerprint = :base_fp")
    if name:
        where.append("a.name_key = :name_key")
    if not include_yanked:
        # on PostgreSQL a test no index answers: without statistics the planner would take
        # the resolve index (base first, yanked among its columns) for it, a full scan per adapter
        where.append("v.yanked IS NOT TRUE" if postgres else "v.yanked = :no")
    order = f" ORDER BY {key}, v.id LIMIT :page"
    if lateral:
        # adapters in name order drive a nested loop over each one's versions (OFFSET 0: a
        # subquery of its own per adapter, on the adapter_id index), which stops at the page;
        # in order from the name index where the database orders names as bytes, else from a
        # sort of the adapters alone (narrow rows), never of every version joined to its adapter
        start = f"{key} >= :after_key"
        if collate_c:
            adapters = (f"(SELECT a.id, a.name, a.name_key FROM adapters a{'' if first else ' WHERE ' + start} "
                        f"ORDER BY {key} OFFSET 0) a")
            outer = "" if first else f" WHERE {after}"
        else:
            adapters, outer = "adapters a", "" if first else f" WHERE {start} AND {after}"
        return (f"SELECT {_COLS} FROM {adapters} CROSS JOIN LATERAL (SELECT {_VCOLS} FROM versions v WHERE "
                + " AND ".join(["v.adapter_id = a.id", *where]) + " OFFSET 0) v" + outer + order)
    # Unfiltered (or by task, method, yanked): adapters in name order drive the loop (SQLite
    # takes CROSS JOIN as the join order), so a page reads its rows and stops; left to itself
    # SQLite sorts every version first (0.7 s for a first page at 1M). By base or name the
    # filter's own index is the better start.
    join = "," if base or name else " CROSS JOIN"
    lead = ["v.adapter_id = a.id"]
    if not first:  # the leading term lets the name_key index start at the position
        lead.append(f"{key} >= :after_key AND {after}")
    return f"SELECT {_COLS} FROM adapters a{join} versions v WHERE " + " AND ".join(lead + where) + order


#: whether PostgreSQL orders ``adapters.name_key`` as bytes (C, POSIX, C.UTF-8 under libc), so
#: that its index serves ``ORDER BY name_key``; names are ASCII, where these orders agree
COLLATION_SQL = ("SELECT d.datcollate, to_jsonb(d) ->> 'datlocprovider', (SELECT c.collname FROM pg_attribute t "
                 "JOIN pg_collation c ON c.oid = t.attcollation WHERE t.attrelid = 'adapters'::regclass "
                 "AND t.attname = 'name_key') FROM pg_database d WHERE d.datname = current_database()")


def orders_as_bytes(row: Sequence[Any] | None) -> bool:
    """From :data:`COLLATION_SQL`'s row: the column's collation orders as bytes."""
    if not row:
        return False
    datcollate, provider, column = row
    if column in ("C", "POSIX", "ucs_basic"):
        return True
    if column != "default" or provider not in (None, "c"):  # ICU, PG 17's builtin: not assumed
        return False
    return isinstance(datcollate, str) and (datcollate in ("C", "POSIX") or datcollate.lower() in ("c.utf-8", "c.utf8"))


def _pyformat_fetch(fetch: Fetch, sql: str, params: dict[str, Any]) -> Sequence[tuple[Any, ...]]:
    return fetch(pyformat(sql), params)


def _labels(fetch: Fetch, table: str, column: str, ids: Sequence[int], probe: bool = False) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i in range(0, len(ids), PAGE):
        chunk = ids[i:i + PAGE]
        params = {f"i{k}": v for k, v in enumerate(chunk)}
        if probe:
            # one probe of the table's (version_id, ...) primary key per id: without statistics
            # PostgreSQL reads ``version_id IN (...)`` as a scan of the whole table (17-24 ms
            # at 100k versions)
            values = ", ".join(f"(:{p})" for p in params)
            sql = (f"SELECT x.id, t.{column} FROM (VALUES {values}) x(id) CROSS JOIN LATERAL "
                   f"(SELECT {column} FROM {table} t WHERE t.version_id = x.id OFFSET 0) t")
        else:
            sql = f"SELECT version_id, {column} FROM {table} WHERE version_id IN ({', '.join(':' + p for p in params)})"
        for vid, label in fetch(sql, params):
            out.setdefault(vid, []).append(label)
    return out


def _infos(fetch: Fetch, rows: Sequence[tuple[Any, ...]], postgres: bool = False) -> list[VersionInfo]:
    ids = [r[0] for r in rows]
    tasks = _labels(fetch, "version_tasks", "task", ids, postgres)
    aliases = _labels(fetch, "aliases", "alias", ids)  # few rows, no index on version_id: one scan
    out = []
    for r in rows:
        created = r[12]
        if isinstance(created, str):  # SQLite through the bare DBAPI: the text SQLAlchemy stored
            created = datetime.fromisoformat(created)
        out.append(VersionInfo(r[2], r[4], r[5], r[6], r[7], tuple(sorted(tasks.get(r[0], ()))), r[8], r[9], r[10],
                               bool(r[11]), _iso(created), tuple(sorted(aliases.get(r[0], ()))), source=r[13]))
    return out


def iter_versions(fetch: Fetch, *, postgres: bool, task: str | None = None, method: str | None = None,
                  base_fp: str | None = None, name_key: str | None = None, include_yanked: bool = True,
                  offset: int = 0, limit: int | None = None) -> Iterator[VersionInfo]:
    """Versions sorted by adapter name, newest version first (semver order, which SQL cannot
    sort: each adapter's versions are ordered here, one adapter at a time), from ``offset``,
    at most ``limit``."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must not be negative")
    if postgres:
        fetch = functools.partial(_pyformat_fetch, fetch)
    collate_c = postgres and not orders_as_bytes(next(iter(fetch(COLLATION_SQL, {})), None))
    shape = {"task": bool(task), "method": bool(method), "base": base_fp is not None, "name": bool(name_key),
             "include_yanked": include_yanked, "collate_c": collate_c, "postgres": postgres}
    # a first page of a few rows reads a few rows (one more: the next adapter's first row ends the last one)
    params: dict[str, Any] = {"page": PAGE if limit is None else max(2, min(PAGE, offset + limit + 1))}
    if task:
        params["task"] = task
    if method:
        params["method"] = method.lower()
    if base_fp is not None:
        params["base_fp"] = base_fp
    if name_key:
        params["name_key"] = name_key
    if not include_yanked:
        params["no"] = False
    sql = {first: page_sql(first=first, **shape) for first in (True, False)}
    skip, left = offset, limit
    pending: list[tuple[Any, ...]] = []  # rows read but not emitted: the last adapter may go on
    first = True
    while True:
        page = fetch(sql[first], params)
        first = False
        pending.extend(page)
        last = len(page) < params["page"]
        if not last:
            params["after_key"], params["after_id"] = page[-1][3], page[-1][0]
            tail = len(pending)
            while tail > 0 and pending[tail - 1][1] == pending[-1][1]:
                tail -= 1
            ready, pending = pending[:tail], pending[tail:]
        else:
            ready, pending = pending, []
        rows: list[tuple[Any, ...]] = []
        start = 0
        for k in range(1, len(ready) + 1):  # each adapter's versions, newest first
            if k == len(ready) or ready[k][1] != ready[start][1]:
                rows.extend(sorted(ready[start:k], key=lambda r: Version.parse(r[4]), reverse=True))
                start = k
        if skip:
            dropped = min(skip, len(rows))
            rows, skip = rows[dropped:], skip - dropped
        if left is not None:
            rows = rows[:left]
            left -= len(rows)
        if rows:
            yield from _infos(fetch, rows, postgres)
        if last or left == 0:
            return

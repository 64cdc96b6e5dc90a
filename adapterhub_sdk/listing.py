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
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=64)
def pyformat(sql: str) -> str:
    """``:name`` parameters as ``%(name)s`` (psycopg's style)."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def page_sql(*, task: bool, method: bool, base: bool, name: bool, include_yanked: bool, first: bool,
             collate_c: bool) -> str:
    """One page: versions after the (name_key, id) position, in that order."""
    # Unfiltered (or by task, method, yanked): adapters in name order drive the loop (SQLite
    # takes CROSS JOIN as the join order), so a page reads its rows and stops; left to itself
    # SQLite sorts every version first (0.7 s for a first page at 1M). By base or name the
    # filter's own index is the better start.
    where = ["v.adapter_id = a.id"]
    join = "," if base or name else " CROSS JOIN"
    if not first:  # the leading term lets the name_key index start at the position
        where.append("a.name_key >= :after_key AND (a.name_key > :after_key OR v.id > :after_id)")
    if task:
        where.append("EXISTS (SELECT 1 FROM version_tasks t WHERE t.version_id = v.id AND t.task = :task)")
    if method:
        where.append("(v.method = :method OR v.variant = :method)")
    if base:
        where.append("v.base_fingerprint = :base_fp")
    if name:
        where.append("a.name_key = :name_key")
    if not include_yanked:
        where.append("v.yanked = :no")
    order = 'a.name_key COLLATE "C"' if collate_c else "a.name_key"  # byte order, as Python sorts str
    return (f"SELECT {_COLS} FROM adapters a{join} versions v WHERE " + " AND ".join(where)
            + f" ORDER BY {order}, v.id LIMIT :page")


def _pyformat_fetch(fetch: Fetch, sql: str, params: dict[str, Any]) -> Sequence[tuple[Any, ...]]:
    return fetch(pyformat(sql), params)


def _labels(fetch: Fetch, table: str, column: str, ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i in range(0, len(ids), PAGE):
        chunk = ids[i:i + PAGE]
        params = {f"i{k}": v for k, v in enumerate(chunk)}
        sql = f"SELECT version_id, {column} FROM {table} WHERE version_id IN ({', '.join(':' + p for p in params)})"
        for vid, label in fetch(sql, params):
            out.setdefault(vid, []).append(label)
    return out


def _infos(fetch: Fetch, rows: Sequence[tuple[Any, ...]]) -> list[VersionInfo]:
    ids = [r[0] for r in rows]
    tasks = _labels(fetch, "version_tasks", "task", ids)
    aliases = _labels(fetch, "aliases", "alias", ids)
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
    shape = {"task": bool(task), "method": bool(method), "base": base_fp is not None, "name": bool(name_key),
             "include_yanked": include_yanked, "collate_c": postgres}
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
    if postgres:
        fetch = functools.partial(_pyformat_fetch, fetch)
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
            yield from _infos(fetch, rows)
        if last or left == 0:
            return

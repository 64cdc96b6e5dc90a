"""Reading the catalog: one version (show), an adapter's versions, listings, and the
names that point at versions (aliases, yank)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from .. import catalog
from .. import db as dbmod
from ..errors import IncompatibleAdapterError, InvalidVersionError, NotFoundError
from ..listing import iter_versions
from ..manifest import Manifest
from ..names import name_key, parse_ref, validate_alias, validate_name
from ..tables import utcnow
from ..versions import Version, VersionSpec
from ._core import (
    T_ADAPTERS,
    T_ALIASES,
    T_REQS,
    T_TASKS,
    T_VERSIONS,
    RegistryCore,
    _fetch,
    sql_on,
)
from .resolve import _fetch_tuples
from .results import VersionInfo, _iso

_TASKS_OF = select(T_TASKS.c.version_id, T_TASKS.c.task).where(
    T_TASKS.c.version_id.in_(bindparam("ids", expanding=True)))
_ALIASES_OF = select(T_ALIASES.c.version_id, T_ALIASES.c.alias).where(
    T_ALIASES.c.version_id.in_(bindparam("ids", expanding=True)))
_NAMES_OF = select(T_ADAPTERS.c.id, T_ADAPTERS.c.name).where(T_ADAPTERS.c.id.in_(bindparam("ids", expanding=True)))


class QueryPart(RegistryCore):
    """show, versions, list, alias and yank, and the version lookup they share."""

    def _adapter_id(self, conn: Connection, name: str) -> tuple[int, str]:
        return catalog.adapter_id(sql_on(conn), name)

    def _select_version(self, conn: Connection, name: str, spec: str | None) -> Any:
        """The version row that ``name@spec`` designates (yanked only by exact pin)."""
        return catalog.select_version(sql_on(conn), name, spec)

    def _labels(self, conn: Connection, rows: Sequence[Any]) -> tuple[dict, dict, dict]:
        """Tasks and aliases by version id, names by adapter id, for ``rows``."""
        ids = [r.id for r in rows]
        tasks: dict[int, list[str]] = {}
        aliases: dict[int, list[str]] = {}
        names: dict[int, str] = {}
        # prebuilt statements with an expanding parameter, rows fetched at once and unpacked by
        # position: per-row SQLAlchemy attribute access and per-value IN coercion cost more than
        # the queries themselves on a resolve that returns hundreds of versions
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            for vid, task in conn.execute(_TASKS_OF, {"ids": chunk}).all():
                tasks.setdefault(vid, []).append(task)
            for vid, alias in conn.execute(_ALIASES_OF, {"ids": chunk}).all():
                aliases.setdefault(vid, []).append(alias)
        adapter_ids = sorted({r.adapter_id for r in rows})
        for chunk in (adapter_ids[i:i + 500] for i in range(0, len(adapter_ids), 500)):
            names.update(tuple(a) for a in conn.execute(_NAMES_OF, {"ids": chunk}).all())
        return tasks, aliases, names

    def _info(self, conn: Connection, rows: Sequence[Any], *, with_manifest: bool = False) -> list[VersionInfo]:
        if not rows:
            return []
        tasks, aliases, names = self._labels(conn, rows)
        return [VersionInfo(
            names[r.adapter_id], r.version, r.digest, r.method, r.variant, tuple(sorted(tasks.get(r.id, []))),
            r.base_fingerprint, r.base_name, r.size, bool(r.yanked), _iso(r.created_at),
            tuple(sorted(aliases.get(r.id, []))), Manifest.from_json(r.manifest) if with_manifest else None,
            source=r.source,
        ) for r in rows]

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of an adapter, newest first, yanked ones included."""
        validate_name(name)
        with self._read() as conn:
            adapter_id, _ = self._adapter_id(conn, name)
            rows = conn.execute(select(T_VERSIONS).where(T_VERSIONS.c.adapter_id == adapter_id)).all()
            infos = self._info(conn, rows)
        return sorted(infos, key=lambda i: Version.parse(i.version), reverse=True)

    def list(self, *, task: str | None = None, method: str | None = None, base: Any = None,
             name: str | None = None, include_yanked: bool = True, offset: int = 0,
             limit: int | None = None) -> builtins.list[VersionInfo]:
        """Published versions, filtered; sorted by name, newest version first; from ``offset``,
        at most ``limit``. :meth:`iter_list` streams the same without holding them all."""
        return builtins.list(self.iter_list(task=task, method=method, base=base, name=name,
                                            include_yanked=include_yanked, offset=offset, limit=limit))

    def iter_list(self, *, task: str | None = None, method: str | None = None, base: Any = None,
                  name: str | None = None, include_yanked: bool = True, offset: int = 0,
                  limit: int | None = None) -> Iterator[VersionInfo]:
        """:meth:`list` as an iterator, read a page at a time in one read transaction (memory
        stays flat whatever the registry holds; manifest bodies are never read)."""
        base_fp = None
        if base is not None:
            b = self._as_base(base)
            base_fp = b if isinstance(b, str) else b.digest
        key = name_key(name) if name else None
        with self._read() as conn:
            yield from iter_versions(lambda sql, params: _fetch_tuples(conn, (sql, None), params),
                                     postgres=not dbmod.is_sqlite(self.engine), task=task, method=method,
                                     base_fp=base_fp, name_key=key, include_yanked=include_yanked,
                                     offset=offset, limit=limit)

    # ------------------------------------------------------------------ aliases, yank

    def alias(self, ref: str, alias: str) -> VersionInfo:
        """Point ``alias`` (e.g. ``prod``) at an exact version; moves it if it exists."""
        r = parse_ref(ref)
        validate_alias(alias)
        if r.spec is None or VersionSpec.parse(r.spec).kind != "exact":
            raise InvalidVersionError(f"{ref!r}: an alias points at an exact version (NS/NAME@1.2.3)")
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            # one upsert: a SELECT then an INSERT let two processes creating the same alias at once
            # on PostgreSQL both insert, the second failing on the primary key; setting an alias
            # again moves it, so the later of the two wins, as if they had run one after the other
            if dbmod.is_sqlite(self.engine):
                from sqlalchemy.dialects.sqlite import insert as upsert
            else:
                from sqlalchemy.dialects.postgresql import insert as upsert  # type: ignore[assignment]
            stmt = upsert(T_ALIASES).values(adapter_id=row.adapter_id, alias=alias, version_id=row.id,
                                            updated_at=utcnow())
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[T_ALIASES.c.adapter_id, T_ALIASES.c.alias],
                set_={"version_id": stmt.excluded.version_id, "updated_at": stmt.excluded.updated_at}))
        return self.show(f"{r.name}@{row.version}")

    def alias_target(self, ref: str) -> tuple[str, str, str, bool]:
        """Where the alias ``ns/name@alias`` points now: (canonical name, version, manifest
        digest, yanked), in one indexed query (no manifest read). A server following the
        alias calls this every few seconds. NotFoundError when there is no such alias."""
        r = parse_ref(ref)
        sp = VersionSpec.parse(r.spec or "latest")
        if sp.kind != "alias":
            raise InvalidVersionError(f"{ref!r} does not name an alias (NS/NAME@ALIAS, e.g. @prod)")
        with self._read() as conn:
            row = conn.execute(
                select(T_ADAPTERS.c.name, T_VERSIONS.c.version, T_VERSIONS.c.digest, T_VERSIONS.c.yanked)
                .select_from(T_ALIASES.join(T_ADAPTERS, T_ADAPTERS.c.id == T_ALIASES.c.adapter_id)
                             .join(T_VERSIONS, T_VERSIONS.c.id == T_ALIASES.c.version_id))
                .where(T_ADAPTERS.c.name_key == name_key(r.name), T_ALIASES.c.alias == sp.alias)).first()
        if row is None:
            raise NotFoundError(f"{r.name} has no alias {sp.alias!r}",
                                hint=f"'adapterhub show {r.name}' lists its versions and aliases")
        return str(row.name), str(row.version), str(row.digest), bool(row.yanked)

    def yank(self, ref: str, *, undo: bool = False) -> VersionInfo:
        """Hide a version from ranges, ``latest`` and resolve; exact pins still find it."""
        r = parse_ref(ref)
        if r.spec is None or VersionSpec.parse(r.spec).kind != "exact":
            raise InvalidVersionError(f"{ref!r}: yank needs an exact version (NS/NAME@1.2.3)")
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            if undo and row.yanked:
                self._refuse_unborne(conn, r.name, row)
            conn.execute(update(T_VERSIONS).where(T_VERSIONS.c.id == row.id).values(yanked=not undo))
        return self.show(f"{r.name}@{row.version}")

    def _refuse_unborne(self, conn: Connection, name: str, row: Any) -> None:
        """A version pinned to a base known here whose files do not fit it (an import yanked
        when the base was recorded: registry/bases.py) stays yanked: un-yanked, resolve would
        offer it as an exact match for that base."""
        from ..methods.base import check_requirements
        from ..resolving import lookup_base

        fp = conn.execute(select(T_VERSIONS.c.base_fingerprint, T_REQS.c.body)
                          .join(T_REQS, T_REQS.c.digest == T_VERSIONS.c.req_digest)
                          .where(T_VERSIONS.c.id == row.id)).first()
        if fp is None or not fp.base_fingerprint:
            return
        try:
            base = lookup_base(_fetch(conn), fp.base_fingerprint)  # in this transaction
        except NotFoundError:
            return  # the base is not known here: nothing to check the claim against
        reasons = check_requirements(json.loads(fp.body), base)
        if reasons:
            raise IncompatibleAdapterError(
                f"{name}@{row.version} stays yanked: its manifest claims base {base.short}, but its files do not "
                f"fit it ({reasons[0]})", hint="publish a version whose files fit the base it is pinned to")

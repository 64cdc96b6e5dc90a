"""resolve: which versions fit a base, best first. The statements, the ranking and the
labels live in :mod:`adapterhub_sdk.resolving` (shared with the CLI's read path); here are
the fits it records, the incompatible listing and the runtime check. The hot path reads plain
DBAPI tuples and remembers what never changes (fits per architecture, adapter names, task
lists)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .. import db as dbmod
from .. import resolving as rs
from ..errors import NotFoundError
from ..fingerprint import BaseFingerprint
from ..methods.base import check_requirements
from ..names import name_key, parse_ref
from ..versions import VersionSpec
from ._core import T_ADAPTERS, T_FITS, T_REQS, T_TASKS, T_VERSIONS, RegistryCore, _fetch
from .results import Match

# resolve reads these by position: id adapter_id version digest method variant base_fingerprint size yanked
_RESOLVE_COLS = (T_VERSIONS.c.id, T_VERSIONS.c.adapter_id, T_VERSIONS.c.version, T_VERSIONS.c.digest,
                 T_VERSIONS.c.method, T_VERSIONS.c.variant, T_VERSIONS.c.base_fingerprint, T_VERSIONS.c.size,
                 T_VERSIONS.c.yanked)


def _resolve_filters(by_name: bool, by_task: bool, by_method: bool, values: Mapping[str, Any]
                     ) -> builtins.list[Any]:
    """resolve's filters (the same as resolving.filters_sql) with the literals bound, for the
    incompatible listing."""
    filters = []
    if by_name:
        filters.append(T_VERSIONS.c.adapter_id == select(T_ADAPTERS.c.id).where(
            T_ADAPTERS.c.name_key == values["name_key"]).scalar_subquery())
    if by_task:
        filters.append(select(T_TASKS.c.version_id).where(
            T_TASKS.c.version_id == T_VERSIONS.c.id, T_TASKS.c.task == values["task"]).exists())
    if by_method:
        filters.append(or_(T_VERSIONS.c.method == values["method"], T_VERSIONS.c.variant == values["method"]))
    return filters


def _fetch_tuples(conn: Connection, sql: tuple[str, tuple[str, ...] | None], values: Mapping[str, Any]
                  ) -> builtins.list[tuple[Any, ...]]:
    """Run compiled SQL on the connection's DBAPI cursor, inside its transaction."""
    text_sql, positions = sql
    params: Any = tuple(values[k] for k in positions) if positions is not None else dict(values)
    cur = conn.connection.cursor()
    try:
        cur.execute(text_sql, params)
        rows = cur.fetchall()
        return rows if isinstance(rows, list) else list(rows)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise dbmod.database_error(exc) from exc
    finally:
        cur.close()


class ResolvePart(RegistryCore):
    """resolve and the fits and memos behind it."""

    def _fits(self, fetch: rs.Fetch, base: BaseFingerprint
              ) -> tuple[builtins.list[str], builtins.list[dict[str, Any]], int]:
        """The digests of the requirement sets that fit ``base``'s architecture, the verdicts
        still to record and the number of sets, read inside the caller's transaction. Only sets
        whose probe is one of the base's keys can fit (see adapterhub_sdk/probes.py): those not
        yet checked against the architecture are checked now, so the first resolve of a new
        architecture costs its few candidates, not every set published."""
        arch = base.arch_signature
        n_sets = fetch(rs.N_SETS_SQL, ())[0][0]
        memo = self._fits_memo.get(arch)
        if memo is not None and memo[0] == n_sets:  # sets are only ever added
            return builtins.list(memo[1]), [], n_sets
        known = rs.candidate_verdicts(fetch, arch, base.shapes, base.tied)
        missing = rs.requirement_bodies(fetch, sorted(d for d, ok in known.items() if ok is None))
        fitting = [d for d, ok in known.items() if ok]
        rows = []
        for digest, body in missing:
            reasons = check_requirements(json.loads(body), base)
            rows.append({"req_digest": digest, "arch_signature": arch, "ok": not reasons,
                         "reasons": json.dumps(reasons)})
            if not reasons:
                fitting.append(digest)
        if not rows:
            self._fits_memo[arch] = (n_sets, builtins.list(fitting))
        return fitting, rows, n_sets

    def _record_fits(self, arch: str, rows: builtins.list[dict[str, Any]], n_sets: int,
                     fitting: builtins.list[str]) -> None:
        """Record the verdicts :meth:`_fits` computed (a cache: a read-only copy skips it)."""
        if dbmod.is_read_only(self.engine):  # a read-only copy: fits are computed, not cached
            return
        try:
            with self._write() as conn:
                done = {d for (d,) in conn.execute(select(T_FITS.c.req_digest).where(
                    T_FITS.c.arch_signature == arch, T_FITS.c.req_digest.in_([r["req_digest"] for r in rows])))}
                new = [r for r in rows if r["req_digest"] not in done]
                if new:
                    conn.execute(insert(T_FITS), new)
        except SAIntegrityError:
            pass  # another process recorded the same fits
        self._fits_memo[arch] = (n_sets, builtins.list(fitting))

    def resolve(self, base: Any = None, *, fingerprint: str | None = None, task: str | None = None,
                method: str | None = None, name: str | None = None, runtime: str | None = None,
                include_incompatible: bool = False, limit: int | None = None) -> builtins.list[Match]:
        """Versions that fit ``base`` (path, nn.Module, state dict, BaseFingerprint or fingerprint
        string), best first: exact before structural, newest first. ``name`` may carry a spec
        (``acme/x@^1``); an exact pin also finds a yanked version. ``runtime`` names a runtime
        backend whose limits must admit the adapter (else it is incompatible, with the reason)."""
        backend = None
        if runtime is not None:
            from ..plugins import get_runtime

            backend = get_runtime(runtime)
        if base is None and fingerprint is None:
            raise TypeError("resolve needs a base or a fingerprint")
        if base is None and not rs.HEXPREFIX.fullmatch(str(fingerprint).strip().lower()):
            raise NotFoundError(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
        b = self._as_base(base if base is not None else fingerprint)
        fp = b if isinstance(b, str) else b.digest
        arch = None if isinstance(b, str) else b.arch_signature
        spec = None
        if name is not None:
            ref = parse_ref(name)
            spec = VersionSpec.parse(ref.spec) if ref.spec else None
        values: dict[str, Any] = {"fp": fp}
        if name is not None:
            values["name_key"] = name_key(parse_ref(name).name)
        if task:
            values["task"] = task
        if method:
            values["method"] = method.lower()
        shape = (name is not None, bool(task), bool(method))
        record: builtins.list[dict[str, Any]] = []
        with self._read() as conn:  # one transaction: each is a round trip or more on PostgreSQL
            fetch = _fetch(conn)
            fitting: builtins.list[str] = []
            if arch is not None:
                fitting, record, n_sets = self._fits(fetch, b)  # type: ignore[arg-type]
            alias_vid = None
            if spec is not None and spec.kind == "alias":
                alias_vid = self._select_version(conn, parse_ref(name).name, spec.text).id  # type: ignore[arg-type]
            # plain DBAPI tuples: SQLAlchemy's Row objects cost ~1 us each to build and, unlike
            # tuples of plain values, stay tracked by the garbage collector (hundreds per
            # resolve made its full collections frequent)
            rows, verdicts = rs.version_rows(fetch, fp, fitting, values.get("name_key"), values.get("task"),
                                             values.get("method"), postgres=conn.dialect.name == "postgresql")
            fit_reasons: dict[int, list[str]] = {}
            if include_incompatible:
                self._add_incompatible(conn, b, shape, values, rows, verdicts, fit_reasons)
            kept, parsed = rs.keep(rows, spec, alias_vid)
            if arch is not None:
                kept = rs.unborne_exact(fetch, b, kept, verdicts, fit_reasons,  # type: ignore[arg-type]
                                        include_incompatible)
            if backend is not None and kept:
                kept = self._runtime_check(conn, backend, kept, verdicts, fit_reasons, include_incompatible)
            names = rs.adapter_names(fetch, self._name_memo, {r[1] for r in kept})
            rs.rank(kept, verdicts, parsed, names)
            if limit is not None:
                kept = kept[:limit]
            # SQLite reads inside one snapshot (BEGIN); PostgreSQL each statement at its own
            tasks = rs.task_lists(fetch, self._task_memo, self._task_tuples, kept,
                                  snapshot=conn.dialect.name == "sqlite")
        if record:  # in a write transaction of its own, after the read one (SQLite's cannot upgrade)
            self._record_fits(arch, record, n_sets, fitting)  # type: ignore[arg-type]
        return rs.matches(kept, verdicts, fit_reasons, names, tasks)

    @staticmethod
    def _add_incompatible(conn: Connection, b: BaseFingerprint | str, shape: tuple[bool, bool, bool],
                          values: Mapping[str, Any], rows: builtins.list[tuple[Any, ...]],
                          verdicts: dict[int, str], fit_reasons: dict[int, builtins.list[str]]) -> None:
        """resolve's ``include_incompatible``: every other version the filters admit, with why."""
        arch = None if isinstance(b, str) else b.arch_signature
        fp = b if isinstance(b, str) else b.digest
        seen = {r[0] for r in rows}
        filters = _resolve_filters(*shape, values)
        unchecked: dict[str, builtins.list[str]] = {}  # sets no probe made a candidate
        if arch is not None:
            q = select(*_RESOLVE_COLS, T_FITS.c.reasons, T_VERSIONS.c.req_digest).join(
                T_FITS, and_(T_FITS.c.req_digest == T_VERSIONS.c.req_digest, T_FITS.c.arch_signature == arch),
                isouter=True).where(*filters)
        else:
            q = select(*_RESOLVE_COLS).where(*filters)
        for r in conn.execute(q):
            if r.id in seen:
                continue
            rows.append(tuple(r[:9]))
            verdicts[r.id] = "incompatible"
            reasons = json.loads(r.reasons) if arch is not None and r.reasons else []
            if arch is not None and r.reasons is None:  # never checked: the reasons, computed now
                if r.req_digest not in unchecked:
                    body = conn.execute(select(T_REQS.c.body).where(T_REQS.c.digest == r.req_digest)).scalar()
                    unchecked[r.req_digest] = (check_requirements(json.loads(body), b)  # type: ignore[arg-type]
                                               if body and not isinstance(b, str) else [])
                reasons = unchecked[r.req_digest]
            if arch is None:
                reasons = [f"base {fp[:12]} is not known to this registry, so only exact matches can be "
                           "checked; resolve with --base PATH"]
            fit_reasons[r.id] = reasons or ["does not fit the base"]

    @staticmethod
    def _runtime_check(conn: Connection, backend: Any, kept: builtins.list[tuple[Any, ...]],
                       verdicts: dict[int, str], fit_reasons: dict[int, builtins.list[str]],
                       include_incompatible: bool) -> builtins.list[tuple[Any, ...]]:
        """The rows a runtime backend can run; with ``include_incompatible`` the others stay,
        incompatible, with its reasons first."""
        summaries = {}
        ids = [r[0] for r in kept]
        for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            for row in conn.execute(select(T_VERSIONS.c.id, T_VERSIONS.c.manifest).where(T_VERSIONS.c.id.in_(chunk))):
                body = json.loads(row.manifest)  # the method entry, and the base tensors the adapter touches
                summaries[row.id] = {**body["method"], "requirements": body.get("requirements") or {}}
        checked = []
        for r in kept:
            why_not = backend.check_method(summaries.get(r[0]) or {"type": r[4], "variant": r[5]})
            if why_not:
                if not include_incompatible:
                    continue
                fit_reasons[r[0]] = why_not + fit_reasons.get(r[0], [])
                verdicts[r[0]] = "incompatible"
            checked.append(r)
        return checked

"""resolve: which versions fit a base, best first. The hot path reads plain DBAPI tuples
from SQL compiled once per query shape and remembers what never changes (fits per
architecture, adapter names, task lists)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .. import db as dbmod
from ..errors import NotFoundError
from ..fingerprint import BaseFingerprint
from ..methods.base import check_requirements
from ..names import name_key, parse_ref
from ..versions import Version, VersionSpec
from ._core import T_ADAPTERS, T_FITS, T_REQS, T_TASKS, T_VERSIONS, RegistryCore
from .bases import _HEXPREFIX
from .probes import base_keys
from .results import VERDICTS, Match

_N_REQS = select(func.count()).select_from(T_REQS)
_CANDIDATES_Q = select(T_REQS.c.digest, T_FITS.c.ok).select_from(T_REQS.outerjoin(
    T_FITS, and_(T_FITS.c.req_digest == T_REQS.c.digest, T_FITS.c.arch_signature == bindparam("arch"))))
_CANDIDATES_UNPROBED = _CANDIDATES_Q.where(T_REQS.c.probe.is_(None))
# Lookups by a list of keys, sent as text on the DBAPI cursor: SQLAlchemy's expanding IN
# re-renders the statement and coerces each value on every call (~0.1 ms per 100 values,
# most of a first resolve's time at a million versions). "{in}" is the placeholder list.
_CANDIDATES_IN = ("SELECT r.digest, f.ok FROM requirement_sets r LEFT OUTER JOIN fits f "
                  "ON f.req_digest = r.digest AND f.arch_signature = {ph} WHERE r.probe IN ({in})")
_NAMES_IN = "SELECT id, name FROM adapters WHERE id IN ({in})"
_TASKS_OR_NONE_IN = ("SELECT v.id, t.task FROM versions v LEFT OUTER JOIN version_tasks t "
                     "ON t.version_id = v.id WHERE v.id IN ({in})")


def _fetch_in(conn: Connection, sql: str, keys: Sequence[Any], *lead: Any) -> builtins.list[tuple[Any, ...]]:
    """Rows of ``sql`` for ``keys`` (``{in}``), 500 at a time; ``lead``: the values of ``{ph}``."""
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    out: builtins.list[tuple[Any, ...]] = []
    for i in range(0, len(keys), 500):
        chunk = builtins.list(keys[i:i + 500])
        text_sql = sql.replace("{ph}", ph).replace("{in}", ", ".join([ph] * len(chunk)))
        cur = conn.connection.cursor()
        try:
            cur.execute(text_sql, (*lead, *chunk))
            out.extend(cur.fetchall())
        except conn.dialect.loaded_dbapi.Error as exc:
            raise dbmod.database_error(exc) from exc
        finally:
            cur.close()
    return out
# resolve reads these by position: id adapter_id version digest method variant base_fingerprint size yanked
_RESOLVE_COLS = (T_VERSIONS.c.id, T_VERSIONS.c.adapter_id, T_VERSIONS.c.version, T_VERSIONS.c.digest,
                 T_VERSIONS.c.method, T_VERSIONS.c.variant, T_VERSIONS.c.base_fingerprint, T_VERSIONS.c.size,
                 T_VERSIONS.c.yanked)

_EXACT_WHY = ("base weights differ from the ones the adapter was trained on",
              "every tensor it touches exists in the base with matching shapes")
_NO_FP_WHY = ("adapter was published without a base fingerprint",
              "every tensor it touches exists in the base with matching shapes")
_MEMO_MAX = 500_000  # names and task lists remembered per Registry (immutable once written)


def _resolve_filters(by_name: bool, by_task: bool, by_method: bool, values: Mapping[str, Any] | None = None
                     ) -> builtins.list[Any]:
    """resolve's filters; with ``values`` the literals are bound, else named bind parameters."""
    def param(key: str) -> Any:
        return values[key] if values is not None else bindparam(key)

    filters = []
    if by_name:
        filters.append(T_VERSIONS.c.adapter_id == select(T_ADAPTERS.c.id).where(
            T_ADAPTERS.c.name_key == param("name_key")).scalar_subquery())
    if by_task:
        # correlated EXISTS: one primary-key probe per candidate row, where IN (subquery)
        # would materialise every version carrying the task on each resolve
        filters.append(select(T_TASKS.c.version_id).where(
            T_TASKS.c.version_id == T_VERSIONS.c.id, T_TASKS.c.task == param("task")).exists())
    if by_method:
        filters.append(or_(T_VERSIONS.c.method == param("method"), T_VERSIONS.c.variant == param("method")))
    return filters


_SQL_CACHE: dict[tuple[Any, ...], tuple[str, tuple[str, ...] | None]] = {}


def _resolve_sql(dialect: Any, n_fitting: int, by_name: bool, by_task: bool, by_method: bool
                 ) -> tuple[str, tuple[str, ...] | None]:
    """SQL text and positional parameter names of one half of resolve: the exact half
    (``n_fitting`` 0) or the structural half over ``n_fitting`` requirement digests."""
    key = (dialect.name, dialect.driver, dialect.paramstyle, n_fitting, by_name, by_task, by_method)
    hit = _SQL_CACHE.get(key)
    if hit is None:
        if n_fitting == 0:
            where = [T_VERSIONS.c.base_fingerprint == bindparam("fp")]
        else:
            where = [T_VERSIONS.c.req_digest.in_([bindparam(f"req{i}") for i in range(n_fitting)]),
                     or_(T_VERSIONS.c.base_fingerprint.is_(None), T_VERSIONS.c.base_fingerprint != bindparam("fp"))]
        compiled = select(*_RESOLVE_COLS).where(*where, *_resolve_filters(by_name, by_task, by_method)
                                                ).compile(dialect=dialect)
        hit = (str(compiled), tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None)
        if len(_SQL_CACHE) > 512:
            _SQL_CACHE.clear()
        _SQL_CACHE[key] = hit
    return hit


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

    def _ensure_fits(self, base: BaseFingerprint) -> builtins.list[str]:
        """The digests of the requirement sets that fit ``base``'s architecture. Only sets
        whose probe is one of the base's keys can fit (see registry/probes.py): those not yet
        checked against the architecture are checked now and their verdicts recorded, so the
        first resolve of a new architecture costs its few candidates, not every set published."""
        arch = base.arch_signature
        with self._read() as conn:
            n_sets = conn.execute(_N_REQS).scalar_one()
            memo = self._fits_memo.get(arch)
            if memo is not None and memo[0] == n_sets:  # sets are only ever added
                return builtins.list(memo[1])
            # one primary-key probe into fits per candidate set (fits has no index on
            # arch_signature alone); a set without a probe (written before it existed) is a candidate
            known = dict(conn.execute(_CANDIDATES_UNPROBED, {"arch": arch}).all())
            known.update(_fetch_in(conn, _CANDIDATES_IN, base_keys(base.shapes, base.tied), arch))
            todo = sorted(d for d, ok in known.items() if ok is None)
            missing = []
            for chunk in (todo[i:i + 500] for i in range(0, len(todo), 500)):
                missing += conn.execute(select(T_REQS.c.digest, T_REQS.c.body).where(T_REQS.c.digest.in_(chunk))).all()
        fitting = [d for d, ok in known.items() if ok]
        if not missing:
            self._fits_memo[arch] = (n_sets, builtins.list(fitting))
            return fitting
        rows = []
        for r in missing:
            reasons = check_requirements(json.loads(r.body), base)
            rows.append({"req_digest": r.digest, "arch_signature": arch, "ok": not reasons,
                         "reasons": json.dumps(reasons)})
            if not reasons:
                fitting.append(r.digest)
        if dbmod.is_read_only(self.engine):  # a read-only copy: fits are computed, not cached
            return fitting
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
        return fitting

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
        if base is None and not _HEXPREFIX.fullmatch(str(fingerprint).strip().lower()):
            raise NotFoundError(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
        b = self._as_base(base if base is not None else fingerprint)
        fp = b if isinstance(b, str) else b.digest
        arch = None if isinstance(b, str) else b.arch_signature
        fitting: builtins.list[str] = []
        if arch is not None:
            fitting = self._ensure_fits(b)  # type: ignore[arg-type]
        spec = None
        if name is not None:
            ref = parse_ref(name)
            spec = VersionSpec.parse(ref.spec) if ref.spec else None
        cols = _RESOLVE_COLS
        values: dict[str, Any] = {"fp": fp}
        if name is not None:
            values["name_key"] = name_key(parse_ref(name).name)
        if task:
            values["task"] = task
        if method:
            values["method"] = method.lower()
        shape = (name is not None, bool(task), bool(method))
        with self._read() as conn:
            alias_vid = None
            if spec is not None and spec.kind == "alias":
                alias_vid = self._select_version(conn, parse_ref(name).name, spec.text).id  # type: ignore[arg-type]
            # plain DBAPI tuples from SQL compiled once per query shape: SQLAlchemy's Row objects
            # cost ~1 us each to build and, unlike tuples of plain values, stay tracked by the
            # garbage collector (hundreds per resolve made its full collections frequent)
            rows = _fetch_tuples(conn, _resolve_sql(conn.dialect, 0, *shape), values)
            verdicts: dict[int, str] = {}  # by version id, for rows that are not exact
            fit_reasons: dict[int, list[str]] = {}
            if fitting:  # the sets that fit, from _ensure_fits: ix_versions_req_digest does the rest
                values.update((f"req{i}", d) for i, d in enumerate(fitting))
                struct = _fetch_tuples(conn, _resolve_sql(conn.dialect, len(fitting), *shape), values)
                verdicts.update((r[0], "structural") for r in struct)
                rows += struct
            if include_incompatible:
                seen = {r[0] for r in rows}
                filters = _resolve_filters(*shape, values)
                unchecked: dict[str, builtins.list[str]] = {}  # sets no probe made a candidate
                if arch is not None:
                    q = select(*cols, T_FITS.c.reasons, T_VERSIONS.c.req_digest).join(
                        T_FITS, and_(T_FITS.c.req_digest == T_VERSIONS.c.req_digest, T_FITS.c.arch_signature == arch),
                        isouter=True).where(*filters)
                else:
                    q = select(*cols).where(*filters)
                for r in conn.execute(q):
                    if r.id in seen:
                        continue
                    rows.append(tuple(r[:9]))
                    verdicts[r.id] = "incompatible"
                    reasons = json.loads(r.reasons) if arch is not None and r.reasons else []
                    if arch is not None and r.reasons is None:  # never checked: the reasons, computed now
                        if r.req_digest not in unchecked:
                            body = conn.execute(select(T_REQS.c.body).where(T_REQS.c.digest == r.req_digest)).scalar()
                            unchecked[r.req_digest] = check_requirements(json.loads(body), b) if body and not isinstance(b, str) else []
                        reasons = unchecked[r.req_digest]
                    if arch is None:
                        reasons = [f"base {fp[:12]} is not known to this registry, so only exact matches can be "
                                   "checked; resolve with --base PATH"]
                    fit_reasons[r.id] = reasons or ["does not fit the base"]
            kept = []
            parsed: dict[str, Version] = {}  # results repeat the same few version strings
            for r in rows:
                text_v = r[2]
                v = parsed.get(text_v)
                if v is None:
                    v = parsed[text_v] = Version.parse(text_v)
                if spec is not None:
                    if spec.kind == "alias":
                        if r[0] != alias_vid:
                            continue
                    elif spec.kind == "exact":
                        if v != spec.exact:
                            continue
                    elif r[8] or not spec.matches(v):
                        continue
                elif r[8]:  # yanked
                    continue
                kept.append(r)
            if backend is not None and kept:
                summaries = {}
                ids = [r[0] for r in kept]
                for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                    for row in conn.execute(select(T_VERSIONS.c.id, T_VERSIONS.c.manifest)
                                            .where(T_VERSIONS.c.id.in_(chunk))):
                        summaries[row.id] = json.loads(row.manifest)["method"]
                checked = []
                for r in kept:
                    why_not = backend.check_method(summaries.get(r[0]) or {"type": r[4], "variant": r[5]})
                    if why_not:
                        if not include_incompatible:
                            continue
                        fit_reasons[r[0]] = why_not + fit_reasons.get(r[0], [])
                        verdicts[r[0]] = "incompatible"
                    checked.append(r)
                kept = checked
            # one sort: verdict, then newest first (Version's own order, computed once per distinct
            # string), then name, so that ties come back the same way every time
            keys = {text_v: v._key() for text_v, v in parsed.items()}
            distinct = sorted(set(keys.values()), reverse=True)  # equal precedence, equal place
            place = {k: i for i, k in enumerate(distinct)}
            newest = {text_v: place[k] for text_v, k in keys.items()}
            rank = {verdict: i for i, verdict in enumerate(VERDICTS)}
            names = self._adapter_names(conn, {r[1] for r in kept})
            kept.sort(key=lambda r: (rank[verdicts.get(r[0], "exact")], newest[r[2]], names[r[1]]))
            if limit is not None:
                kept = kept[:limit]
            tasks = self._task_lists(conn, kept)
        # few allocations per row: a resolve may return hundreds of versions, and every object
        # that outlives a young-generation collection brings the next full one closer
        out = []
        for r in kept:
            vid = r[0]
            verdict = verdicts.get(vid, "exact")
            if verdict == "exact":
                why: tuple[str, ...] = ()
            elif verdict == "structural":
                why = _EXACT_WHY if r[6] else _NO_FP_WHY
            else:
                why = tuple(fit_reasons.get(vid, ()))
            out.append(Match(names[r[1]], r[2], verdict, why, r[4], r[5], tasks[vid], r[6], r[3], r[7]))
        return out

    def _adapter_names(self, conn: Connection, ids: set[int]) -> dict[int, str]:
        """Adapter names by id, remembered: a name's spelling is fixed when it is created."""
        memo = self._name_memo
        missing = sorted(i for i in ids if i not in memo)
        if missing:
            if len(memo) + len(missing) > _MEMO_MAX:
                memo.clear()
                missing = sorted(ids)
            memo.update(_fetch_in(conn, _NAMES_IN, missing))
        return {i: memo[i] for i in ids}

    def _task_lists(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> dict[int, tuple[str, ...]]:
        """Sorted task tuples by version id. Remembered by manifest digest, which covers the
        tasks (and the name and version), so an entry can never go stale. The memo maps str
        to str, which the garbage collector never has to walk; the few distinct tuples are
        shared through a second, small dict."""
        memo, shared = self._task_memo, self._task_tuples
        out: dict[int, tuple[str, ...]] = {}
        missing = []
        for r in rows:  # resolve's rows: r[0] is the version id, r[3] its manifest digest
            vid, digest = r[0], r[3]
            hit = memo.get(digest)
            if hit is None:
                missing.append((vid, digest))
            else:
                out[vid] = shared[hit]
        if missing:
            if len(memo) + len(missing) > _MEMO_MAX:
                memo.clear()
            # versions outer-joined to their tasks: a version deleted meanwhile (PostgreSQL
            # reads each statement at a new snapshot) is absent, not remembered as task-less
            found: dict[int, list[str]] = {}
            for vid, task in _fetch_in(conn, _TASKS_OR_NONE_IN, [vid for vid, _ in missing]):
                got = found.setdefault(vid, [])
                if task is not None:
                    got.append(task)
            for vid, digest in missing:
                tasks = tuple(sorted(found.get(vid, ())))
                if vid in found:
                    memo[digest] = "\n".join(tasks)
                out[vid] = shared.setdefault("\n".join(tasks), tasks)
        return out

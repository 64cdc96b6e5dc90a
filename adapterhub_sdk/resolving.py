"""resolve's read path as SQL text on a plain DBAPI cursor, apart from the registry so that
``adapterhub resolve`` on a SQLite registry can answer without loading SQLAlchemy (as
``adapterhub list`` does). :class:`~adapterhub_sdk.registry.Registry` runs the same
statements and the same ranking on its own connection: one definition of the answer.

Statements are written with ``?`` placeholders, run by :class:`adapterhub_sdk.sqlrun.Sql`
(which turns them into ``%s`` for psycopg). Keys are sent as text lists (SQLAlchemy's expanding IN re-renders the
statement and coerces each value on every call: ~0.1 ms per 100 values)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import NotFoundError
from .probes import base_keys
from .versions import Version, VersionSpec

if TYPE_CHECKING:  # imported when a BaseFingerprint is built: the CLI's read path needs none
    from .fingerprint import BaseFingerprint

#: runs one statement (``?`` placeholders) with positional parameters, returns plain tuples
Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

VERDICTS = ("exact", "structural", "incompatible")
HEXPREFIX = re.compile(r"[0-9a-f]{8,64}")
CHUNK = 500  # keys per IN list
MEMO_MAX = 500_000  # names and task lists remembered per Registry (immutable once written)

EXACT_WHY = ("base weights differ from the ones the adapter was trained on",
             "every tensor it touches exists in the base with matching shapes")
NO_FP_WHY = ("adapter was published without a base fingerprint",
             "every tensor it touches exists in the base with matching shapes")


class Match(NamedTuple):
    """One resolve result: a version and how it fits the base. Immutable; a named tuple
    because a resolve may return hundreds (cheaper to build, and the garbage collector
    stops tracking tuples of plain values)."""

    name: str
    version: str
    verdict: str  # exact | structural | incompatible
    reasons: tuple[str, ...]
    method: str
    variant: str
    tasks: tuple[str, ...]
    base_fingerprint: str | None
    digest: str
    size: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "verdict": self.verdict,
                "reasons": list(self.reasons), "method": self.method, "variant": self.variant,
                "tasks": list(self.tasks), "base_fingerprint": self.base_fingerprint,
                "digest": self.digest, "size": self.size}


def fetch_in(fetch: Fetch, sql: str, keys: Sequence[Any], *lead: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` for ``keys`` (its ``{in}``), :data:`CHUNK` at a time; ``lead``: the
    parameters before the list."""
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i:i + CHUNK]
        out += fetch(sql.replace("{in}", ", ".join("?" * len(chunk))), (*lead, *chunk))
    return out


# --- bases -----------------------------------------------------------------------------

_BASE_COLS = "fingerprint, arch_signature, n_tensors, n_params, total_bytes, shapes, config"


def base_from_row(row: Sequence[Any]) -> BaseFingerprint:
    """A BaseFingerprint from a ``bases`` row read in :data:`_BASE_COLS` order."""
    from .fingerprint import BaseFingerprint

    fp, arch, n_tensors, n_params, total_bytes, shapes, config = row
    body = json.loads(shapes)
    return BaseFingerprint(fp, arch, n_tensors, n_params, body.get("dtypes", {}),
                           {k: tuple(v) for k, v in body["shapes"].items()}, body.get("tied", {}), None,
                           total_bytes, json.loads(config) if config else None)


def base_row(fetch: Fetch, fp: str) -> tuple[Any, ...]:
    """The ``bases`` row (:data:`_BASE_COLS`) of a base known to the registry, by fingerprint
    or a unique prefix of at least 8 hex digits."""
    fp = fp.strip().lower()
    if not HEXPREFIX.fullmatch(fp):
        raise NotFoundError(f"{fp!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
    # a full fingerprint is a primary-key lookup; LIKE 'prefix%' scans every base
    if len(fp) == 64:
        rows = fetch(f"SELECT {_BASE_COLS} FROM bases WHERE fingerprint = ? LIMIT 2", (fp,))
    else:
        rows = fetch(f"SELECT {_BASE_COLS} FROM bases WHERE fingerprint LIKE ? LIMIT 2", (fp + "%",))
    if not rows:
        raise NotFoundError(f"base {fp[:12]} is not known to this registry",
                            hint="resolve with base=PATH once, or publish an adapter with base=PATH")
    if len(rows) > 1:
        raise NotFoundError(f"fingerprint prefix {fp!r} is ambiguous; give more digits")
    return rows[0]


def lookup_base(fetch: Fetch, fp: str) -> BaseFingerprint:
    """:func:`base_row` as a BaseFingerprint."""
    return base_from_row(base_row(fetch, fp))


# --- requirement sets that can fit an architecture -------------------------------------

N_SETS_SQL = "SELECT count(*) FROM requirement_sets"
_CANDIDATES = ("SELECT r.digest, f.ok FROM requirement_sets r LEFT OUTER JOIN fits f "
               "ON f.req_digest = r.digest AND f.arch_signature = ? WHERE ")
_BODIES_IN = "SELECT digest, body FROM requirement_sets WHERE digest IN ({in})"


def candidate_verdicts(fetch: Fetch, arch: str, shapes: Mapping[str, Iterable[int]], tied: Mapping[str, str]
                       ) -> dict[str, Any]:
    """The requirement sets that can fit a base of architecture ``arch`` with these shapes
    and tied names (see :mod:`adapterhub_sdk.probes`: a set whose probe is one of the base's
    keys, or one without a probe), with their recorded verdict for ``arch`` (None: never
    checked)."""
    # one primary-key probe into fits per candidate set (fits has no index on arch_signature alone)
    known: dict[str, Any] = dict(fetch(_CANDIDATES + "r.probe IS NULL", (arch,)))
    known.update(fetch_in(fetch, _CANDIDATES + "r.probe IN ({in})", base_keys(shapes, tied), arch))
    return known


def requirement_bodies(fetch: Fetch, digests: Sequence[str]) -> list[tuple[str, str]]:
    return [(d, body) for d, body in fetch_in(fetch, _BODIES_IN, digests)]


# --- the version rows ------------------------------------------------------------------

# read by position: id adapter_id version digest method variant base_fingerprint size yanked
COLS = ("versions.id, versions.adapter_id, versions.version, versions.digest, versions.method, "
        "versions.variant, versions.base_fingerprint, versions.size, versions.yanked")


def filters_sql(by_name: bool, by_task: bool, by_method: bool, postgres: bool = False) -> str:
    out = ""
    if by_name:
        out += " AND versions.adapter_id = (SELECT adapters.id FROM adapters WHERE adapters.name_key = ?)"
    if by_task:
        # correlated EXISTS: one primary-key probe per candidate row, where IN (subquery)
        # would materialise every version carrying the task on each resolve. PostgreSQL would
        # turn it into a semi-join, which without fresh statistics (a bulk load, a young
        # registry) it drives from every version carrying the task: 10,000 rows at 100k
        # versions, 60-200 ms. OFFSET 0 keeps it a per-row probe, bounded by the candidates.
        out += (" AND (EXISTS (SELECT version_tasks.version_id FROM version_tasks "
                "WHERE version_tasks.version_id = versions.id AND version_tasks.task = ?"
                + (" OFFSET 0))" if postgres else "))"))
    if by_method:
        out += " AND (versions.method = ? OR versions.variant = ?)"
    return out


def filter_params(name_key: str | None, task: str | None, method: str | None) -> tuple[Any, ...]:
    out: tuple[Any, ...] = ()
    if name_key is not None:
        out += (name_key,)
    if task:
        out += (task,)
    if method:
        out += (method, method)
    return out


def exact_sql(by_name: bool, by_task: bool, by_method: bool, postgres: bool = False) -> str:
    return f"SELECT {COLS} FROM versions WHERE versions.base_fingerprint = ?" + filters_sql(
        by_name, by_task, by_method, postgres)


def structural_sql(n_fitting: int, by_name: bool, by_task: bool, by_method: bool, postgres: bool = False) -> str:
    return (f"SELECT {COLS} FROM versions WHERE versions.req_digest IN ({', '.join('?' * n_fitting)}) "
            "AND (versions.base_fingerprint IS NULL OR versions.base_fingerprint != ?)"
            + filters_sql(by_name, by_task, by_method, postgres))


def version_rows(fetch: Fetch, fp: str, fitting: Sequence[str], name_key: str | None, task: str | None,
                 method: str | None, *, postgres: bool = False) -> tuple[list[tuple[Any, ...]], dict[int, str]]:
    """The exact rows (same fingerprint), then the structural ones (a fitting requirement set,
    another or no fingerprint); the verdicts of the rows that are not exact, by version id."""
    shape = (name_key is not None, bool(task), bool(method), postgres)
    tail = filter_params(name_key, task, method)
    rows = fetch(exact_sql(*shape), (fp, *tail))
    verdicts: dict[int, str] = {}
    if fitting:  # ix_versions_resolve_req does the rest
        struct = fetch(structural_sql(len(fitting), *shape), (*fitting, fp, *tail))
        verdicts.update((r[0], "structural") for r in struct)
        rows += struct
    return rows, verdicts


_REQS_OF_IN = ("SELECT v.id, r.body FROM versions v JOIN requirement_sets r ON r.digest = v.req_digest "
               "WHERE v.id IN ({in})")


def unborne_exact(fetch: Fetch, base: BaseFingerprint, kept: list[tuple[Any, ...]], verdicts: dict[int, str],
                  fit_reasons: dict[int, list[str]], include_incompatible: bool = False) -> list[tuple[Any, ...]]:
    """An exact pin finds a yanked version. One pinned to ``base`` whose files do not fit it
    (an import whose claim nothing could check then, yanked when the base was recorded:
    registry/bases.py) is no exact match for it: incompatible, with the reason, and left out
    unless ``include_incompatible``. Only yanked exact rows are checked: every other one's
    files were checked against this base when it was published or imported with it known."""
    from .methods.base import check_requirements

    ids = [r[0] for r in kept if r[8] and r[0] not in verdicts]
    if not ids:
        return kept
    unborne = {}
    for vid, body in fetch_in(fetch, _REQS_OF_IN, ids):
        reasons = check_requirements(json.loads(body), base)
        if reasons:
            unborne[vid] = reasons
    for vid, reasons in unborne.items():
        verdicts[vid] = "incompatible"
        fit_reasons[vid] = ["its manifest claims this base, but its files do not fit it", *reasons]
    return kept if include_incompatible else [r for r in kept if r[0] not in unborne]


def keep(rows: Sequence[tuple[Any, ...]], spec: VersionSpec | None, alias_vid: int | None
         ) -> tuple[list[tuple[Any, ...]], dict[str, Version]]:
    """The rows ``spec`` admits (no spec: not yanked; an exact pin finds a yanked version)
    and the parsed versions by text."""
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
                if not spec.pins(v):
                    continue
            elif r[8] or not spec.matches(v):
                continue
        elif r[8]:  # yanked
            continue
        kept.append(r)
    return kept, parsed


def rank(kept: list[tuple[Any, ...]], verdicts: dict[int, str], parsed: dict[str, Version],
         names: dict[int, str]) -> None:
    """One sort, in place: verdict, then newest first (Version's own order, computed once per
    distinct string), then name, so that ties come back the same way every time."""
    keys = {text_v: v._key() for text_v, v in parsed.items()}
    distinct = sorted(set(keys.values()), reverse=True)  # equal precedence, equal place
    place = {k: i for i, k in enumerate(distinct)}
    newest = {text_v: place[k] for text_v, k in keys.items()}
    order = {verdict: i for i, verdict in enumerate(VERDICTS)}
    kept.sort(key=lambda r: (order[verdicts.get(r[0], "exact")], newest[r[2]], names[r[1]]))


def matches(kept: Sequence[tuple[Any, ...]], verdicts: dict[int, str], fit_reasons: dict[int, list[str]],
            names: dict[int, str], tasks: dict[int, tuple[str, ...]]) -> list[Match]:
    # few allocations per row: a resolve may return hundreds of versions, and every object
    # that outlives a young-generation collection brings the next full one closer
    out = []
    for r in kept:
        vid = r[0]
        verdict = verdicts.get(vid, "exact")
        if verdict == "exact":
            why: tuple[str, ...] = ()
        elif verdict == "structural":
            why = EXACT_WHY if r[6] else NO_FP_WHY
        else:
            why = tuple(fit_reasons.get(vid, ()))
        out.append(Match(names[r[1]], r[2], verdict, why, r[4], r[5], tasks[vid], r[6], r[3], r[7]))
    return out


# --- labels, remembered ----------------------------------------------------------------

_NAMES_IN = "SELECT id, name FROM adapters WHERE id IN ({in})"
_TASKS_OR_NONE_IN = ("SELECT v.id, t.task FROM versions v LEFT OUTER JOIN version_tasks t "
                     "ON t.version_id = v.id WHERE v.id IN ({in})")
# within one snapshot the versions are known to exist: the tasks' primary key alone answers,
# without visiting the version rows, whose manifests (kilobytes each) fill a page every row
# or few (~1.8 KB read per version, 1.6 MB for the ~900 of a first resolve)
_TASKS_IN = "SELECT version_id, task FROM version_tasks WHERE version_id IN ({in})"


def adapter_names(fetch: Fetch, memo: dict[int, str], ids: set[int]) -> dict[int, str]:
    """Adapter names by id, remembered: a name's spelling is fixed when it is created."""
    missing = sorted(i for i in ids if i not in memo)
    if missing:
        if len(memo) + len(missing) > MEMO_MAX:
            memo.clear()
            missing = sorted(ids)
        memo.update(fetch_in(fetch, _NAMES_IN, missing))
    return {i: memo[i] for i in ids}


def task_lists(fetch: Fetch, memo: dict[str, str], shared: dict[str, tuple[str, ...]],
               rows: Sequence[Sequence[Any]], *, snapshot: bool = False) -> dict[int, tuple[str, ...]]:
    """Sorted task tuples by version id. Remembered by manifest digest, which covers the
    tasks (and the name and version), so an entry can never go stale. The memo maps str
    to str, which the garbage collector never has to walk; the few distinct tuples are
    shared through a second, small dict. ``snapshot``: ``rows`` were read in the same
    snapshot as this (a SQLite read transaction), so every one of them exists."""
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
        if len(memo) + len(missing) > MEMO_MAX:
            memo.clear()
        # versions outer-joined to their tasks: a version deleted meanwhile (PostgreSQL
        # reads each statement at a new snapshot) is absent, not remembered as task-less
        ids = [vid for vid, _ in missing]
        found: dict[int, list[str]] = {vid: [] for vid in ids} if snapshot else {}
        for vid, task in fetch_in(fetch, _TASKS_IN if snapshot else _TASKS_OR_NONE_IN, ids):
            got = found.setdefault(vid, [])
            if task is not None:
                got.append(task)
        for vid, digest in missing:
            tasks = tuple(sorted(found.get(vid, ())))
            if vid in found:
                memo[digest] = "\n".join(tasks)
            out[vid] = shared.setdefault("\n".join(tasks), tasks)
    return out


# --- the whole answer, for a read-only caller ------------------------------------------

def resolve_read_only(fetch: Fetch, fingerprint: str, *, task: str | None = None, method: str | None = None,
                      name: str | None = None, limit: int | None = None) -> list[Match] | None:
    """``Registry.resolve(fingerprint=..., task=, method=, name=, limit=)`` answered with reads
    only, inside the caller's read transaction (one snapshot); None where the registry's own path must answer
    (an architecture with requirement sets never checked against it, whose verdicts that path
    computes and records; an alias, which it looks up; a fingerprint that is also a path)."""
    from .names import name_key, parse_ref

    if not HEXPREFIX.fullmatch(fingerprint.strip().lower()):
        raise NotFoundError(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
    if os.path.exists(fingerprint) or not HEXPREFIX.fullmatch(fingerprint.lower()):
        return None
    try:
        row: tuple[Any, ...] | None = base_row(fetch, fingerprint)
    except NotFoundError:
        if len(fingerprint) != 64:
            raise
        row = None
    fitting: list[str] = []
    if row is not None:
        body = json.loads(row[5])
        known = candidate_verdicts(fetch, row[1], body["shapes"], body.get("tied", {}))
        if any(ok is None for ok in known.values()):
            return None
        fitting = [d for d, ok in known.items() if ok]
    fp = fingerprint.lower() if row is None else row[0]
    spec = None
    key = None
    if name is not None:
        ref = parse_ref(name)
        spec = VersionSpec.parse(ref.spec) if ref.spec else None
        if spec is not None and spec.kind == "alias":
            return None
        key = name_key(ref.name)
    rows, verdicts = version_rows(fetch, fp, fitting, key, task, method.lower() if method else None)
    kept, parsed = keep(rows, spec, None)
    fit_reasons: dict[int, list[str]] = {}
    if row is not None and any(r[8] and r[0] not in verdicts for r in kept):  # the base's shapes: only then
        kept = unborne_exact(fetch, base_from_row(row), kept, verdicts, fit_reasons)
    names = adapter_names(fetch, {}, {r[1] for r in kept})
    rank(kept, verdicts, parsed, names)
    if limit is not None:
        kept = kept[:limit]
    return matches(kept, verdicts, fit_reasons, names, task_lists(fetch, {}, {}, kept, snapshot=True))


def resolve_sqlite_file(url: str, fingerprint: str, **options: Any) -> list[Match] | None:
    """:func:`resolve_read_only` on the registry at ``url`` when it is a SQLite file at the
    current schema, read with the standard library's sqlite3 in one snapshot: the CLI's
    answer without loading SQLAlchemy or the registry (None: anything else, which the
    registry's own path answers)."""
    import sqlite3

    from .dbinfo import database_error, sqlite_reader

    conn = sqlite_reader(url)
    if conn is None:
        return None
    try:
        conn.execute("BEGIN")
        from .sqlrun import Sql

        fetch = Sql(conn.cursor, postgres=False, errors=sqlite3.Error, integrity=sqlite3.IntegrityError,
                    wrap=database_error)
        return resolve_read_only(fetch, fingerprint, **options)
    finally:
        conn.close()

"""The registry: a SQL catalog (SQLite by default, PostgreSQL for teams) over a
content-addressed blob store.

A version becomes visible in one transaction that runs only after every blob it
references is stored, so a version is whole or absent whatever process dies when.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from . import db as dbmod
from .errors import (
    AdapterHubError,
    IntegrityError,
    InvalidVersionError,
    NotFoundError,
    RegistryError,
    VersionConflictError,
)
from .fingerprint import BaseFingerprint, fingerprint
from .manifest import BaseRef, Manifest
from .methods.base import check_requirements, requirements_digest
from .models import (
    Adapter,
    AdapterVersion,
    AliasRecord,
    BaseModelRecord,
    BaseSource,
    Fit,
    RequirementSet,
    VersionFile,
    VersionTask,
    utcnow,
)
from .names import name_key, parse_ref, validate_alias, validate_name
from .package import AdapterPackage, base_fraction, pack, write_package_dir
from .versions import Version, VersionSpec

T_ADAPTERS: Table = Adapter.__table__  # type: ignore[assignment]
T_VERSIONS: Table = AdapterVersion.__table__  # type: ignore[assignment]
T_TASKS: Table = VersionTask.__table__  # type: ignore[assignment]
T_FILES: Table = VersionFile.__table__  # type: ignore[assignment]
T_ALIASES: Table = AliasRecord.__table__  # type: ignore[assignment]
T_BASES: Table = BaseModelRecord.__table__  # type: ignore[assignment]
T_SOURCES: Table = BaseSource.__table__  # type: ignore[assignment]
T_REQS: Table = RequirementSet.__table__  # type: ignore[assignment]
T_FITS: Table = Fit.__table__  # type: ignore[assignment]

_TASKS_OF = select(T_TASKS.c.version_id, T_TASKS.c.task).where(
    T_TASKS.c.version_id.in_(bindparam("ids", expanding=True)))
_ALIASES_OF = select(T_ALIASES.c.version_id, T_ALIASES.c.alias).where(
    T_ALIASES.c.version_id.in_(bindparam("ids", expanding=True)))
_REQ_DIGESTS = select(T_REQS.c.digest)
_NAMES_OF = select(T_ADAPTERS.c.id, T_ADAPTERS.c.name).where(T_ADAPTERS.c.id.in_(bindparam("ids", expanding=True)))
_TASKS_OR_NONE_OF = select(T_VERSIONS.c.id, T_TASKS.c.task).select_from(
    T_VERSIONS.outerjoin(T_TASKS, T_TASKS.c.version_id == T_VERSIONS.c.id)).where(
    T_VERSIONS.c.id.in_(bindparam("ids", expanding=True)))
# resolve reads these by position: id adapter_id version digest method variant base_fingerprint size yanked
_RESOLVE_COLS = (T_VERSIONS.c.id, T_VERSIONS.c.adapter_id, T_VERSIONS.c.version, T_VERSIONS.c.digest,
                 T_VERSIONS.c.method, T_VERSIONS.c.variant, T_VERSIONS.c.base_fingerprint, T_VERSIONS.c.size,
                 T_VERSIONS.c.yanked)

_EXACT_WHY = ("base weights differ from the ones the adapter was trained on",
              "every tensor it touches exists in the base with matching shapes")
_NO_FP_WHY = ("adapter was published without a base fingerprint",
              "every tensor it touches exists in the base with matching shapes")
_MEMO_MAX = 500_000  # names and task lists remembered per Registry (immutable once written)
_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", re.ASCII)
_HEXPREFIX = re.compile(r"[0-9a-f]{8,64}")
MANIFEST_FILE = "adapterhub_manifest.json"
VERDICTS = ("exact", "structural", "incompatible")


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


def _check_metrics(metrics: Mapping[str, Any] | None) -> None:
    """Metrics go into the canonical-JSON manifest: JSON values without NaN or infinities."""
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise AdapterHubError(f"metric name {key!r} is not a non-empty string")
        if isinstance(value, float) and not math.isfinite(value):
            raise AdapterHubError(f"metric {key!r} is {value}: metrics must be finite numbers or text",
                                  hint=f"pass a number such as {key}=0.91, or leave the metric out")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AdapterHubError(f"metric {key!r} cannot go into the manifest ({exc})",
                                  hint="metrics are finite numbers, text, or JSON lists/objects of them") from None


def _refuse_precedence_twin(conn: Connection, adapter_id: int, name: str, ver: Version) -> None:
    """Semver ignores build metadata: 1.0.0+a and 1.0.0+b are the same version, so a pin or a
    range could not tell them apart. Refuse the second spelling."""
    twin = conn.execute(select(T_VERSIONS.c.version).where(
        T_VERSIONS.c.adapter_id == adapter_id, T_VERSIONS.c.major == ver.major, T_VERSIONS.c.minor == ver.minor,
        T_VERSIONS.c.patch == ver.patch, T_VERSIONS.c.prerelease == ".".join(ver.prerelease),
        T_VERSIONS.c.version != str(ver))).first()
    if twin is not None:
        raise VersionConflictError(
            f"{name}@{ver} is the same version as the existing {name}@{twin.version}: versions that differ "
            "only in build metadata (+...) have the same precedence",
            hint="publish under a new version number")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    digest: str
    method: str
    variant: str
    tasks: tuple[str, ...]
    base_fingerprint: str | None
    base_name: str | None
    size: int
    yanked: bool
    created_at: str
    aliases: tuple[str, ...] = ()
    manifest: Manifest | None = field(default=None, repr=False, compare=False)
    # trainable parameters / the base's, when the base is known here (show only)
    base_fraction: float | None = None
    # where the version came from when it was not published here (hf://ORG/REPO@COMMIT)
    source: str | None = None
    # what the pinned fingerprint is of: where this registry saw those weights (show only):
    # local paths, hf://REPO@COMMIT of Hub cache snapshots, newest first
    base_seen_as: tuple[str, ...] | None = None

    def to_dict(self, *, with_manifest: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "version": self.version, "digest": self.digest,
            "method": self.method, "variant": self.variant, "tasks": list(self.tasks),
            "base_fingerprint": self.base_fingerprint, "base_name": self.base_name,
            "size": self.size, "yanked": self.yanked, "created_at": self.created_at,
            "aliases": list(self.aliases),
        }
        if self.base_fraction is not None:
            d["base_fraction"] = self.base_fraction
        d["source"] = self.source
        if self.base_seen_as is not None:
            d["base_seen_as"] = list(self.base_seen_as)
        if with_manifest and self.manifest is not None:
            d["manifest"] = self.manifest.to_dict()
        return d


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


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: str
    digest: str
    created: bool
    bytes_written: int
    files: int
    manifest: Manifest = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "digest": self.digest,
                "created": self.created, "bytes_written": self.bytes_written, "files": self.files,
                "base_fingerprint": self.manifest.base.fingerprint}


@dataclass
class VerifyReport:
    versions: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "versions": self.versions, "blobs": self.blobs, "bytes": self.bytes,
                "problems": self.problems}


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_freed: int = 0
    temp_removed: int = 0
    kept_recent: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- helpers


def _iso(ts: Any) -> str:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc).isoformat(timespec="seconds")
    return str(ts)


def _warn_nonfinite(ref: str, path: Path) -> None:
    """A pulled version whose weights hold NaN or Inf is written as it is (to debug it), with
    a warning naming the tensor; a deployment refuses to attach it."""
    from .adapter_files import NonFiniteWarning, nonfinite_message, nonfinite_tensors

    weights = path / "adapter_model.safetensors"
    found = nonfinite_tensors(weights) if weights.is_file() else []
    if found:
        warnings.warn(f"{ref}: " + nonfinite_message(weights.name, found)
                      + "; written as published, but a deployment refuses to attach it", NonFiniteWarning,
                      stacklevel=3)


def _check_tasks(tasks: Iterable[str]) -> list[str]:
    out = []
    for t in tasks:
        if not isinstance(t, str) or not _TASK.fullmatch(t):
            raise AdapterHubError(f"task {t!r} is not valid",
                                  hint="tasks are ASCII words: letters, digits, '.', '_', ':' or '-'")
        out.append(t)
    return sorted(set(out))


def _base_from_row(row: Any) -> BaseFingerprint:
    body = json.loads(row.shapes)
    return BaseFingerprint(row.fingerprint, row.arch_signature, row.n_tensors, row.n_params,
                           body.get("dtypes", {}), {k: tuple(v) for k, v in body["shapes"].items()},
                           body.get("tied", {}), None, row.total_bytes,
                           json.loads(row.config) if row.config else None)


def _pkg_versions() -> dict[str, str]:
    return dict(_pkg_versions_once())


@functools.lru_cache(maxsize=1)
def _pkg_versions_once() -> tuple[tuple[str, Any], ...]:
    """Installed versions, looked up once per process (importlib.metadata scans sys.path: ~5 ms)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for dist in ("adapterhub_sdk", "peft"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return tuple(out.items())


# --------------------------------------------------------------------------- registry


class Registry:
    """Catalog + blob store. Open with :meth:`open`; close (or use ``with``) when done."""

    def __init__(self, engine: Any, blobs: Any, url: str):
        self.engine = engine
        self.blobs = blobs
        self.url = url
        # arch signature -> (requirement sets checked, those that fit). Fits never change and
        # requirement sets are only ever added, so the memo holds while the set list matches.
        self._fits_memo: dict[str, tuple[frozenset[str], builtins.list[str]]] = {}
        # fingerprint -> BaseFingerprint; base rows are written once and never change
        self._base_memo: dict[str, BaseFingerprint] = {}
        self._name_memo: dict[int, str] = {}
        self._task_memo: dict[str, str] = {}  # manifest digest -> tasks joined by newlines
        self._task_tuples: dict[str, tuple[str, ...]] = {}

    @classmethod
    def open(cls, url: str | None = None, *, blobs: str | os.PathLike[str] | None = None,
             upgrade: bool = False) -> Registry:
        """Open (creating if new) the registry at ``url``; default SQLite under ADAPTERHUB_HOME.
        ``blobs`` is the blob store: a directory or a ``scheme://`` URL of a storage plugin
        (env ADAPTERHUB_BLOBS; default ``blobs/`` beside a SQLite database file; a PostgreSQL
        registry needs one given, since all its users must share it)."""
        from .home import default_blob_root, default_registry_url

        url = url or default_registry_url()
        engine = dbmod.make_engine(url)
        if upgrade:
            dbmod.upgrade(engine)
        else:
            dbmod.ensure_schema(engine)
        if blobs is None:
            path = dbmod.sqlite_path(engine)
            if path and not os.environ.get("ADAPTERHUB_BLOBS"):
                blobs = Path(path).parent / "blobs"  # a SQLite registry keeps its blobs beside it
            elif not dbmod.is_sqlite(engine) and not os.environ.get("ADAPTERHUB_BLOBS"):
                engine.dispose()
                raise RegistryError(
                    "a PostgreSQL registry needs the blob store its users share, and none was given",
                    hint="pass --blobs DIR (or Registry.open(url, blobs=DIR)) or set ADAPTERHUB_BLOBS; "
                         "every user of this registry must use the same one")
            else:
                blobs = default_blob_root()
        from .storage import open_blob_store

        return cls(engine, open_blob_store(blobs), url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r}, blobs={str(self.blobs)!r})"

    def _read(self):
        return dbmod.transaction(self.engine)

    def _write(self):
        return dbmod.transaction(self.engine, write=True)

    # ------------------------------------------------------------------ bases

    def register_base(self, base: Any, *, source: str | None = None, file_digests: bool = False) -> BaseFingerprint:
        """Fingerprint ``base`` (path, nn.Module, state dict) if needed and record it with
        where it was seen: its path; with ``file_digests``, the sha256 of its weight files
        (verified against the Hub cache's blob names in a cache snapshot) and the Hub repo
        and commit of a cache snapshot, which let others identify the base from the Hub's
        metadata alone."""
        from .sources import files_key, hub_cache_origin, weight_file_digests

        fp = fingerprint(base)
        is_path = isinstance(base, (str, os.PathLike))
        sources: list[tuple[str, str, str, str]] = []
        locator = source or (str(Path(base).resolve()) if is_path else None)
        if locator:
            sources.append(("path", locator, "", "{}"))
        if is_path:
            digests = weight_file_digests(base, compute=file_digests)
            if digests:  # only verified bytes become a shared mapping
                sources.append(("files", files_key(digests), "", json.dumps({"files": digests}, sort_keys=True)))
                origin = hub_cache_origin(base)
                if origin:
                    sources.append(("hub", origin[0], origin[1], "{}"))
        self._record_base(fp, sources)
        return fp

    def _record_base(self, fp: BaseFingerprint, sources: Sequence[tuple[str, str, str, str]]) -> None:
        body = json.dumps({"shapes": {k: list(v) for k, v in fp.shapes.items()}, "tied": fp.tied,
                           "dtypes": fp.dtypes}, sort_keys=True)
        with self._read() as conn:
            known = conn.execute(select(T_BASES.c.fingerprint).where(T_BASES.c.fingerprint == fp.digest)).first()
            fresh = True
            for kind, loc, rev, _ in sources:
                row = conn.execute(select(T_SOURCES.c.fingerprint).where(
                    T_SOURCES.c.kind == kind, T_SOURCES.c.locator == loc, T_SOURCES.c.revision == rev)).first()
                fresh = fresh and row is not None and row.fingerprint == fp.digest
        if known and fresh:
            return
        for attempt in range(3):
            try:
                with self._write() as conn:
                    if not conn.execute(select(T_BASES.c.fingerprint).where(
                            T_BASES.c.fingerprint == fp.digest)).first():
                        conn.execute(insert(T_BASES).values(
                            fingerprint=fp.digest, arch_signature=fp.arch_signature, n_tensors=fp.n_tensors,
                            n_params=fp.n_params, total_bytes=fp.total_bytes, shapes=body,
                            config=json.dumps(fp.config, sort_keys=True) if fp.config else None,
                            created_at=utcnow()))
                    for kind, loc, rev, details in sources:
                        cond = and_(T_SOURCES.c.kind == kind, T_SOURCES.c.locator == loc, T_SOURCES.c.revision == rev)
                        if conn.execute(select(T_SOURCES.c.id).where(cond)).first():
                            conn.execute(update(T_SOURCES).where(cond).values(
                                fingerprint=fp.digest, details=details, seen_at=utcnow()))
                        else:
                            conn.execute(insert(T_SOURCES).values(fingerprint=fp.digest, kind=kind, locator=loc,
                                                                  revision=rev, details=details, seen_at=utcnow()))
                return
            except SAIntegrityError:
                if attempt == 2:
                    raise

    def find_base(self, *, files: Mapping[str, str] | None = None, hub: tuple[str, str] | None = None
                  ) -> BaseFingerprint | None:
        """A recorded base by the sha256 of its weight files, or by Hub (repo, commit)."""
        from .sources import files_key

        conds = []
        if files:
            conds.append(and_(T_SOURCES.c.kind == "files", T_SOURCES.c.locator == files_key(files)))
        if hub:
            conds.append(and_(T_SOURCES.c.kind == "hub", T_SOURCES.c.locator == hub[0],
                              T_SOURCES.c.revision == hub[1]))
        if not conds:
            return None
        with self._read() as conn:
            row = conn.execute(select(T_BASES).join(T_SOURCES, T_SOURCES.c.fingerprint == T_BASES.c.fingerprint)
                               .where(or_(*conds)).limit(1)).first()
        return _base_from_row(row) if row else None

    def record_base_source(self, fp: BaseFingerprint, kind: str, locator: str, revision: str = "",
                           details: Mapping[str, Any] | None = None) -> None:
        """Remember that ``fp`` was also seen as (kind, locator, revision), e.g. a Hub repo at a commit."""
        self._record_base(fp, [(kind, locator, revision, json.dumps(dict(details or {}), sort_keys=True))])

    def get_base(self, fp: str) -> BaseFingerprint:
        """A base known to this registry, by fingerprint or a unique prefix of at least 8 hex digits."""
        fp = fp.strip().lower()
        if not _HEXPREFIX.fullmatch(fp):
            raise NotFoundError(f"{fp!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)")
        memo = self._base_memo.get(fp)
        if memo is not None:
            return memo
        with self._read() as conn:
            # a full fingerprint is a primary-key lookup; LIKE 'prefix%' scans every base
            cond = T_BASES.c.fingerprint == fp if len(fp) == 64 else T_BASES.c.fingerprint.startswith(fp)
            rows = conn.execute(select(T_BASES).where(cond).limit(2)).all()
        if not rows:
            raise NotFoundError(f"base {fp[:12]} is not known to this registry",
                                hint="resolve with --base PATH once, or publish an adapter with --base")
        if len(rows) > 1:
            raise NotFoundError(f"fingerprint prefix {fp!r} is ambiguous; give more digits")
        base = _base_from_row(rows[0])
        if len(fp) == 64:  # parsing the shape table costs ~1 ms; keep the last 256 bases
            if len(self._base_memo) >= 256:
                self._base_memo.pop(next(iter(self._base_memo), ""), None)
            self._base_memo[fp] = base
        return base

    def _as_base(self, base: Any) -> BaseFingerprint | str:
        """A BaseFingerprint, or a bare fingerprint string the registry does not know."""
        if isinstance(base, BaseFingerprint):
            return base
        if isinstance(base, str) and base.startswith("hf://"):
            from .hub import HubClient, parse_hub_ref

            ref = parse_hub_ref(base)
            return HubClient().identify_base(self, ref.repo, ref.spec)
        if isinstance(base, str) and not os.path.exists(base) and _HEXPREFIX.fullmatch(base.lower()):
            try:
                return self.get_base(base)
            except NotFoundError:
                if len(base) == 64:
                    return base.lower()
                raise
        return self.register_base(base)

    # ------------------------------------------------------------------ publish

    def publish(self, source: Any, *, name: str, version: str, base: Any = None,
                tasks: Sequence[str] = (), license: str | None = None, description: str | None = None,
                metrics: dict[str, Any] | None = None, subfolder: str | None = None,
                adapter_name: str | None = None, allow_nonfinite: bool = False) -> PublishResult:
        """Publish an adapter (directory, PeftModel or AdapterPackage) as ``name@version``.

        With ``base`` (path, nn.Module, state dict or BaseFingerprint), the adapter is
        checked against it tensor by tensor and pinned to its fingerprint. Weights holding
        NaN or Inf are refused (NonFiniteError, naming the tensor) unless
        ``allow_nonfinite`` (research use); the manifest's provenance then records them
        under ``nonfinite`` (provenance is outside the digest)."""
        from .plugins import call_hook

        validate_name(name)
        name = self._canonical_name(name)  # names are case-insensitive: keep the first spelling
        ver = Version.parse(version)
        task_list = _check_tasks(tasks)
        _check_metrics(metrics)
        own = not isinstance(source, AdapterPackage)
        if own:
            # a store that can stage (the built-in one) copies and hashes each file once
            stage, discard = getattr(self.blobs, "stage", None), getattr(self.blobs, "discard", None)
            if not (callable(stage) and callable(discard) and callable(getattr(self.blobs, "put_staged", None))):
                stage = discard = None
            pkg = pack(source, subfolder=subfolder, adapter_name=adapter_name, stage=stage, discard=discard)
        else:
            pkg = source
        try:
            nonfinite = pkg.nonfinite()
            if nonfinite and not allow_nonfinite:
                pkg.require_finite()
            base_ref = BaseRef(name=pkg.base_name, revision=pkg.config.get("revision"))
            if base is not None:
                bfp = self._as_base(base)
                if isinstance(bfp, str):
                    raise NotFoundError(f"base {bfp[:12]} is not known to this registry",
                                        hint="pass the base model's path with --base")
                pkg.require_base(bfp)
                base_ref = BaseRef(pkg.base_name, pkg.config.get("revision"), bfp.digest, bfp.arch_signature)
            manifest = pkg.manifest(
                name=name, version=str(ver), base=base_ref, tasks=task_list, description=description,
                license=license, metrics=metrics,
                provenance={"created_at": _iso(utcnow()), "versions": _pkg_versions(),
                            **({"nonfinite": {"allowed": True, "tensors": len(nonfinite),
                                              "values": sum(n.count for n in nonfinite),
                                              "first": nonfinite[0].tensor}} if nonfinite else {})})
            for plugin, reason in call_hook("validate_publish", manifest=manifest, package=pkg):
                if reason:
                    raise AdapterHubError(f"publish rejected by policy {plugin!r}: {reason}")
            existing = self._existing_digest(name, str(ver))
            if existing is not None and existing != manifest.digest:
                raise VersionConflictError(f"{name}@{ver} already exists with other content")
            written = 0
            created = False
            # also for an identical re-publish: a stored blob found corrupt or missing is
            # written again (put_* check what is stored before deduplicating against it)
            reused = []  # staged copies of blobs already stored: kept until the version is committed
            try:
                for f in pkg.files:
                    if f.staged is not None:
                        staged, f.staged = f.staged, None
                        if callable(getattr(self.blobs, "holds", None)) and self.blobs.holds(staged):
                            reused.append(staged)
                        else:
                            written += self.blobs.put_staged(staged)
                    else:
                        written += self.blobs.put_file(f.source, f.sha256)
                if existing is None:
                    created = self._commit_version(manifest, pkg.size)
                # a gc that started before the commit may have taken a reused blob away: now
                # that the version references it, gc keeps it, and a missing one is put back
                for staged in reused:
                    if self.blobs.has(staged.sha256):
                        self.blobs.discard(staged)
                    else:
                        written += self.blobs.put_staged(staged)
                reused = []
            finally:
                for staged in reused:
                    self.blobs.discard(staged)
        finally:
            if own:
                pkg.close()
        result = PublishResult(name, str(ver), manifest.digest, created, written, len(pkg.files), manifest)
        call_hook("after_publish", manifest=manifest, created=created)
        return result

    def import_version(self, manifest: Manifest, sources: Mapping[str, str | os.PathLike[str]], *,
                       origin: str | None = None) -> PublishResult:
        """Record a version whose manifest was made elsewhere (a Hub pull), keeping the manifest
        and its digest as they are. Every file is verified against the manifest first; a file
        that differs is named in the error and nothing is recorded."""
        from .package import sha256_file
        from .plugins import call_hook

        validate_name(manifest.name)
        Version.parse(manifest.version)
        bad = []
        for f in manifest.files:
            src = sources.get(f.path)
            if src is None or not Path(src).is_file():
                bad.append(f"{f.path} (missing)")
                continue
            digest, size = sha256_file(Path(src))
            if digest != f.sha256 or size != f.size:
                bad.append(f.path)
        if bad:
            raise IntegrityError(f"{manifest.name}@{manifest.version}: files do not match the manifest: "
                                 f"{', '.join(bad)}", hint="the source was modified or corrupted; do not use it")
        existing = self._existing_digest(manifest.name, manifest.version)
        if existing is not None and existing != manifest.digest:
            raise VersionConflictError(f"{manifest.name}@{manifest.version} already exists here with other content")
        written = 0
        created = False
        for f in manifest.files:  # repairs a corrupt or missing blob of an existing version too
            written += self.blobs.put_file(sources[f.path], f.sha256)
        if existing is None:
            created = self._commit_version(manifest, sum(f.size for f in manifest.files), source=origin)
            for f in manifest.files:  # a gc that ran before the commit may have taken one away
                if self.blobs.size(f.sha256) != f.size:
                    written += self.blobs.put_file(sources[f.path], f.sha256)
        call_hook("after_publish", manifest=manifest, created=created)
        return PublishResult(manifest.name, manifest.version, manifest.digest, created, written,
                             len(manifest.files), manifest)

    def origins(self, name: str) -> set[str | None]:
        """Where the versions of ``name`` came from: None for versions published here, a
        Hub repo (``hf://ORG/REPO``, commit dropped) for pulled ones. Empty if no such adapter."""
        with self._read() as conn:
            rows = conn.execute(select(T_VERSIONS.c.source).join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)
                                .where(T_ADAPTERS.c.name_key == name_key(name))).all()
        return {r.source.rsplit("@", 1)[0] if r.source else None for r in rows}

    def _canonical_name(self, name: str) -> str:
        with self._read() as conn:
            row = conn.execute(select(T_ADAPTERS.c.name).where(T_ADAPTERS.c.name_key == name_key(name))).first()
        return row.name if row else name

    def _existing_digest(self, name: str, version: str) -> str | None:
        """The digest of ``name@version`` if it exists. VersionConflictError if another
        spelling of the same version exists (they differ only in build metadata)."""
        with self._read() as conn:
            row = conn.execute(
                select(T_VERSIONS.c.digest).join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)
                .where(T_ADAPTERS.c.name_key == name_key(name), T_VERSIONS.c.version == version)).first()
            if row is None:
                adapter = conn.execute(select(T_ADAPTERS.c.id).where(T_ADAPTERS.c.name_key == name_key(name))).first()
                if adapter is not None:
                    _refuse_precedence_twin(conn, adapter.id, name, Version.parse(version))
        return row.digest if row else None

    def _commit_version(self, manifest: Manifest, size: int, *, source: str | None = None) -> bool:
        ver = Version.parse(manifest.version)
        req_digest = requirements_digest(manifest.requirements)
        for attempt in range(5):
            try:
                with self._write() as conn:
                    key = name_key(manifest.name)
                    row = conn.execute(select(T_ADAPTERS.c.id).where(T_ADAPTERS.c.name_key == key)).first()
                    if row:
                        adapter_id = row.id
                        existing = conn.execute(select(T_VERSIONS.c.digest).where(
                            T_VERSIONS.c.adapter_id == adapter_id, T_VERSIONS.c.version == manifest.version)).first()
                        if existing:
                            if existing.digest == manifest.digest:
                                return False
                            raise VersionConflictError(
                                f"{manifest.name}@{manifest.version} already exists with other content")
                        _refuse_precedence_twin(conn, adapter_id, manifest.name, ver)
                    else:
                        adapter_id = conn.execute(insert(T_ADAPTERS).values(
                            name=manifest.name, name_key=key, created_at=utcnow())
                            .returning(T_ADAPTERS.c.id)).scalar_one()
                    if not conn.execute(select(T_REQS.c.digest).where(T_REQS.c.digest == req_digest)).first():
                        conn.execute(insert(T_REQS).values(
                            digest=req_digest, body=json.dumps(manifest.requirements, sort_keys=True)))
                    vid = conn.execute(insert(T_VERSIONS).values(
                        adapter_id=adapter_id, version=manifest.version, major=ver.major, minor=ver.minor,
                        patch=ver.patch, prerelease=".".join(ver.prerelease), digest=manifest.digest,
                        manifest=manifest.to_json().decode("utf-8"), method=manifest.method["type"],
                        variant=manifest.method.get("variant") or "", base_fingerprint=manifest.base.fingerprint,
                        base_arch=manifest.base.arch_signature, base_name=manifest.base.name,
                        req_digest=req_digest, size=size, yanked=False, created_at=utcnow(), source=source,
                    ).returning(T_VERSIONS.c.id)).scalar_one()
                    if manifest.tasks:
                        conn.execute(insert(T_TASKS), [{"version_id": vid, "task": t} for t in manifest.tasks])
                    conn.execute(insert(T_FILES), [{"version_id": vid, "path": f.path, "sha256": f.sha256,
                                                    "size": f.size} for f in manifest.files])
                return True
            except SAIntegrityError:
                if attempt == 4:
                    raise
        return True

    # ------------------------------------------------------------------ lookup

    def _adapter_id(self, conn: Connection, name: str) -> tuple[int, str]:
        row = conn.execute(select(T_ADAPTERS.c.id, T_ADAPTERS.c.name)
                           .where(T_ADAPTERS.c.name_key == name_key(name))).first()
        if not row:
            raise NotFoundError(f"no adapter named {name!r} in this registry",
                                hint="'adapterhub list' shows what is published")
        return row.id, row.name

    def _select_version(self, conn: Connection, name: str, spec: str | None) -> Any:
        """The version row that ``name@spec`` designates (yanked only by exact pin)."""
        adapter_id, canonical = self._adapter_id(conn, name)
        sp = VersionSpec.parse(spec or "latest")
        if sp.kind == "alias":
            row = conn.execute(select(T_VERSIONS).join(T_ALIASES, T_ALIASES.c.version_id == T_VERSIONS.c.id)
                               .where(T_ALIASES.c.adapter_id == adapter_id, T_ALIASES.c.alias == sp.alias)).first()
            if not row:
                raise NotFoundError(f"{canonical} has no alias {sp.alias!r}",
                                    hint=f"'adapterhub show {canonical}' lists its versions and aliases")
            if row.yanked:
                raise NotFoundError(f"{canonical}@{sp.alias} points to {row.version}, which is yanked; yanked "
                                    "versions are reachable by exact pin only",
                                    hint=f"pin it ({canonical}@{row.version}) or move the alias: "
                                         f"adapterhub alias {canonical}@VERSION {sp.alias}")
            return row
        rows = conn.execute(select(T_VERSIONS).where(T_VERSIONS.c.adapter_id == adapter_id)).all()
        parsed = [(Version.parse(r.version), r) for r in rows]
        if sp.kind == "exact":
            for v, r in parsed:
                if v == sp.exact:
                    return r
        else:
            live = [(v, r) for v, r in parsed if not r.yanked and sp.matches(v)]
            if not live and not spec:  # nothing but pre-releases: with no spec given, the newest
                live = [(v, r) for v, r in parsed if not r.yanked]
            if live:
                return max(live, key=lambda vr: vr[0])[1]
        ordered = sorted(parsed, key=lambda vr: vr[0])
        avail = ", ".join(str(v) for v, r in ordered if not r.yanked) or "none"
        yanked = ", ".join(str(v) for v, r in ordered if r.yanked)
        raise NotFoundError(f"no version of {canonical} matches {sp.text!r} (available: {avail}"
                            + (f"; yanked, reachable by exact pin only: {yanked})" if yanked else ")"))

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

    def show(self, ref: str) -> VersionInfo:
        """One version with its manifest (``ns/name`` alone means the latest)."""
        r = parse_ref(ref)
        with self._read() as conn:
            row = self._select_version(conn, r.name, r.spec)
            info = self._info(conn, [row], with_manifest=True)[0]
            if info.base_fingerprint and info.manifest is not None:
                n_params = conn.execute(select(T_BASES.c.n_params).where(
                    T_BASES.c.fingerprint == info.base_fingerprint)).scalar()
                info = dataclasses.replace(info, base_fraction=base_fraction(
                    info.manifest.method.get("summary") or {}, n_params),
                    base_seen_as=self._seen_as(conn, info.base_fingerprint))
            return info

    @staticmethod
    def _seen_as(conn: Any, fp: str) -> tuple[str, ...]:
        """Where the weights of fingerprint ``fp`` were seen: local paths and Hub snapshots."""
        rows = conn.execute(select(T_SOURCES.c.kind, T_SOURCES.c.locator, T_SOURCES.c.revision)
                            .where(T_SOURCES.c.fingerprint == fp, T_SOURCES.c.kind.in_(("path", "hub")))
                            .order_by(T_SOURCES.c.seen_at.desc(), T_SOURCES.c.id.desc()).limit(20)).all()
        return tuple(f"hf://{r.locator}@{r.revision}" if r.kind == "hub" else r.locator for r in rows)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of an adapter, newest first, yanked ones included."""
        validate_name(name)
        with self._read() as conn:
            adapter_id, _ = self._adapter_id(conn, name)
            rows = conn.execute(select(T_VERSIONS).where(T_VERSIONS.c.adapter_id == adapter_id)).all()
            infos = self._info(conn, rows)
        return sorted(infos, key=lambda i: Version.parse(i.version), reverse=True)

    def list(self, *, task: str | None = None, method: str | None = None, base: Any = None,
             name: str | None = None, include_yanked: bool = True) -> list[VersionInfo]:
        """Published versions, filtered; sorted by name, newest version first."""
        q = select(T_VERSIONS)
        if task:
            q = q.where(T_VERSIONS.c.id.in_(select(T_TASKS.c.version_id).where(T_TASKS.c.task == task)))
        if method:
            q = q.where(or_(T_VERSIONS.c.method == method.lower(), T_VERSIONS.c.variant == method.lower()))
        if base is not None:
            b = self._as_base(base)
            q = q.where(T_VERSIONS.c.base_fingerprint == (b if isinstance(b, str) else b.digest))
        if name:
            q = q.join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id).where(
                T_ADAPTERS.c.name_key == name_key(name))
        if not include_yanked:
            q = q.where(T_VERSIONS.c.yanked.is_(False))
        with self._read() as conn:
            infos = self._info(conn, conn.execute(q).all())
        infos.sort(key=lambda i: Version.parse(i.version), reverse=True)
        infos.sort(key=lambda i: i.name.lower())
        return infos

    # ------------------------------------------------------------------ resolve

    def _ensure_fits(self, base: BaseFingerprint) -> builtins.list[str]:
        """Check every requirement set not yet checked against ``base``'s architecture and
        record the verdicts; return the digests of the sets that fit."""
        arch = base.arch_signature
        with self._read() as conn:
            digests = frozenset(conn.execute(_REQ_DIGESTS).scalars().all())
            memo = self._fits_memo.get(arch)
            if memo is not None and memo[0] == digests:
                return builtins.list(memo[1])
            # Driven from requirement_sets (the outer join keeps that order): one primary-key probe
            # into fits per set. fits has no index on arch_signature alone, so a query that starts
            # from fits scans every (set, arch) pair ever checked, reasons included.
            known_q = select(T_REQS.c.digest, T_FITS.c.ok).select_from(T_REQS.outerjoin(
                T_FITS, and_(T_FITS.c.req_digest == T_REQS.c.digest, T_FITS.c.arch_signature == arch)))
            missing_q = select(T_REQS).where(T_REQS.c.digest.not_in(
                select(T_FITS.c.req_digest).where(T_FITS.c.arch_signature == arch)))
            known = conn.execute(known_q).all()
            missing = conn.execute(missing_q).all() if any(ok is None for _, ok in known) else []
        fitting = [d for d, ok in known if ok]
        if not missing:
            self._fits_memo[arch] = (digests, builtins.list(fitting))
            return fitting
        rows = []
        for r in missing:
            reasons = check_requirements(json.loads(r.body), base)
            rows.append({"req_digest": r.digest, "arch_signature": arch, "ok": not reasons,
                         "reasons": json.dumps(reasons)})
            if not reasons:
                fitting.append(r.digest)
        try:
            with self._write() as conn:
                done = {d for (d,) in conn.execute(select(T_FITS.c.req_digest).where(
                    T_FITS.c.arch_signature == arch, T_FITS.c.req_digest.in_([r["req_digest"] for r in rows])))}
                todo = [r for r in rows if r["req_digest"] not in done]
                if todo:
                    conn.execute(insert(T_FITS), todo)
        except SAIntegrityError:
            pass  # another process recorded the same fits
        self._fits_memo[arch] = (digests, builtins.list(fitting))
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
            from .runtime import get_runtime

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
                if arch is not None:
                    q = select(*cols, T_FITS.c.reasons).join(
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
            for chunk in (missing[i:i + 500] for i in range(0, len(missing), 500)):
                memo.update(tuple(a) for a in conn.execute(_NAMES_OF, {"ids": chunk}).all())
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
            ids = [vid for vid, _ in missing]
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                for vid, task in conn.execute(_TASKS_OR_NONE_OF, {"ids": chunk}).all():
                    got = found.setdefault(vid, [])
                    if task is not None:
                        got.append(task)
            for vid, digest in missing:
                tasks = tuple(sorted(found.get(vid, ())))
                if vid in found:
                    memo[digest] = "\n".join(tasks)
                out[vid] = shared.setdefault("\n".join(tasks), tasks)
        return out

    # ------------------------------------------------------------------ pull

    def push(self, ref: str, *, to: str, private: bool | None = None) -> Any:
        """Push ``name@version`` to ``hf://ORG/REPO`` (one commit stating its parent, tagged
        with the version). Returns a PushResult."""
        from .hub import HubClient

        return HubClient().push(self, ref, to, private=private)

    def pull(self, ref: str, dest: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
             base: Any = None, name: str | None = None) -> Path | None:
        """Write ``name@spec`` to ``dest`` as a directory PEFT loads. Every file is verified
        against its digest first; ``dest`` is written atomically (complete or untouched).
        ``hf://ORG/REPO@SPEC`` pulls from the Hub: verified, recorded here (so it resolves
        offline afterwards) and, when ``dest`` is given, written there; ``base`` pins a
        repo PEFT pushed without a manifest. Returns the written directory (None for a Hub
        pull without ``dest``: the version is then only recorded). ``name``: accept the
        adapter name a Hub repo's manifest gives, when it differs from the repo's own and that
        name already holds versions from elsewhere here."""
        from .plugins import call_hook

        if ref.startswith("hf://"):
            from .hub import HubClient

            HubClient().pull(self, ref, base=base, dest=dest, overwrite=overwrite, name=name)
            return Path(dest) if dest is not None else None
        if dest is None:
            raise TypeError("pull needs a destination directory")

        r = parse_ref(ref)
        with self._read() as conn:
            row = self._select_version(conn, r.name, r.spec)
            files = conn.execute(select(T_FILES).where(T_FILES.c.version_id == row.id)).all()
        manifest = Manifest.from_json(row.manifest)
        if manifest.digest != row.digest:
            raise IntegrityError(f"manifest of {r.name}@{row.version} does not match its digest")
        listed = {(f.path, f.sha256, f.size) for f in manifest.files}
        if listed != {(f.path, f.sha256, f.size) for f in files}:
            raise IntegrityError(f"file records of {r.name}@{row.version} disagree with its manifest")

        def writer(sha: str):
            return lambda out: self.blobs.copy_verified(sha, out)

        payload = [(f.path, writer(f.sha256)) for f in manifest.files]
        payload.append((MANIFEST_FILE, lambda out: out.write(manifest.to_json())))
        path = write_package_dir(Path(dest), payload, overwrite=overwrite)
        _warn_nonfinite(f"{r.name}@{row.version}", path)
        call_hook("after_pull", manifest=manifest, path=path)
        return path

    # ------------------------------------------------------------------ aliases, yank

    def alias(self, ref: str, alias: str) -> VersionInfo:
        """Point ``alias`` (e.g. ``prod``) at an exact version; moves it if it exists."""
        r = parse_ref(ref)
        validate_alias(alias)
        if r.spec is None or VersionSpec.parse(r.spec).kind != "exact":
            raise InvalidVersionError(f"{ref!r}: an alias points at an exact version (NS/NAME@1.2.3)")
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            cond = and_(T_ALIASES.c.adapter_id == row.adapter_id, T_ALIASES.c.alias == alias)
            if conn.execute(select(T_ALIASES.c.alias).where(cond)).first():
                conn.execute(update(T_ALIASES).where(cond).values(version_id=row.id, updated_at=utcnow()))
            else:
                conn.execute(insert(T_ALIASES).values(adapter_id=row.adapter_id, alias=alias, version_id=row.id,
                                                      updated_at=utcnow()))
        return self.show(f"{r.name}@{row.version}")

    def yank(self, ref: str, *, undo: bool = False) -> VersionInfo:
        """Hide a version from ranges, ``latest`` and resolve; exact pins still find it."""
        r = parse_ref(ref)
        if r.spec is None or VersionSpec.parse(r.spec).kind != "exact":
            raise InvalidVersionError(f"{ref!r}: yank needs an exact version (NS/NAME@1.2.3)")
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            conn.execute(update(T_VERSIONS).where(T_VERSIONS.c.id == row.id).values(yanked=not undo))
        return self.show(f"{r.name}@{row.version}")

    # ------------------------------------------------------------------ maintenance

    def verify(self) -> VerifyReport:
        """Re-hash every referenced blob and check every manifest against its digest."""
        report = VerifyReport()
        users: dict[str, list[str]] = {}
        with self._read() as conn:
            for v in conn.execute(select(T_VERSIONS.c.id, T_VERSIONS.c.version, T_VERSIONS.c.digest,
                                         T_VERSIONS.c.manifest, T_ADAPTERS.c.name)
                                  .join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)):
                report.versions += 1
                ref = f"{v.name}@{v.version}"
                try:
                    ok = Manifest.from_json(v.manifest).digest == v.digest
                except AdapterHubError:
                    ok = False
                if not ok:
                    report.problems.append({"kind": "manifest", "version": ref, "ref": ref, "name": v.name,
                                            "digest": v.digest, "problem": "manifest does not match its digest"})
            for f in conn.execute(select(T_FILES.c.sha256, T_VERSIONS.c.version, T_ADAPTERS.c.name)
                                  .join(T_VERSIONS, T_VERSIONS.c.id == T_FILES.c.version_id)
                                  .join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)):
                users.setdefault(f.sha256, []).append(f"{f.name}@{f.version}")
        for sha in sorted(users):
            report.blobs += 1
            problem = self.blobs.verify(sha)
            if problem:
                report.problems.append({"kind": "blob", "sha256": sha, "digest": f"sha256:{sha}",
                                        "problem": problem, "versions": sorted(set(users[sha]))})
            else:
                report.bytes += self.blobs.size(sha)
        return report

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Delete blobs no version references and abandoned temp files, older than the grace
        period (so a publish in progress in another process keeps its blobs)."""
        report = GcReport(dry_run=dry_run)
        with self._read() as conn:
            referenced = {s for (s,) in conn.execute(select(T_FILES.c.sha256).distinct())}
        quarantine = getattr(self.blobs, "quarantine", None)
        for sha in list(self.blobs.iter_digests()):
            if sha in referenced:
                continue
            if self.blobs.age(sha) < grace_seconds:  # publishes refresh the blobs they reuse
                report.kept_recent += 1
                continue
            if dry_run:
                report.blobs_removed += 1
                report.bytes_freed += self.blobs.size(sha)
                continue
            if not callable(quarantine):
                report.blobs_removed += 1
                report.bytes_freed += self.blobs.delete(sha)
                continue
            # move it aside, then ask again: a version committed since the first read keeps it
            # (and a publish that reused it puts it back after its commit in any case)
            token = quarantine(sha)
            if token is None:
                continue
            with self._read() as conn:
                now = conn.execute(select(T_FILES.c.sha256).where(T_FILES.c.sha256 == sha).limit(1)).first()
            freed = self.blobs.release(token, sha, keep=now is not None)
            if now is None:
                report.blobs_removed += 1
                report.bytes_freed += freed
        report.temp_removed = self.blobs.clean_temp(grace_seconds, dry_run=dry_run)
        return report

    def stats(self) -> dict[str, Any]:
        with self._read() as conn:
            n_adapters = conn.execute(select(func.count()).select_from(T_ADAPTERS)).scalar_one()
            n_versions = conn.execute(select(func.count()).select_from(T_VERSIONS)).scalar_one()
            n_bases = conn.execute(select(func.count()).select_from(T_BASES)).scalar_one()
            logical = conn.execute(select(func.coalesce(func.sum(T_FILES.c.size), 0))).scalar_one()
        return {"adapters": n_adapters, "versions": n_versions, "bases": n_bases, "logical_bytes": int(logical)}

    def delete_version(self, ref: str) -> None:
        """Remove a version record (its blobs go at the next gc). Prefer yank for anything shared."""
        r = parse_ref(ref)
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            conn.execute(delete(T_VERSIONS).where(T_VERSIONS.c.id == row.id))

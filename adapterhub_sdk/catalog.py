"""The catalog statements that finding one version, recording a version made elsewhere, its
signatures and the blob leases of a publish run: plain SQL with ``?`` parameters on a DBAPI
cursor, written once. The SQLAlchemy registry runs them on its connection's cursor inside its
own transactions (:meth:`RegistryCore._q`); :mod:`adapterhub_sdk.sqlite_registry` runs them on
the standard library's sqlite3, so that ``adapterhub pull oci://...`` and ``push --to oci://``
on a SQLite home record and read exactly the same rows without importing SQLAlchemy."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from .errors import NotFoundError, VersionConflictError
from .manifest import Manifest
from .names import did_you_mean, name_key, typo_window
from .resolving import fetch_in
from .sqlrun import RowConflict, Sql, utcnow  # noqa: F401 - the statements' runner, re-exported
from .version_info import VersionInfo, _iso
from .versions import Version, VersionSpec


def timestamp(value: Any) -> Any:
    """A timestamp column's value as a datetime (SQLite hands back the text written)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


# --- one version ----------------------------------------------------------------------------

VERSION_COLUMNS = ("id", "adapter_id", "version", "major", "minor", "patch", "prerelease", "digest", "manifest",
                   "method", "variant", "base_fingerprint", "base_arch", "base_name", "req_digest", "size",
                   "yanked", "source", "created_at")
_VCOLS = ", ".join(f"v.{c}" for c in VERSION_COLUMNS)


class VersionRow(NamedTuple):
    """A row of ``versions``, every column, by name."""

    id: int
    adapter_id: int
    version: str
    major: int
    minor: int
    patch: int
    prerelease: str
    digest: str
    manifest: str
    method: str
    variant: str
    base_fingerprint: str | None
    base_arch: str | None
    base_name: str | None
    req_digest: str
    size: int
    yanked: bool
    source: str | None
    created_at: Any


def _version_row(t: Sequence[Any]) -> VersionRow:
    r = VersionRow(*t)
    return r._replace(yanked=bool(r.yanked), created_at=timestamp(r.created_at))


def adapter_id(q: Sql, name: str) -> tuple[int, str]:
    """(id, canonical name) of adapter ``name``; NotFoundError naming the near misses."""
    rows = q("SELECT id, name FROM adapters WHERE name_key = ?", (name_key(name),))
    if rows:
        return rows[0][0], rows[0][1]
    head, tail, shortest, longest = typo_window(name)  # few names reach difflib
    near = [n for (n,) in q("SELECT name FROM adapters WHERE (substr(name_key, 1, ?) = ? OR "
                            "substr(name_key, length(name_key) - ? + 1) = ?) AND length(name_key) BETWEEN ? AND ?",
                            (len(head), head, len(tail), tail, shortest, longest))]
    raise NotFoundError(f"no adapter named {name!r} in this registry",
                        hint=did_you_mean(name, near) or "'adapterhub list' shows what is published")


def select_version(q: Sql, name: str, spec: str | None) -> VersionRow:
    """The version row that ``name@spec`` designates (yanked only by exact pin)."""
    aid, canonical = adapter_id(q, name)
    sp = VersionSpec.parse(spec or "latest")
    if sp.kind == "alias":
        got = q(f"SELECT {_VCOLS} FROM versions v JOIN aliases a ON a.version_id = v.id "
                "WHERE a.adapter_id = ? AND a.alias = ?", (aid, sp.alias))
        if not got:
            raise NotFoundError(f"{canonical} has no alias {sp.alias!r}",
                                hint=f"'adapterhub show {canonical}' lists its versions and aliases")
        row = _version_row(got[0])
        if row.yanked:
            raise NotFoundError(f"{canonical}@{sp.alias} points to {row.version}, which is yanked; yanked "
                                "versions are reachable by exact pin only",
                                hint=f"pin it ({canonical}@{row.version}) or move the alias: "
                                     f"adapterhub alias {canonical}@VERSION {sp.alias}")
        return row
    rows = [_version_row(t) for t in q(f"SELECT {_VCOLS} FROM versions v WHERE v.adapter_id = ?", (aid,))]
    parsed = [(Version.parse(r.version), r) for r in rows]
    if sp.kind == "exact":
        for v, r in parsed:  # a pin that spells build metadata names that build, not a twin of it
            if sp.pins(v):
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


def version_infos(q: Sql, rows: Sequence[Any], *, with_manifest: bool = False) -> list[VersionInfo]:
    """:class:`VersionInfo` of version rows (any with the columns by name), with their
    tasks, aliases and adapter names."""
    if not rows:
        return []
    ids = [r.id for r in rows]
    tasks: dict[int, list[str]] = {}
    aliases: dict[int, list[str]] = {}
    for vid, task in fetch_in(q, "SELECT version_id, task FROM version_tasks WHERE version_id IN ({in})", ids):
        tasks.setdefault(vid, []).append(task)
    for vid, alias in fetch_in(q, "SELECT version_id, alias FROM aliases WHERE version_id IN ({in})", ids):
        aliases.setdefault(vid, []).append(alias)
    names = dict(fetch_in(q, "SELECT id, name FROM adapters WHERE id IN ({in})", sorted({r.adapter_id for r in rows})))
    return [VersionInfo(
        names[r.adapter_id], r.version, r.digest, r.method, r.variant, tuple(sorted(tasks.get(r.id, []))),
        r.base_fingerprint, r.base_name, r.size, bool(r.yanked), _iso(timestamp(r.created_at)),
        tuple(sorted(aliases.get(r.id, []))), Manifest.from_json(r.manifest) if with_manifest else None,
        source=r.source,
    ) for r in rows]


def seen_as(q: Sql, fp: str) -> tuple[str, ...]:
    """Where the weights of fingerprint ``fp`` were seen: local paths and Hub snapshots."""
    rows = q("SELECT kind, locator, revision FROM base_sources WHERE fingerprint = ? AND kind IN ('path', 'hub') "
             "ORDER BY seen_at DESC, id DESC LIMIT 20", (fp,))
    return tuple(f"hf://{loc}@{rev}" if kind == "hub" else loc for kind, loc, rev in rows)


def show(q: Sql, name: str, spec: str | None) -> VersionInfo:
    """One version with its manifest, and what is known here of the base it pins."""
    import dataclasses

    from .package import base_fraction

    row = select_version(q, name, spec)
    info = version_infos(q, [row], with_manifest=True)[0]
    if info.base_fingerprint and info.manifest is not None:
        got = q("SELECT n_params FROM bases WHERE fingerprint = ?", (info.base_fingerprint,))
        info = dataclasses.replace(info, base_fraction=base_fraction(
            info.manifest.method.get("summary") or {}, got[0][0] if got else None),
            base_seen_as=seen_as(q, info.base_fingerprint))
    return info


def version_files(q: Sql, version_id: int) -> set[tuple[str, str, int]]:
    """The file records of a version: (path, sha256, size)."""
    return {(p, s, int(n)) for p, s, n in q("SELECT path, sha256, size FROM files WHERE version_id = ?",
                                            (version_id,))}


def adapter_name(q: Sql, row: Any) -> str:
    return q("SELECT name FROM adapters WHERE id = ?", (row.adapter_id,))[0][0]


def existing_digest(q: Sql, name: str, version: str) -> str | None:
    """The digest of ``name@version`` if it exists. VersionConflictError if another
    spelling of the same version exists (they differ only in build metadata)."""
    got = q("SELECT v.digest FROM versions v JOIN adapters a ON a.id = v.adapter_id "
            "WHERE a.name_key = ? AND v.version = ?", (name_key(name), version))
    if got:
        return got[0][0]
    adapter = q("SELECT id FROM adapters WHERE name_key = ?", (name_key(name),))
    if adapter:
        refuse_precedence_twin(q, adapter[0][0], name, Version.parse(version))
    return None


def refuse_precedence_twin(q: Sql, adapter: int, name: str, ver: Version) -> None:
    """Semver ignores build metadata: 1.0.0+a and 1.0.0+b are the same version, so a pin or a
    range could not tell them apart. Refuse the second spelling."""
    twin = q("SELECT version FROM versions WHERE adapter_id = ? AND major = ? AND minor = ? AND patch = ? "
             "AND prerelease = ? AND version <> ?",
             (adapter, ver.major, ver.minor, ver.patch, ".".join(ver.prerelease), str(ver)))
    if twin:
        raise VersionConflictError(
            f"{name}@{ver} is the same version as the existing {name}@{twin[0][0]}: versions that differ "
            "only in build metadata (+...) have the same precedence",
            hint="publish under a new version number")


def stored_manifest(q: Sql, name: str, version: str) -> Manifest | None:
    got = q("SELECT v.manifest FROM versions v JOIN adapters a ON a.id = v.adapter_id "
            "WHERE a.name_key = ? AND v.version = ?", (name_key(name), version))
    return Manifest.from_json(got[0][0]) if got and got[0][0] else None


def canonical_name(q: Sql, name: str) -> str:
    got = q("SELECT name FROM adapters WHERE name_key = ?", (name_key(name),))
    return got[0][0] if got else name


def origins(q: Sql, name: str) -> set[str | None]:
    """Where the versions of ``name`` came from (see :meth:`PublishPart.origins`)."""
    rows = q("SELECT v.source FROM versions v JOIN adapters a ON a.id = v.adapter_id WHERE a.name_key = ?",
             (name_key(name),))
    return {s.rsplit("@", 1)[0] if s else None for (s,) in rows}


#: the first key of the PostgreSQL advisory locks that serialise writes of one adapter's versions
#: (two-int4 keys: a space apart from the schema lock's single bigint, db._ADVISORY_KEY)
VERSIONS_LOCK = 0x61647076  # "adpv"


def lock_versions_of(q: Sql, key: str) -> None:
    """Serialise, until the caller's transaction ends, the writers of the versions of the adapter
    whose name key is ``key`` (created or not yet). On PostgreSQL under READ COMMITTED two
    publishes of ``1.0.0+a`` and ``1.0.0+b`` would otherwise both pass the twin check, which no
    unique key can express, before either commits; the second now waits and sees the first.
    SQLite needs nothing: a write transaction begins with ``BEGIN IMMEDIATE``, one at a time."""
    if q.postgres:
        import hashlib

        sub = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big", signed=True)
        q("SELECT pg_advisory_xact_lock(CAST(? AS integer), CAST(? AS integer))", (VERSIONS_LOCK, sub))


def insert_version(q: Sql, manifest: Manifest, size: int, *, source: str | None,
                   requirements: Mapping[str, Any]) -> bool:
    """One attempt at recording ``manifest`` in the caller's write transaction: False when the
    same version is there already, VersionConflictError when another one is."""
    from .methods.base import requirements_digest
    from .probes import requirement_probe
    from .registry.differences import conflict

    ver = Version.parse(manifest.version)
    reqs = dict(requirements)
    req_digest = requirements_digest(reqs)
    key = name_key(manifest.name)
    lock_versions_of(q, key)
    got = q("SELECT id FROM adapters WHERE name_key = ?", (key,))
    if got:
        aid = got[0][0]
        existing = q("SELECT digest, manifest FROM versions WHERE adapter_id = ? AND version = ?",
                     (aid, manifest.version))
        if existing:
            if existing[0][0] == manifest.digest:
                return False
            raise conflict(Manifest.from_json(existing[0][1]), manifest)
        refuse_precedence_twin(q, aid, manifest.name, ver)
    else:
        aid = q("INSERT INTO adapters (name, name_key, created_at) VALUES (?, ?, ?) RETURNING id",
                (manifest.name, key, q.now()))[0][0]
    if not q("SELECT digest FROM requirement_sets WHERE digest = ?", (req_digest,)):
        q.run("INSERT INTO requirement_sets (digest, body, probe) VALUES (?, ?, ?)",
              (req_digest, json.dumps(reqs, sort_keys=True), requirement_probe(reqs)))
    vid = q("INSERT INTO versions (adapter_id, version, major, minor, patch, prerelease, digest, manifest, method, "
            "variant, base_fingerprint, base_arch, base_name, req_digest, size, yanked, created_at, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (aid, manifest.version, ver.major, ver.minor, ver.patch, ".".join(ver.prerelease), manifest.digest,
             manifest.to_json().decode("utf-8"), manifest.method["type"], manifest.method.get("variant") or "",
             manifest.base.fingerprint, manifest.base.arch_signature, manifest.base.name, req_digest, size,
             q.flag(False), q.now(), source))[0][0]
    q.many("INSERT INTO version_tasks (version_id, task) VALUES (?, ?)", [(vid, t) for t in manifest.tasks])
    q.many("INSERT INTO files (version_id, path, sha256, size) VALUES (?, ?, ?, ?)",
           [(vid, f.path, f.sha256, f.size) for f in manifest.files])
    return True


# --- signatures and the signing policy ------------------------------------------------------

class KeyRow(NamedTuple):
    id: int
    name: str
    key_id: str
    public_key: str
    created_at: Any
    revoked_at: Any


class SignatureRow(NamedTuple):
    id: int
    version_id: int
    key_id: str
    signer: str
    bundle: str
    created_at: Any


_KEY_COLS = "id, name, key_id, public_key, created_at, revoked_at"
_SIG_COLS = "id, version_id, key_id, signer, bundle, created_at"


def key_rows(q: Sql, *, name: str | None = None) -> list[KeyRow]:
    """The trusted keys (one by ``name``), by name."""
    sql = f"SELECT {_KEY_COLS} FROM signing_keys" + (" WHERE name = ?" if name is not None else " ORDER BY name")
    return [KeyRow(t[0], t[1], t[2], t[3], timestamp(t[4]), timestamp(t[5]))
            for t in q(sql, (name,) if name is not None else ())]


def keys_by_id(q: Sql) -> dict[str, KeyRow]:
    return {k.key_id: k for k in key_rows(q)}


def signature_rows(q: Sql, version_id: int | None = None) -> list[SignatureRow]:
    """A version's signatures (every version's: None), oldest first."""
    sql = f"SELECT {_SIG_COLS} FROM signatures" + (" WHERE version_id = ?" if version_id is not None else "") \
        + " ORDER BY id"
    return [SignatureRow(*t) for t in q(sql, (version_id,) if version_id is not None else ())]


def insert_signature(q: Sql, version_id: int, key: str, signer: str, bundle: str) -> None:
    q.run("INSERT INTO signatures (version_id, key_id, signer, bundle, created_at) VALUES (?, ?, ?, ?, ?)",
          (version_id, key, signer, bundle, q.now()))


def policy_setting(q: Sql) -> str | None:
    from .signing.checks import POLICY_SETTING

    got = q("SELECT value FROM settings WHERE name = ?", (POLICY_SETTING,))
    return got[0][0] if got else None


def required_signers(q: Sql, require_signed: str | Iterable[str] | None = None) -> list[list[str]]:
    """The signing requirements in force (the registry's policy, ADAPTERHUB_REQUIRE_SIGNED,
    ``require_signed``), each as the key names that satisfy it."""
    from .signing.checks import requirements_in_force

    return requirements_in_force(policy_setting(q), require_signed)


def version_signatures(q: Sql, row: Any, ref: str) -> Any:
    """The signatures of version row ``row``, checked (a VersionSignatures)."""
    from .signing.checks import checked

    return checked(row, ref, signature_rows(q, row.id), keys_by_id(q))


"""Blob and version lifecycle: verify re-hashes what is stored, gc removes what nothing
references (never a blob a publish in progress is about to reference), stats, delete.

A publish leases the blobs it is about to reference (:func:`take_lease`, its own committed
transaction, before any upload) and ends the lease once its version is committed or it
failed (:func:`end_lease`). gc lists the store first and reads the catalog after: a blob
written after its lease and listed by gc is seen leased, and a blob gc has moved aside or
deleted is one the publish finds missing and writes again (or, reused, puts back after its
commit). So no grace period is needed for safety; it only spares a crashed publisher's
leftovers a while."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select

from .. import db as dbmod
from .. import tables
from ..errors import AdapterHubError
from ..interfaces import QuarantiningBlobStorage
from ..manifest import Manifest
from ..names import parse_ref
from ..store_owner import (  # noqa: F401 - re-exported: publish and import lease their blobs through these
    LEASE_SECONDS,
    end_lease,
    holder_gone,
    lease_holder,
    take_lease,
)
from ..tables import utcnow
from ._core import T_ADAPTERS, T_BASES, T_FILES, T_VERSIONS, RegistryCore
from .results import GcReport, VerifyReport

T_LEASES = tables.blob_leases

def live_leases(conn: Connection, digest: str | None = None) -> tuple[set[str], list[int]]:
    """(digests with a live lease, ids of dead leases): expired, or held by a process that is
    gone from this machine. ``digest``: only that blob's leases."""
    q = select(T_LEASES.c.id, T_LEASES.c.sha256, T_LEASES.c.holder, T_LEASES.c.created_at)
    if digest is not None:
        q = q.where(T_LEASES.c.sha256 == digest)
    cutoff = utcnow() - timedelta(seconds=LEASE_SECONDS)
    live: set[str] = set()
    dead: list[int] = []
    gone: dict[str, bool] = {}
    for row in conn.execute(q):
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=cutoff.tzinfo)
        if row.holder not in gone:
            gone[row.holder] = holder_gone(row.holder)
        if created < cutoff or gone[row.holder]:
            dead.append(row.id)
        else:
            live.add(row.sha256)
    return live, dead


class LifecyclePart(RegistryCore):
    """verify, gc, stats and delete_version."""

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

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False, claim_store: bool = False) -> GcReport:
        """Delete blobs no version references and abandoned temp files older than the grace
        period. A blob a publish in progress has leased (in any process, on any machine) is
        kept whatever the grace period; so is one a version references by the time gc
        deletes it. Only the registry a store belongs to collects it (RegistryError
        otherwise, nothing deleted): a store records its registry's id when that registry
        first publishes into it or runs gc there. ``claim_store``: make this registry the
        store's owner, whoever owned it (a catalog restored without its settings)."""
        report = GcReport(dry_run=dry_run)
        stored = list(self.blobs.iter_digests())  # listed before the catalog is read: see the module
        with self._read() as conn:
            referenced = {s for (s,) in conn.execute(select(T_FILES.c.sha256).distinct())}
            leased, dead = live_leases(conn)
        self._check_owner(stored, referenced, dry_run=dry_run, claim=claim_store)
        if dead and not dry_run and not dbmod.is_read_only(self.engine):
            with self._write() as conn:
                for i in range(0, len(dead), 500):
                    conn.execute(delete(T_LEASES).where(T_LEASES.c.id.in_(dead[i:i + 500])))
        # a store that can quarantine (the built-in ones) moves a blob aside before deleting it
        quarantining = isinstance(self.blobs, QuarantiningBlobStorage)
        for sha in stored:
            if sha in referenced:
                continue
            if sha in leased:
                report.kept_leased += 1
                continue
            if self.blobs.age(sha) < grace_seconds:
                report.kept_recent += 1
                continue
            if dry_run:
                report.blobs_removed += 1
                report.bytes_freed += self.blobs.size(sha)
                continue
            if not quarantining:
                if self._in_use(sha):
                    report.kept_leased += 1
                    continue
                report.blobs_removed += 1
                report.bytes_freed += self.blobs.delete(sha)
                continue
            # move it aside, then ask again: a version committed or a lease taken since the
            # first read keeps it (and a publish that reused it puts it back after its commit)
            token = self.blobs.quarantine(sha)
            if token is None:
                continue
            keep = self._in_use(sha)
            freed = self.blobs.release(token, sha, keep=keep)
            if not keep:
                report.blobs_removed += 1
                report.bytes_freed += freed
        report.temp_removed = self.blobs.clean_temp(grace_seconds, dry_run=dry_run, **self._keep_uploads())
        return report

    def _check_owner(self, stored: list[str], referenced: set[str], *, dry_run: bool, claim: bool) -> None:
        """gc runs on a store only for the registry that owns it: from any other catalog (a
        forgotten --registry beside a shared ADAPTERHUB_BLOBS) every blob of the owner's looks
        unreferenced, and was deleted. A store no registry has claimed (made before stores
        recorded their owner) is claimed here, unless this registry references none of what it
        holds: then it is most likely another registry's, and gc refuses."""
        from ..errors import RegistryError
        from ..interfaces import OwnedBlobStorage
        from ..store_owner import registry_id

        if not isinstance(self.blobs, OwnedBlobStorage):
            return
        mine = registry_id(self)
        if claim:
            if mine is None:
                raise dbmod.read_only_error("claiming its blob store")
            if not dry_run:
                self.blobs.claim(mine, force=True)
            return
        owner = self.blobs.owner()
        where = f"the blob store {self.blobs}"
        hint = ("run gc with the registry that publishes to this store (--registry / ADAPTERHUB_REGISTRY_URL); "
                "if this store really is this registry's, run 'adapterhub gc --claim-store' once")
        if owner is None:
            if stored and not referenced:
                raise RegistryError(f"gc refused: this registry references none of the {len(stored)} blobs in {where}, "
                                    "which no registry has claimed: it is most likely another registry's store",
                                    hint=hint)
            owner = self.blobs.claim(mine) if mine is not None and not dry_run else mine
        if owner != mine:
            raise RegistryError(f"gc refused: {where} belongs to another registry (id {(owner or '?')[:12]}), not this "
                                f"one ({(mine or 'none')[:12]}): gc here would delete the blobs of every version that "
                                "registry holds", hint=hint)

    def _keep_uploads(self) -> dict[str, Any]:
        """For a store whose temp data is named by digest (S3's multipart uploads): the blobs
        leased now, whose uploads in progress clean_temp leaves alone."""
        import inspect

        try:
            if "keep" not in inspect.signature(self.blobs.clean_temp).parameters:
                return {}
        except (TypeError, ValueError):
            return {}
        with self._read() as conn:
            return {"keep": live_leases(conn)[0]}

    def _in_use(self, sha: str) -> bool:
        """Whether a version references blob ``sha`` or a live lease holds it, now."""
        with self._read() as conn:
            if conn.execute(select(T_FILES.c.sha256).where(T_FILES.c.sha256 == sha).limit(1)).first():
                return True
            return bool(live_leases(conn, sha)[0])

    def leases(self) -> list[dict[str, Any]]:
        """The blob leases of publishes in progress (for ``gc`` and for a look when a blob
        will not go): digest, holder, when it was taken, whether it is still live."""
        with self._read() as conn:
            dead = set(live_leases(conn)[1])
            rows = conn.execute(select(T_LEASES).order_by(T_LEASES.c.id)).all()
        return [{"sha256": r.sha256, "lease": r.lease, "holder": r.holder, "created_at": r.created_at.isoformat(),
                 "live": r.id not in dead} for r in rows]

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

"""Blob and version lifecycle: verify re-hashes what is stored, gc removes what nothing
references (never a blob a publish in progress is about to reference), stats, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from ..errors import AdapterHubError
from ..interfaces import QuarantiningBlobStorage
from ..manifest import Manifest
from ..names import parse_ref
from ._core import T_ADAPTERS, T_BASES, T_FILES, T_VERSIONS, RegistryCore
from .results import GcReport, VerifyReport


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

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Delete blobs no version references and abandoned temp files, older than the grace
        period (so a publish in progress in another process keeps its blobs)."""
        report = GcReport(dry_run=dry_run)
        with self._read() as conn:
            referenced = {s for (s,) in conn.execute(select(T_FILES.c.sha256).distinct())}
        # a store that can quarantine (the built-in one) moves a blob aside before deleting it
        quarantining = isinstance(self.blobs, QuarantiningBlobStorage)
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
            if not quarantining:
                report.blobs_removed += 1
                report.bytes_freed += self.blobs.delete(sha)
                continue
            # move it aside, then ask again: a version committed since the first read keeps it
            # (and a publish that reused it puts it back after its commit in any case)
            token = self.blobs.quarantine(sha)
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

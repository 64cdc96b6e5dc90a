"""The publish transaction: a version is committed only after every blob it references is
stored, and a gc racing with it can never leave the version without its blobs."""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import catalog, store_owner
from ..dbinfo import read_only_error
from ..errors import (
    AdapterHubError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    UnpinnedPublishWarning,
)
from ..interfaces import StagingBlobStorage
from ..manifest import BaseRef, Manifest
from ..names import validate_name
from ..package import AdapterPackage, PackedFile, pack
from ..versions import Version
from ._core import RegistryCore
from .differences import conflict, same_content
from .results import MANIFEST_FILE, PublishResult, _iso


def _warn_unpinned(name: str, version: str, base_name: str | None) -> None:
    named = f" (PEFT recorded the name {base_name!r}, which says nothing of the weights)" if base_name else ""
    warnings.warn(f"{name}@{version} is published unpinned: no base=PATH was given, so it is tied to no "
                  f"base weights{named}; nothing checked its tensors against a base and resolve can never call "
                  "it exact. Versions never change: to pin it, publish it under a new version with base=PATH",
                  UnpinnedPublishWarning, stacklevel=3)


_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}", re.ASCII)


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


def _check_tasks(tasks: Iterable[str]) -> list[str]:
    out = []
    for t in tasks:
        if not isinstance(t, str) or not _TASK.fullmatch(t):
            raise InvalidNameError(f"task {t!r} is not valid",  # malformed like a name: a usage error
                                  hint="tasks are ASCII words: letters, digits, '.', '_', ':' or '-'")
        out.append(t)
    return sorted(set(out))



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


class PublishPart(RegistryCore):
    """publish, import_version and the commit they share."""

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
        from ..plugins import call_hook

        validate_name(name)
        name = self._canonical_name(name)  # names are case-insensitive: keep the first spelling
        ver = Version.parse(version)
        if self._read_only():
            raise read_only_error(f"publishing {name}@{ver}")
        task_list = _check_tasks(tasks)
        _check_metrics(metrics)
        own = not isinstance(source, AdapterPackage)
        # a store that can stage (the built-in one) copies and hashes each file once
        staging = isinstance(self.blobs, StagingBlobStorage)
        if own:
            stage, discard = (self.blobs.stage, self.blobs.discard) if staging else (None, None)
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
                                        hint="pass the base model's path as base=PATH")
                pkg.require_base(bfp)
                base_ref = BaseRef(pkg.base_name, pkg.config.get("revision"), bfp.digest, bfp.arch_signature)
            manifest = pkg.manifest(
                name=name, version=str(ver), base=base_ref, tasks=task_list, description=description,
                license=license, metrics=metrics,
                provenance={"created_at": _iso(catalog.utcnow()), "versions": _pkg_versions(),
                            **({"nonfinite": {"allowed": True, "tensors": len(nonfinite),
                                              "values": sum(n.count for n in nonfinite),
                                              "first": nonfinite[0].tensor}} if nonfinite else {})})
            for plugin, reason in call_hook("validate_publish", manifest=manifest, package=pkg):
                if reason:
                    raise AdapterHubError(f"publish rejected by policy {plugin!r}: {reason}")
            existing = self._existing_digest(name, str(ver))
            if existing is not None and existing != manifest.digest:
                stored = self._stored_manifest(name, str(ver))
                if stored is None or stored.digest != existing or not same_content(stored, manifest):
                    raise conflict(stored, manifest)
                # the same files and metadata, made by another SDK (its summary or requirements
                # differ, not the user's data): the version already published, as it is
                manifest = stored
            written = 0
            created = False
            # also for an identical re-publish: a stored blob found corrupt or missing is
            # written again (put_* check what is stored before deduplicating against it)
            reused = []  # staged copies of blobs already stored: kept until the version is committed
            reused_files = []  # files put_file found already stored (an AdapterPackage's, or no staging)
            store_owner.claim_store(self)
            lease = store_owner.take_lease(self, [f.sha256 for f in pkg.files])  # gc keeps them until it ends
            try:
                for f in pkg.files:
                    if f.staged is not None:
                        staged, f.staged = f.staged, None
                        if staging and self.blobs.holds(staged):
                            reused.append(staged)
                        else:
                            written += self.blobs.put_staged(staged)
                    else:
                        n = self.blobs.put_file(f.source, f.sha256)
                        written += n
                        if n == 0:
                            reused_files.append(f)
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
                written += self._put_back(reused_files)
            finally:
                for staged in reused:
                    self.blobs.discard(staged)
                store_owner.end_lease(self, lease)
        finally:
            if own:
                pkg.close()
        result = PublishResult(name, str(ver), manifest.digest, created, written, len(pkg.files), manifest)
        if manifest.base.fingerprint is None:
            _warn_unpinned(name, str(ver), manifest.base.name)
        call_hook("after_publish", manifest=manifest, created=created)
        return result

    def import_version(self, manifest: Manifest, sources: Mapping[str, Any], *,
                       origin: str | None = None, requirements: Mapping[str, Any] | None = None) -> PublishResult:
        """Record a version whose manifest was made elsewhere (a Hub pull), keeping the manifest
        and its digest as they are. Every file is verified against the manifest first; a file
        that differs is named in the error and nothing is recorded. A source is a path, or a
        copy staged in this registry's store (a :class:`~adapterhub_sdk.blobs.StagedBlob`,
        hashed as it was written: a download received there), which is stored by a rename."""
        from ..adapter_files import sha256_file
        from ..blobs import StagedBlob
        from ..plugins import call_hook
        from ..signing.bundle import is_signature_file

        validate_name(manifest.name)
        Version.parse(manifest.version)
        reserved = [f.path for f in manifest.files if is_signature_file(f.path) or f.path == MANIFEST_FILE]
        if reserved:  # never listed by a publish: a forged signature or manifest in every directory pulled
            what = "its manifest" if reserved[0] == MANIFEST_FILE else "a signature"
            raise IntegrityError(f"{manifest.name}@{manifest.version}: its manifest lists {reserved[0]!r} as an "
                                 f"adapter file, but a pull writes that file itself ({what}); nothing was "
                                 "recorded",
                                 hint="publish the adapter's own files only; signatures travel beside a version")
        if self._read_only():
            raise read_only_error(f"recording {manifest.name}@{manifest.version}")
        bad = []
        for f in manifest.files:
            src = sources.get(f.path)
            if isinstance(src, StagedBlob):
                if (src.sha256, src.size) != (f.sha256, f.size) or not src.path.is_file():
                    bad.append(f.path)
                continue
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
            raise conflict(self._stored_manifest(manifest.name, manifest.version), manifest, here=" here")
        written = 0
        created = False
        reused: list[StagedBlob] = []  # staged copies of blobs already stored: kept until the commit
        store_owner.claim_store(self)
        lease = store_owner.take_lease(self, [f.sha256 for f in manifest.files])  # gc keeps them until it ends
        try:
            for f in manifest.files:  # repairs a corrupt or missing blob of an existing version too
                src = sources[f.path]
                if not isinstance(src, StagedBlob):
                    written += self.blobs.put_file(src, f.sha256)
                elif self.blobs.holds(src):  # type: ignore[attr-defined]  # a staging store made it
                    reused.append(src)
                else:
                    written += self.blobs.put_staged(src)  # type: ignore[attr-defined]
            if existing is None:
                created = self._commit_version(manifest, sum(f.size for f in manifest.files), source=origin,
                                               requirements=requirements)
                # a gc that ran before the commit may have taken one away
                written += self._put_back([PackedFile(f.path, Path(sources[f.path]), f.sha256, f.size)
                                           for f in manifest.files if not isinstance(sources[f.path], StagedBlob)])
            for staged in reused:
                if self.blobs.has(staged.sha256):
                    self.blobs.discard(staged)  # type: ignore[attr-defined]
                else:
                    written += self.blobs.put_staged(staged)  # type: ignore[attr-defined]
            reused = []
        finally:
            for staged in reused:
                self.blobs.discard(staged)  # type: ignore[attr-defined]
            store_owner.end_lease(self, lease)
        call_hook("after_publish", manifest=manifest, created=created)
        return PublishResult(manifest.name, manifest.version, manifest.digest, created, written,
                             len(manifest.files), manifest)

    def _put_back(self, files: Iterable[PackedFile]) -> int:
        """After a commit: write again any of ``files`` that is not stored (a gc that read the
        catalog before the commit took it away; the version now referencing it, no later gc
        will). One existence check each (a HEAD on S3, a stat here); the bytes written."""
        written = 0
        for f in files:
            if f.size == 0 or self.blobs.size(f.sha256) != f.size:  # size() is 0 when absent
                written += self.blobs.put_file(f.source, f.sha256)
        return written

    def origins(self, name: str) -> set[str | None]:
        """Where the versions of ``name`` came from: None for versions published here, a
        Hub repo (``hf://ORG/REPO``, commit dropped) for pulled ones. Empty if no such adapter."""
        with self._sql() as q:
            return catalog.origins(q, name)

    def _canonical_name(self, name: str) -> str:
        with self._sql() as q:
            return catalog.canonical_name(q, name)

    def _stored_manifest(self, name: str, version: str) -> Manifest | None:
        with self._sql() as q:
            return catalog.stored_manifest(q, name, version)

    def _existing_digest(self, name: str, version: str) -> str | None:
        """The digest of ``name@version`` if it exists. VersionConflictError if another
        spelling of the same version exists (they differ only in build metadata)."""
        with self._sql() as q:
            return catalog.existing_digest(q, name, version)

    def _commit_version(self, manifest: Manifest, size: int, *, source: str | None = None,
                        requirements: Mapping[str, Any] | None = None) -> bool:
        """``requirements``: what the catalog checks the version by, where not its manifest's
        (an import whose claim is looser than its files: see methods.base.tightened)."""
        reqs = manifest.requirements if requirements is None else requirements
        for attempt in range(5):
            try:
                with self._sql(write=True) as q:
                    return catalog.insert_version(q, manifest, size, source=source, requirements=reqs)
            except catalog.RowConflict:  # another writer created the adapter or the version meanwhile
                if attempt == 4:
                    raise
        return True

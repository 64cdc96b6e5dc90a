"""Bases and what identifies them: fingerprints, where a base's weights were seen (paths,
weight-file digests, Hub snapshots), and turning what a caller passes as a base into one."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .. import db as dbmod
from ..errors import NotFoundError
from ..fingerprint import BaseFingerprint, fingerprint
from ..remotes import remote_for
from ..resolving import HEXPREFIX
from ..tables import utcnow
from ._core import T_ADAPTERS, T_BASES, T_REQS, T_SOURCES, T_VERSIONS, RegistryCore

_HEXPREFIX = HEXPREFIX


def _base_from_row(row: Any) -> BaseFingerprint:
    body = json.loads(row.shapes)
    return BaseFingerprint(row.fingerprint, row.arch_signature, row.n_tensors, row.n_params,
                           body.get("dtypes", {}), {k: tuple(v) for k, v in body["shapes"].items()},
                           body.get("tied", {}), None, row.total_bytes,
                           json.loads(row.config) if row.config else None)



class BasesPart(RegistryCore):
    """register_base, find_base, get_base, record_base_source and base lookups."""

    def register_base(self, base: Any, *, source: str | None = None, file_digests: bool = False) -> BaseFingerprint:
        """Fingerprint ``base`` (path, nn.Module, state dict) if needed and record it with
        where it was seen: its path; with ``file_digests``, the sha256 of its weight files
        (verified against the Hub cache's blob names in a cache snapshot) and the Hub repo
        and commit of a cache snapshot, which let others identify the base from the Hub's
        metadata alone."""
        from ..sources import files_key, hub_cache_origin, weight_file_digests

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
        if known and fresh or dbmod.is_read_only(self.engine):  # read-only: nothing cached
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
                if not known:
                    self._yank_unborne_claims(fp)
                return
            except SAIntegrityError:
                if attempt == 2:
                    raise

    def _yank_unborne_claims(self, fp: BaseFingerprint) -> None:
        """A base recorded for the first time: versions imported from a remote (a Hub or OCI
        pull) while it was unknown here carry its fingerprint as their manifest's claim, which
        nothing could check then. Those whose files' requirements do not fit it are yanked
        (resolve and ranges no longer offer them; load and attach refuse them anyway), with a
        warning naming them: the claimed pin is not borne out by the files."""
        import warnings

        from ..adapter_files import AdapterContentWarning
        from ..methods.base import check_requirements

        with self._write() as conn:
            rows = conn.execute(
                select(T_VERSIONS.c.id, T_VERSIONS.c.version, T_VERSIONS.c.source, T_ADAPTERS.c.name, T_REQS.c.body)
                .join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)
                .join(T_REQS, T_REQS.c.digest == T_VERSIONS.c.req_digest)
                .where(T_VERSIONS.c.base_fingerprint == fp.digest, T_VERSIONS.c.source.isnot(None),
                       T_VERSIONS.c.yanked.is_(False))).all()
            for row in rows:
                reasons = check_requirements(json.loads(row.body), fp)
                if not reasons:
                    continue
                conn.execute(update(T_VERSIONS).where(T_VERSIONS.c.id == row.id).values(yanked=True))
                warnings.warn(f"{row.name}@{row.version} (pulled from {row.source}) claims base {fp.short}, but its "
                              f"files do not fit it ({reasons[0]}): yanked, so that resolve does not offer it",
                              AdapterContentWarning, stacklevel=4)

    def find_base(self, *, files: Mapping[str, str] | None = None, hub: tuple[str, str] | None = None
                  ) -> BaseFingerprint | None:
        """A recorded base by the sha256 of its weight files, or by Hub (repo, commit)."""
        from ..sources import files_key

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

    def _as_base(self, base: Any) -> BaseFingerprint | str:
        """A BaseFingerprint, or a bare fingerprint string the registry does not know."""
        if isinstance(base, BaseFingerprint):
            return base
        remote = remote_for(base)  # a base named by a remote registry's URL (hf://ORG/MODEL@REV)
        if remote is not None:
            return remote.identify_base(self, base)
        if isinstance(base, str) and not os.path.exists(base) and _HEXPREFIX.fullmatch(base.lower()):
            try:
                return self.get_base(base)
            except NotFoundError:
                if len(base) == 64:
                    return base.lower()
                raise
        return self.register_base(base)

    @staticmethod
    def _seen_as(conn: Any, fp: str) -> tuple[str, ...]:
        """Where the weights of fingerprint ``fp`` were seen: local paths and Hub snapshots."""
        rows = conn.execute(select(T_SOURCES.c.kind, T_SOURCES.c.locator, T_SOURCES.c.revision)
                            .where(T_SOURCES.c.fingerprint == fp, T_SOURCES.c.kind.in_(("path", "hub")))
                            .order_by(T_SOURCES.c.seen_at.desc(), T_SOURCES.c.id.desc()).limit(20)).all()
        return tuple(f"hf://{r.locator}@{r.revision}" if r.kind == "hub" else r.locator for r in rows)

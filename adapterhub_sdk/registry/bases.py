"""Bases and what identifies them: fingerprints, where a base's weights were seen (paths,
weight-file digests, Hub snapshots), and turning what a caller passes as a base into one."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import NotFoundError
from ..fingerprint import BaseFingerprint, fingerprint
from ..remotes import remote_for
from ..resolving import _BASE_COLS, HEXPREFIX, base_from_row
from ..sqlrun import RowConflict
from ._core import RegistryCore

_HEXPREFIX = HEXPREFIX


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
        where = "kind = ? AND locator = ? AND revision = ?"
        with self._sql() as q:
            known = bool(q("SELECT fingerprint FROM bases WHERE fingerprint = ?", (fp.digest,)))
            fresh = True
            for kind, loc, rev, _ in sources:
                row = q(f"SELECT fingerprint FROM base_sources WHERE {where}", (kind, loc, rev))
                fresh = fresh and bool(row) and row[0][0] == fp.digest
        if known and fresh or self._read_only():  # read-only: nothing cached
            return
        for attempt in range(3):
            try:
                with self._sql(write=True) as q:
                    now = q.now()
                    if not q("SELECT fingerprint FROM bases WHERE fingerprint = ?", (fp.digest,)):
                        q.run("INSERT INTO bases (fingerprint, arch_signature, n_tensors, n_params, total_bytes, shapes, "
                              "config, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (fp.digest, fp.arch_signature, fp.n_tensors, fp.n_params, fp.total_bytes, body,
                               json.dumps(fp.config, sort_keys=True) if fp.config else None, now))
                    for kind, loc, rev, details in sources:
                        if q(f"SELECT id FROM base_sources WHERE {where}", (kind, loc, rev)):
                            q.run(f"UPDATE base_sources SET fingerprint = ?, details = ?, seen_at = ? WHERE {where}",
                                  (fp.digest, details, now, kind, loc, rev))
                        else:
                            q.run("INSERT INTO base_sources (fingerprint, kind, locator, revision, details, seen_at) "
                                  "VALUES (?, ?, ?, ?, ?, ?)", (fp.digest, kind, loc, rev, details, now))
                if not known:
                    self._yank_unborne_claims(fp)
                return
            except RowConflict:
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

        with self._sql(write=True) as q:
            rows = q("SELECT v.id, v.version, v.source, a.name, r.body FROM versions v "
                     "JOIN adapters a ON a.id = v.adapter_id JOIN requirement_sets r ON r.digest = v.req_digest "
                     "WHERE v.base_fingerprint = ? AND v.source IS NOT NULL AND v.yanked = ?",
                     (fp.digest, q.flag(False)))
            for vid, version, source, name, req_body in rows:
                reasons = check_requirements(json.loads(req_body), fp)
                if not reasons:
                    continue
                q.run("UPDATE versions SET yanked = ? WHERE id = ?", (q.flag(True), vid))
                warnings.warn(f"{name}@{version} (pulled from {source}) claims base {fp.short}, but its "
                              f"files do not fit it ({reasons[0]}): yanked, so that resolve does not offer it",
                              AdapterContentWarning, stacklevel=4)

    def find_base(self, *, files: Mapping[str, str] | None = None, hub: tuple[str, str] | None = None
                  ) -> BaseFingerprint | None:
        """A recorded base by the sha256 of its weight files, or by Hub (repo, commit)."""
        from ..sources import files_key

        conds: list[str] = []
        params: list[Any] = []
        if files:
            conds.append("(s.kind = 'files' AND s.locator = ?)")
            params.append(files_key(files))
        if hub:
            conds.append("(s.kind = 'hub' AND s.locator = ? AND s.revision = ?)")
            params += [hub[0], hub[1]]
        if not conds:
            return None
        cols = ", ".join(f"b.{c.strip()}" for c in _BASE_COLS.split(","))
        with self._sql() as q:
            rows = q(f"SELECT {cols} FROM bases b JOIN base_sources s ON s.fingerprint = b.fingerprint "
                     f"WHERE {' OR '.join(conds)} LIMIT 1", params)
        return base_from_row(rows[0]) if rows else None

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

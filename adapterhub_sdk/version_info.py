"""What a listing returns for one version (:class:`VersionInfo`) and what recording one returns
(:class:`PublishResult`), apart from the registry so
that a read-only command can build it without loading the database layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .manifest import Manifest

__all__ = ["PublishResult", "VersionInfo"]


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


def _iso(ts: Any) -> str:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc).isoformat(timespec="seconds")
    return str(ts)


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

"""What the registry returns: versions, matches, publish results and maintenance reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..resolving import VERDICTS, Match  # noqa: F401 - re-exported (defined apart for the read path)
from ..signing.checks import MANIFEST_FILE  # noqa: F401, E402 - defined apart for the bare-sqlite3 path
from ..version_info import PublishResult, VersionInfo, _iso  # noqa: F401 - re-exported (defined apart for the read path)


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
    kept_leased: int = 0  # leased by a publish in progress
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

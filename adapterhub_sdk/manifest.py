"""The manifest: one canonical JSON document per adapter version.

Canonical form is UTF-8 JSON with sorted keys and no whitespace. The version's digest is
``sha256:`` of the canonical form *without* ``provenance`` (when and with what it was
made), so re-publishing identical content yields the identical digest. Signatures are kept
beside a version (``registry/signatures.py``), never in its manifest: manifests written
before carry ``"signature": null``, outside the digest, which reading ignores.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import AdapterFormatError
from .jsontext import loads_bounded

SCHEMA = "adapterhub.manifest/1"
_SAFE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def check_file_path(path: str) -> str:
    """A manifest file path is a plain file name: no directories, no dot files, ASCII."""
    if not isinstance(path, str) or not _SAFE_PATH.fullmatch(path) or ".." in path:
        raise AdapterFormatError(f"file name {path!r} is not allowed in a package",
                                 hint="package files are plain ASCII names such as adapter_model.safetensors")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class BaseRef:
    """The base an adapter was trained on: its name as PEFT recorded it and, when known,
    the fingerprint of its weights."""

    name: str | None = None
    revision: str | None = None
    fingerprint: str | None = None
    arch_signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "fingerprint": self.fingerprint,
                "arch_signature": self.arch_signature}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    method: dict[str, Any]
    base: BaseRef
    files: tuple[FileEntry, ...]
    requirements: dict[str, list[int | None]]
    tasks: tuple[str, ...] = ()
    description: str | None = None
    license: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The part of the manifest that the digest covers."""
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "method": self.method,
            "base": self.base.to_dict(),
            "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)],
            "requirements": self.requirements,
            "tasks": sorted(set(self.tasks)),
            "description": self.description,
            "license": self.license,
            "metrics": self.metrics,
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.body()
        d["provenance"] = self.provenance
        d["digest"] = self.digest
        return d

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise AdapterFormatError(f"unsupported manifest schema {d.get('schema') if isinstance(d, dict) else d!r}",
                                     hint="upgrade adapterhub_sdk to read this manifest")
        try:
            m = cls(
                name=d["name"], version=d["version"], method=d["method"],
                base=BaseRef(**d["base"]),
                files=tuple(FileEntry(check_file_path(f["path"]), str(f["sha256"]), int(f["size"]))
                            for f in d["files"]),
                requirements=d.get("requirements") or {},
                tasks=tuple(d.get("tasks") or ()), description=d.get("description"),
                license=d.get("license"), metrics=d.get("metrics") or {},
                provenance=d.get("provenance") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFormatError(f"malformed manifest: {exc}") from exc
        seen: set[str] = set()
        for f in m.files:  # two entries for one file (or two a case-insensitive disk would merge)
            if f.path.casefold() in seen:
                raise AdapterFormatError(f"malformed manifest: file {f.path!r} is listed twice")
            seen.add(f.path.casefold())
        if "digest" in d and d["digest"] != m.digest:
            raise AdapterFormatError("manifest digest does not match its content")
        return m

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            d = loads_bounded(raw)
        except ValueError as exc:
            raise AdapterFormatError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(d)

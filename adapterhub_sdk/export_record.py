"""The record an export leaves where it rewrote the adapter's files for its target server
(per-module scales folded into lora_B, ranks padded, layers zero-filled): the version's
manifest no longer lists those files' digests, so the adapter directory carries, instead of
``adapterhub_manifest.json``, ``adapterhub_export.json``: the version's manifest as published
(its pin, its digest) and the digests of the files as exported.

``ah.load_adapter`` and a server's directory attach read it as they read a pulled manifest:
every file it lists is checked against its digest, the manifest is checked against the
registry's record of that version (``check_as_recorded``) and the model against the pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import AdapterFormatError, IntegrityError
from .manifest import FileEntry, Manifest, canonical_json
from .signing.checks import MANIFEST_FILE

EXPORT_RECORD = "adapterhub_export.json"
SCHEMA = "adapterhub.export/v1"


def write_record(adapter_dir: Path, manifest: Manifest, fmt: str) -> None:
    """Replace the pulled manifest in ``adapter_dir`` with the record of its rewritten files."""
    files = []
    for f in manifest.files:
        data = (adapter_dir / f.path).read_bytes()
        files.append({"path": f.path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    doc = {"schema": SCHEMA, "format": fmt, "manifest": manifest.to_dict(), "files": files}
    (adapter_dir / EXPORT_RECORD).write_bytes(canonical_json(doc))
    (adapter_dir / MANIFEST_FILE).unlink(missing_ok=True)


def read_record(raw: bytes, where: str | Path) -> tuple[Manifest, tuple[FileEntry, ...], str]:
    """(the version's manifest, the exported files' entries, the format) from a record's bytes.
    The files must be exactly the manifest's paths (none dropped, none added)."""
    from .jsontext import loads_bounded
    from .manifest import check_file_path

    try:
        doc = loads_bounded(raw)
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"schema {doc.get('schema') if isinstance(doc, dict) else None!r}, not {SCHEMA}")
        manifest = Manifest.from_dict(doc["manifest"])
        files = tuple(FileEntry(check_file_path(f["path"]), str(f["sha256"]), int(f["size"])) for f in doc["files"])
        fmt = str(doc.get("format") or "")
    except (ValueError, KeyError, TypeError, AdapterFormatError) as exc:
        msg = exc.message if isinstance(exc, AdapterFormatError) else str(exc)
        raise IntegrityError(f"{where}: {EXPORT_RECORD} is not a record an export wrote ({msg})",
                             hint="export it again with 'adapterhub export ... --force'") from None
    if sorted(f.path for f in files) != sorted(f.path for f in manifest.files):
        raise IntegrityError(f"{where}: {EXPORT_RECORD} lists other files than {manifest.name}@{manifest.version} has",
                             hint=again_hint(manifest, fmt, where))
    return manifest, files, fmt


def again_hint(manifest: Manifest, fmt: str, where: str | Path) -> str:
    ref = f"{manifest.name}@{manifest.version}"
    return f"export it again: adapterhub export {ref} --format {fmt or 'FORMAT'} --out OUT --force (OUT holds {where})"

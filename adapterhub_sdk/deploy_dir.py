"""Attach a PEFT adapter directory on the server's disk to a :class:`~.deploy.Deployment`,
checked as the registry path checks it, before any tensor touches the model.

The pin of a directory is its ``adapterhub_manifest.json`` when it has one (``pull`` writes
it): every file must match the sha256 the manifest lists, then the base fingerprint decides
(``exact``; ``structural`` when the weights differ but the pinned requirements hold;
refused otherwise). A plain PEFT directory (only ``adapter_config.json`` and the weights) has
no pin: its tensors' shapes are checked against the base by the method plugin and it is
served as ``structural`` and ``pinned: false`` (``strict`` refuses it, as any structural
fit). Under a signed-only policy the directory needs a good ``model.sig`` by a named key
(:meth:`~adapterhub_sdk.registry.Registry.check_signed_directory`). Weights holding NaN or
Inf are refused. The files are read once, into a private copy, and everything is checked
and loaded from that copy."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from .adapter_files import CONFIG, WEIGHTS, refuse_nonfinite
from .deploy import AttachedAdapter, Deployment, StructuralMatchWarning
from .errors import IncompatibleAdapterError, IntegrityError, InvalidNameError, NotFoundError
from .export_record import EXPORT_RECORD, read_record
from .loading import MANIFEST_FILE, _check_directory_signed, check_as_recorded
from .manifest import Manifest, canonical_json

_MANIFEST_LIMIT = 16 * 1024 * 1024  # a manifest lists files and a fingerprint: far smaller


def _files_digest(files: list[Any]) -> str:
    """A digest for an unpinned directory: its files' names and sha256, in name order."""
    body = canonical_json(sorted([f.path, f.sha256] for f in files if f.path != MANIFEST_FILE))
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _same_as_signed(pkg: Any, vs: Any, where: str, manifest_bytes: bytes | None = None) -> None:
    """Under a signing policy: the files packed (what will be loaded) are the ones a trusted
    signature lists, so a directory changed after its signature was checked is refused."""
    from .signing.bundle import Bundle

    for check, (_, text) in zip(vs.checks, vs.bundles, strict=False):
        if check.status != "trusted":
            continue
        signed = Bundle.parse(text).resources()
        read = {f.path: f.sha256 for f in pkg.files}
        if manifest_bytes is not None and MANIFEST_FILE in signed:  # read apart from the package files
            read[MANIFEST_FILE] = hashlib.sha256(manifest_bytes).hexdigest()
        if all(signed.get(path) == digest for path, digest in read.items()):
            return
    raise IntegrityError(f"{where}: its files changed while it was being loaded (they are not the ones its "
                         "signature lists)", hint="load it again once nothing writes to the directory")


def _manifest_bytes(p: Path, name: str = MANIFEST_FILE) -> bytes | None:
    """The ``adapterhub_manifest.json`` a pull wrote in ``p`` (or ``name``: the record an
    export wrote; None: none). Not a package file (``pack`` leaves it out), so it is read here,
    once: a regular file, not a link."""
    from .adapter_files import open_regular

    f = p / name
    if not f.is_symlink() and not f.exists():
        return None
    what = "manifest pull" if name == MANIFEST_FILE else "record an export"
    if f.is_symlink():  # a pin is never read through a link (nor silently dropped: the directory says it has one)
        raise IntegrityError(f"{p}: {name} is a link, not a {what} wrote",
                             hint="pull it again: adapterhub pull NAME@VERSION --out DIR --force")
    with open_regular(f, what=name) as fh:
        raw = fh.read(_MANIFEST_LIMIT + 1)
    if len(raw) > _MANIFEST_LIMIT:
        raise IntegrityError(f"{p}: {name} is not a {what} wrote",
                             hint="pull it again: adapterhub pull NAME@VERSION --out DIR --force")
    return raw


def _pinned(dep: Deployment, manifest: Manifest, files: Any, by_path: dict[str, Any],
            where: str, exported: bool = False) -> tuple[str, str, str, dict[str, Any]]:
    """(ref, digest, verdict, method) of a directory carrying a manifest (or, ``exported``, an
    export's record of its rewritten ``files``); its files verified."""
    ref = f"{manifest.name}@{manifest.version}"
    check_as_recorded(manifest, dep.registry, where)
    for f in files:
        if f.path == MANIFEST_FILE:  # listed by an older publish; every pull writes its own there
            continue
        got = by_path.get(f.path)
        if got is None:
            raise IntegrityError(f"{where}: {f.path} of {ref} is missing",
                                 hint=f"pull it again: adapterhub pull {ref} --out DIR --force")
        if got.sha256 != f.sha256:
            raise IntegrityError(f"{where}: {f.path} does not match the sha256 "
                                 + ("its export record lists for it (changed since it was exported)" if exported else
                                    f"{ref} lists for it (changed since it was pulled)"),
                                 hint=f"{'export' if exported else 'pull'} it again: adapterhub "
                                      f"{'export' if exported else 'pull'} {ref} --out DIR --force")
    if not manifest.base.fingerprint:  # published unpinned: only the shapes can be checked
        return ref, manifest.digest, "", {**manifest.method, "requirements": manifest.requirements}
    verdict, reasons = dep._verdict(manifest)
    if verdict == "incompatible":
        raise IncompatibleAdapterError(f"{ref} ({where}) does not fit this base: {reasons[0]}", reasons=reasons)
    return ref, manifest.digest, verdict, {**manifest.method, "requirements": manifest.requirements}


def attach_directory(dep: Deployment, path: str | Path, *, name: str) -> AttachedAdapter:
    """Check the adapter directory ``path`` against ``dep``'s base and serve it as ``name``
    (a swap when ``name`` is attached). Raises IncompatibleAdapterError (with the reasons),
    IntegrityError, NonFiniteError, SignaturePolicyError or AdapterFormatError; warns
    StructuralMatchWarning for a structural or unpinned fit."""
    from safetensors.torch import load as load_safetensors

    from .package import pack

    if not name or name != name.strip() or name == "base":
        raise InvalidNameError(f"adapter name {name!r} is not usable here",
                               hint="pick a non-empty name without surrounding spaces, other than 'base'")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NotFoundError(f"{path}: no such adapter directory on the server",
                            hint="pass the directory PeftModel.save_pretrained or 'adapterhub pull' wrote, or a "
                                 "registry spec")
    where = str(p)
    signatures = None  # a signed-only policy: a trusted model.sig over exactly the files present
    if dep.registry is not None:
        signatures = dep.registry.check_signed_directory(p, dep.require_signed)
    else:
        _check_directory_signed(p, None, dep.require_signed)
    with pack(p) as pkg:  # regular files only, copied aside: what is checked is what is loaded
        manifest_bytes = _manifest_bytes(p)
        record = _manifest_bytes(p, EXPORT_RECORD) if manifest_bytes is None else None
        if signatures is not None:
            _same_as_signed(pkg, signatures, where, manifest_bytes)
        by_path = {f.path: f for f in pkg.files}
        manifest: Manifest | None = None
        if manifest_bytes is not None:
            manifest = Manifest.from_json(manifest_bytes)
            files = manifest.files
        elif record is not None:
            manifest, files, _ = read_record(record, where)
        pinned = manifest is not None
        if manifest is not None:
            ref, digest, verdict, method = _pinned(dep, manifest, files, by_path, where, exported=record is not None)
            pinned = bool(verdict)
        else:
            ref, digest, verdict = where, _files_digest(pkg.files), ""
            method = {"type": pkg.method.name, "variant": pkg.variant, "peft_type": pkg.config.get("peft_type"),
                      "config": pkg.config, "summary": pkg.summary, "requirements": pkg.requirements}
        if not verdict:  # unpinned: the shapes must fit this base
            reasons = pkg.check_base(dep.fingerprint)
            if reasons:
                raise IncompatibleAdapterError(f"{where} does not fit this base: {reasons[0]}", reasons=reasons)
            verdict = "structural"
        if verdict == "structural":
            why = ("it carries no base fingerprint (no adapterhub_manifest.json), so only its shapes were checked"
                   if not pinned else "base weights differ from the ones it was trained on")
            if dep.strict:
                raise IncompatibleAdapterError(f"{ref}: {why} (strict mode)", reasons=[why],
                                               hint="serve it without --strict to accept a structural fit, or "
                                                    "publish it pinned to this base")
            warnings.warn(f"{ref}: {why}; it fits structurally", StructuralMatchWarning, stacklevel=2)
        limits = dep.runtime.check_method(method)
        if limits:
            raise IncompatibleAdapterError(f"{ref}: {limits[0]}", reasons=limits,
                                           hint="load other methods with ah.load_adapter (PEFT) outside a Deployment")
        config = pkg.config
        tensors = load_safetensors(by_path[WEIGHTS].source.read_bytes())
        refuse_nonfinite(ref, tensors)
        prepared = dep._prepare(config, tensors)
        size = sum(f.size for f in pkg.files if f.path in (CONFIG, WEIGHTS))
    return dep._install(name, ref, digest, verdict, prepared, size, pinned=pinned, path=str(p.resolve()))


__all__ = ["attach_directory"]

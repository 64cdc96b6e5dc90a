"""Versions leaving the registry: pull into a directory PEFT loads, push to a remote."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import catalog
from ..errors import IntegrityError, NotFoundError
from ..manifest import Manifest
from ..names import parse_ref
from ..package import AdapterPackage, write_package_dir
from ..remotes import get_remote, remote_for
from ..signing.checks import MANIFEST_FILE, refuse_unless_signed
from ._core import RegistryCore


def takes_require_signed(remote: Any) -> bool:
    """Whether a remote's ``pull`` checks signatures and the policy itself, before recording
    (the Hub's does); for one that does not, the version is recorded, then checked."""
    import inspect

    try:
        return "require_signed" in inspect.signature(remote.pull).parameters
    except (TypeError, ValueError):
        return False


def _warn_nonfinite(ref: str, path: Path) -> None:
    """A pulled version whose weights hold NaN or Inf is written as it is (to debug it), with
    a warning naming the tensor; a deployment refuses to attach it."""
    from ..adapter_files import NonFiniteWarning, nonfinite_message, nonfinite_tensors

    weights = path / "adapter_model.safetensors"
    found = nonfinite_tensors(weights) if weights.is_file() else []
    if found:
        warnings.warn(f"{ref}: " + nonfinite_message(weights.name, found)
                      + "; written as published, but a deployment refuses to attach it", NonFiniteWarning,
                      stacklevel=3)



class TransferPart(RegistryCore):
    """pull and push (no SQLAlchemy here: :mod:`adapterhub_sdk.sqlite_registry` pulls and
pushes through this part too)."""

    def pack_files(self, files: Mapping[str, str | os.PathLike[str]], *,
                   root: str | os.PathLike[str] | None = None, select: bool = False,
                   stage: Callable[[Any], Any] | None = None) -> AdapterPackage:
        """Pack named files (a remote's snapshot: package name -> path of a regular file) as
        publish packs a directory, the method found by the installed plugins. Remotes pack
        through the registry they are given, so the built-in ones import no packer (and no
        plugin lookup) of their own. ``stage``: as :func:`~adapterhub_sdk.package.pack_files`'s
        (a remote whose files are private copies already passes one that copies nothing)."""
        from ..package import pack_files

        return pack_files(files, root=root, select=select, stage=stage)

    def push(self, ref: str, *, to: str, private: bool | None = None) -> Any:
        """Push ``name@version`` to a remote registry's URL ``to``, e.g. ``hf://ORG/REPO`` (one
        commit stating its parent, tagged with the version). Returns the remote's result (a
        PushResult for the Hub)."""
        return get_remote(to).push(self, ref, to, private=private)

    def pull(self, ref: str, dest: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
             base: Any = None, name: str | None = None, require_signed: str | Iterable[str] | None = None,
             fresh: Collection[str] = ()) -> Path | None:
        """Write ``name@spec`` to ``dest`` as a directory PEFT loads. Every file is verified
        against its digest first; ``dest`` is written atomically (complete or untouched).
        A remote registry's URL (``hf://ORG/REPO@SPEC`` pulls from the Hub) is pulled by its
        remote: verified, recorded here (so it resolves offline afterwards) and, when
        ``dest`` is given, written there; ``base`` pins a repo PEFT pushed without a
        manifest. Returns the written directory (None for a remote pull without ``dest``: the
        version is then only recorded). ``name``: accept the adapter name a Hub repo's
        manifest gives, when it differs from the repo's own and that name already holds
        versions from elsewhere here. The directory carries the version's signatures
        (``model.sig``, ``model.<signer>.sig``: OpenSSF model signing bundles); a signing
        policy in force (the registry's, ADAPTERHUB_REQUIRE_SIGNED, ``require_signed``: key
        names) refuses a version not signed by one of the keys it names. ``fresh``: digests of
        blobs this process has just stored from bytes it verified as they arrived (a remote's
        pull into this store), copied by the kernel without hashing them again."""
        from ..plugins import call_hook

        remote = remote_for(ref)
        if remote is not None:
            if require_signed is None or takes_require_signed(remote):  # checked before it is recorded
                remote.pull(self, ref, dest, base=base, overwrite=overwrite, name=name,
                            **({"require_signed": require_signed} if require_signed is not None else {}))
                return Path(dest) if dest is not None else None
            info = remote.pull(self, ref, None, base=base, overwrite=overwrite, name=name)  # recorded, then checked
            got = f"{info.name}@{info.version}"
            if dest is None:
                self.check_signed(got, require_signed)  # type: ignore[attr-defined]  # SignaturesPart, on the Registry
                return None
            return self.pull(got, dest, overwrite=overwrite, require_signed=require_signed)
        if dest is None:
            raise TypeError("pull needs a destination directory")

        r = parse_ref(ref)
        with self._sql() as q:
            row = catalog.select_version(q, r.name, r.spec)
            files = catalog.version_files(q, row.id)
            sigs = catalog.version_signatures(q, row, f"{r.name}@{row.version}")
            policy = catalog.required_signers(q, require_signed)
        for names in policy:
            refuse_unless_signed(sigs.ref, sigs, names)
        manifest = Manifest.from_json(row.manifest)
        if manifest.digest != row.digest:
            raise IntegrityError(f"manifest of {r.name}@{row.version} does not match its digest")
        listed = {(f.path, f.sha256, f.size) for f in manifest.files}
        if listed != files:
            raise IntegrityError(f"file records of {r.name}@{row.version} disagree with its manifest")

        if manifest.files and all(f.size and not self.blobs.size(f.sha256) for f in manifest.files):
            raise NotFoundError(
                f"none of the {len(manifest.files)} files of {r.name}@{row.version} is in the blob store {self.blobs}: "
                "the registry's blobs are probably elsewhere",
                hint="open the registry with the blob store its versions were published to, blobs=DIR, or set "
                     "ADAPTERHUB_BLOBS; if this is that store, 'adapterhub verify' lists what is missing and "
                     "publishing the same files again under the same name@version restores them")

        copy_fresh = getattr(self.blobs, "copy_fresh", None)

        def writer(sha: str, size: int):
            if sha in fresh and callable(copy_fresh):
                return lambda out: copy_fresh(sha, out, size)
            return lambda out: self.blobs.copy_verified(sha, out)

        payload = [(f.path, writer(f.sha256, f.size)) for f in manifest.files]
        payload.append((MANIFEST_FILE, lambda out: out.write(manifest.to_json())))
        payload += [(f, lambda out, t=text: out.write(t.encode("utf-8"))) for f, text in sigs.bundles]
        path = write_package_dir(Path(dest), payload, overwrite=overwrite)
        _warn_nonfinite(f"{r.name}@{row.version}", path)
        call_hook("after_pull", manifest=manifest, path=path)
        return path

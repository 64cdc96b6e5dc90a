"""Checking a version's signatures against the trusted keys, and the signed-only policy's
refusal: no database and no SQLAlchemy here (the registry reads the rows; so does the CLI's
bare-sqlite3 path, :mod:`adapterhub_sdk.catalog`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SignaturePolicyError, SigningError
from ..manifest import Manifest
from . import bundle as sigfmt
from .keys import check_key_name, load_public_key

#: the manifest's file name in a pulled directory (registry.results re-exports it)
MANIFEST_FILE = "adapterhub_manifest.json"
POLICY_SETTING = "require_signed"
POLICY_ENV = "ADAPTERHUB_REQUIRE_SIGNED"


@dataclass
class SignatureCheck:
    """One signature of a version, checked: who, with which key, and what was found."""

    signer: str
    key_id: str
    status: str
    file: str
    reason: str | None = None
    key_name: str | None = None  # the trusted key's name in this registry, when known

    def to_dict(self) -> dict[str, Any]:
        return {"signer": self.signer, "key": self.key_name, "key_id": self.key_id, "status": self.status,
                "file": self.file, "reason": self.reason}


@dataclass
class VersionSignatures:
    """Every signature of one version and what they add up to."""

    ref: str
    digest: str
    checks: list[SignatureCheck] = field(default_factory=list)
    bundles: list[tuple[str, str]] = field(default_factory=list)  # (file name, bundle JSON) as pulled

    @property
    def status(self) -> str:
        found = {c.status for c in self.checks}
        if not found:
            return "unsigned"
        for bad in ("tampered", "bad_signature"):
            if bad in found:
                return bad
        return "signed" if "trusted" in found else "revoked" if "revoked" in found else "untrusted"

    @property
    def signed_by(self) -> list[str]:
        return [c.key_name for c in self.checks if c.status == "trusted" and c.key_name]

    @property
    def ok(self) -> bool:
        return self.status not in ("tampered", "bad_signature")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.ref, "digest": self.digest, "status": self.status, "signed_by": self.signed_by,
                "signatures": [c.to_dict() for c in self.checks]}

    def describe(self) -> str:
        """One phrase: 'signed by alice, bob', 'unsigned', 'signed by an untrusted key (carol)', ..."""
        others = [c for c in self.checks if c.status != "trusted"]
        parts = [f"signed by {', '.join(self.signed_by)}"] if self.signed_by else []
        for c in others:
            what = {"untrusted": "signed by a key this registry does not trust",
                    "revoked": "signed by a revoked key", "bad_signature": "bad signature",
                    "tampered": "tampered"}[c.status]
            why = c.reason if c.status in ("bad_signature", "tampered") else ""  # the others' say it again
            parts.append(f"{what} ({c.signer}{': ' + why if why else ''})")
        return "; ".join(dict.fromkeys(parts)) or "unsigned"  # two bundles by one key: said once


def signed_resources(manifest: Manifest) -> dict[str, str]:
    """The files a pull writes, as a signature lists them: each file and the manifest."""
    out = {f.path: f.sha256 for f in manifest.files}
    out[MANIFEST_FILE] = hashlib.sha256(manifest.to_json()).hexdigest()
    return out


def policy_names(text: str | Iterable[str] | None) -> list[str]:
    """Key names from ``alice,bob`` (or a list of such), validated."""
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    return [check_key_name(n.strip()) for item in items for n in item.split(",") if n.strip()]


def requirements_in_force(policy: str | None, require_signed: str | Iterable[str] | None = None) -> list[list[str]]:
    """Each requirement in force: the registry's ``policy`` setting, ADAPTERHUB_REQUIRE_SIGNED
    and ``require_signed`` (an option), as the key names that satisfy each."""
    reqs = [policy_names(policy), policy_names(os.environ.get(POLICY_ENV)), policy_names(require_signed)]
    return [r for r in reqs if r]


def check_bundle(text: str, keys: dict[str, Any], expected: dict[str, str] | None, *, signer: str,
                 file: str) -> SignatureCheck:
    """One bundle against the trusted keys (key id -> row) and the files it must cover."""
    try:
        b = sigfmt.Bundle.parse(text)
    except sigfmt.BadBundle as exc:
        return SignatureCheck(signer, "", "bad_signature", file, str(exc))
    k = keys.get(b.key_hint)
    if k is None:
        return SignatureCheck(signer, b.key_hint, "untrusted", file, "its key is not trusted in this registry")
    try:
        resources = b.verify(load_public_key(k.public_key.encode("ascii")))
    except (sigfmt.BadBundle, SigningError) as exc:
        return SignatureCheck(signer, b.key_hint, "bad_signature", file, str(exc), key_name=k.name)
    if expected is None or resources != expected:
        diff = sigfmt.differences(resources, expected or {})
        return SignatureCheck(signer, b.key_hint, "tampered", file,
                              "signed files differ: " + (", ".join(diff[:5]) or "manifest unreadable"),
                              key_name=k.name)
    if k.revoked_at is not None:
        return SignatureCheck(signer, b.key_hint, "revoked", file, f"key {k.name!r} was revoked", key_name=k.name)
    return SignatureCheck(signer, b.key_hint, "trusted", file, key_name=k.name)


def checked(row: Any, ref: str, sigs: Sequence[Any], keys: dict[str, Any]) -> VersionSignatures:
    """The signature rows ``sigs`` (signer, bundle) of version row ``row`` (digest, manifest),
    each checked against ``keys``."""
    out = VersionSignatures(ref, row.digest)
    try:
        expected: dict[str, str] | None = signed_resources(Manifest.from_json(row.manifest))
    except Exception:  # a damaged manifest: verify reports it; every signature is then tampered
        expected = None
    for i, s in enumerate(sigs):
        file = sigfmt.signature_file(s.signer, first=i == 0)
        out.bundles.append((file, s.bundle))
        out.checks.append(check_bundle(s.bundle, keys, expected, signer=s.signer, file=file))
    return out


def refuse_unless_signed(what: str, vs: VersionSignatures, names: list[str]) -> None:
    """Raise :class:`SignaturePolicyError` unless ``vs`` holds a good signature by one of
    ``names`` (and no bad or tampered one)."""
    wanted = " or ".join(names)
    if not vs.ok:
        raise SignaturePolicyError(f"{what} is refused: {vs.describe()}",
                                   hint="pull it again from its publisher; 'adapterhub verify' shows every signature")
    if not set(vs.signed_by) & set(names):
        raise SignaturePolicyError(f"{what} is refused: the signing policy requires a signature by {wanted}, "
                                   f"and it is {vs.describe()}")

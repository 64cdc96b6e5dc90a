"""Signatures kept beside versions, the trusted signers' public keys, and the registry-wide
signing policy. A signature never changes a version's digest and never enters its manifest:
it is an OpenSSF model signing bundle (:mod:`adapterhub_sdk.signing.bundle`) over exactly
the files a pull writes: the version's files as published plus its manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from .. import tables
from ..errors import NotFoundError, SignaturePolicyError, SigningError
from ..manifest import Manifest
from ..names import parse_ref
from ..signing import bundle as sigfmt
from ..signing.keys import PrivateKey, check_key_name, key_id, load_private_key, load_public_key
from ._core import T_ADAPTERS, T_VERSIONS, RegistryCore
from .results import MANIFEST_FILE

T_KEYS = tables.signing_keys
T_SIGNATURES = tables.signatures
T_SETTINGS = tables.settings

#: a signature's status: only ``trusted`` counts for a policy; ``bad_signature`` and
#: ``tampered`` are problems whatever the policy
SIGNATURE_STATUSES = ("trusted", "untrusted", "revoked", "bad_signature", "tampered")
#: a version's status, worst first after the good one
VERSION_STATUSES = ("signed", "unsigned", "untrusted", "revoked", "bad_signature", "tampered")
POLICY_SETTING = "require_signed"
POLICY_ENV = "ADAPTERHUB_REQUIRE_SIGNED"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_id: str
    revoked: bool
    created_at: Any = None
    public_key: str = ""
    local: bool = False  # this user holds the private key (in the key directory)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key_id": self.key_id, "status": "revoked" if self.revoked else "trusted",
                "created_at": str(self.created_at) if self.created_at else None, "private_key_here": self.local}


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
            parts.append(f"{what} ({c.signer}{': ' + c.reason if c.reason else ''})")
        return "; ".join(parts) or "unsigned"


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


class SignaturesPart(RegistryCore):
    """Trusted keys, signing, checking signatures, and the signed-only policy."""

    # keys ---------------------------------------------------------------------------------

    def trust_key(self, name: str, public_key: bytes) -> KeyInfo:
        """Trust the PEM public key ``public_key`` as signer ``name``, for every user of this
        registry. Trusting the same key under the same name again changes nothing."""
        check_key_name(name)
        load_public_key(public_key, source=f"the public key for {name!r}")
        pem = public_key.strip() + b"\n"
        kid = key_id(pem)
        with self._write() as conn:
            by_name = conn.execute(select(T_KEYS).where(T_KEYS.c.name == name)).first()
            by_id = conn.execute(select(T_KEYS).where(T_KEYS.c.key_id == kid)).first()
            if by_name is not None and by_name.key_id != kid:
                raise SigningError(f"a different key is already trusted as {name!r}",
                                   hint="choose another name, or revoke the old key first")
            if by_id is not None and by_id.name != name:
                raise SigningError(f"this key is already trusted as {by_id.name!r}")
            if by_name is None:
                conn.execute(insert(T_KEYS).values(name=name, key_id=kid, public_key=pem.decode("ascii")))
        return self.key(name)

    def key(self, name: str) -> KeyInfo:
        with self._read() as conn:
            row = conn.execute(select(T_KEYS).where(T_KEYS.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"no key named {name!r} is trusted in this registry",
                                hint="'adapterhub keys list' shows them; 'adapterhub keys trust PUB.pem --name NAME'")
        return self._key_info(row)

    @staticmethod
    def _key_info(row: Any) -> KeyInfo:
        from ..signing.keys import key_dir

        return KeyInfo(row.name, row.key_id, row.revoked_at is not None, row.created_at, row.public_key,
                       local=(key_dir() / f"{row.name}.pem").is_file())

    def keys(self) -> list[KeyInfo]:
        """The signers' keys this registry knows, trusted and revoked, by name."""
        with self._read() as conn:
            rows = conn.execute(select(T_KEYS).order_by(T_KEYS.c.name)).all()
        return [self._key_info(r) for r in rows]

    def revoke_key(self, name: str) -> KeyInfo:
        """Stop trusting key ``name``: its signatures then count as revoked, everywhere."""
        from ..tables import utcnow

        with self._write() as conn:
            done = conn.execute(update(T_KEYS).where(T_KEYS.c.name == name, T_KEYS.c.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
            if not done.rowcount and conn.execute(select(T_KEYS.c.id).where(T_KEYS.c.name == name)).first() is None:
                raise NotFoundError(f"no key named {name!r} is trusted in this registry",
                                    hint="'adapterhub keys list' shows them")
        return self.key(name)

    # signing ------------------------------------------------------------------------------

    def sign(self, ref: str, *, key: str | os.PathLike[str] | PrivateKey) -> VersionSignatures:
        """Sign version ``name@spec`` with private key ``key`` (a name in the key directory, a
        path, or a loaded key). The version's digest and manifest stay as they are; the
        signature is kept beside it. Signing again with the same key changes nothing."""
        pk = key if isinstance(key, PrivateKey) else load_private_key(key)
        r = parse_ref(ref)
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            name = self._name_of(conn, row)
            manifest = Manifest.from_json(row.manifest)
            existing = conn.execute(select(T_SIGNATURES.c.key_id, T_SIGNATURES.c.signer)
                                    .where(T_SIGNATURES.c.version_id == row.id)).all()
            if pk.key_id not in {e.key_id for e in existing}:
                known = {k for (k,) in conn.execute(select(T_KEYS.c.name).where(T_KEYS.c.revoked_at.is_(None)))}
                ignore = {sigfmt.signature_file(n, first=False) for n in {*known, pk.name, *(e.signer for e in existing)}}
                text = sigfmt.sign(pk.key, pk.key_id, signed_resources(manifest), name=f"{name}@{row.version}",
                                   ignore=ignore)
                conn.execute(insert(T_SIGNATURES).values(version_id=row.id, key_id=pk.key_id, signer=pk.name,
                                                         bundle=text))
        return self.signatures(f"{name}@{row.version}")

    @staticmethod
    def _name_of(conn: Connection, row: Any) -> str:
        return conn.execute(select(T_ADAPTERS.c.name).where(T_ADAPTERS.c.id == row.adapter_id)).scalar_one()

    def signatures(self, ref: str) -> VersionSignatures:
        """The signatures of ``name@spec``, each checked against this registry's trusted keys
        and the version's files and manifest."""
        r = parse_ref(ref)
        with self._read() as conn:
            row = self._select_version(conn, r.name, r.spec)
            return self._check_version(conn, row, f"{self._name_of(conn, row)}@{row.version}")

    def verify_signatures(self) -> list[VersionSignatures]:
        """Every version's signatures, checked (``adapterhub verify`` reports them)."""
        with self._read() as conn:
            keys = self._keys_by_id(conn)
            rows = conn.execute(select(T_VERSIONS.c.id, T_VERSIONS.c.version, T_VERSIONS.c.digest,
                                       T_VERSIONS.c.manifest, T_ADAPTERS.c.name)
                                .join(T_ADAPTERS, T_ADAPTERS.c.id == T_VERSIONS.c.adapter_id)
                                .order_by(T_ADAPTERS.c.name_key, T_VERSIONS.c.major, T_VERSIONS.c.minor,
                                          T_VERSIONS.c.patch, T_VERSIONS.c.version)).all()
            sigs: dict[int, list[Any]] = {}
            for s in conn.execute(select(T_SIGNATURES).order_by(T_SIGNATURES.c.id)):
                sigs.setdefault(s.version_id, []).append(s)
        return [self._checks(row, f"{row.name}@{row.version}", sigs.get(row.id, []), keys) for row in rows]

    @staticmethod
    def _keys_by_id(conn: Connection) -> dict[str, Any]:
        return {k.key_id: k for k in conn.execute(select(T_KEYS))}

    def _check_version(self, conn: Connection, row: Any, ref: str) -> VersionSignatures:
        return version_signatures(conn, row, ref)

    @staticmethod
    def _checks(row: Any, ref: str, sigs: Sequence[Any], keys: dict[str, Any]) -> VersionSignatures:
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

    def import_signatures(self, ref: str, found: Iterable[tuple[str, str]]) -> VersionSignatures:
        """Record signature files that came with a version from elsewhere (a Hub repo's
        ``model.sig``, ``model.<signer>.sig``; (file name, bundle JSON)). Each is checked
        against the version's files and manifest: one by a key trusted here that is bad or
        covers other files is refused (:class:`IntegrityError`); one by a key not trusted
        here is kept as that repo's claim, shown as untrusted until its key is trusted."""
        from ..errors import IntegrityError

        r = parse_ref(ref)
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            keys = self._keys_by_id(conn)
            expected = signed_resources(Manifest.from_json(row.manifest))
            have = {k for (k,) in conn.execute(select(T_SIGNATURES.c.key_id).where(T_SIGNATURES.c.version_id == row.id))}
            for file, text in sorted(found, key=lambda ft: ft[0] != sigfmt.SIGNATURE_FILE):
                signer = sigfmt.signer_of(file)
                c = check_bundle(text, keys, expected, signer=signer, file=file)
                if c.status in ("bad_signature", "tampered") and c.key_name:
                    raise IntegrityError(f"{r.name}@{row.version}: {file} by {c.key_name} is refused: {c.reason}",
                                         hint="the repo's files or signature were changed after signing; "
                                              "ask its publisher to push it again")
                if c.status == "bad_signature" or c.key_id in have:
                    continue  # not a bundle at all, or a key that already signed it here
                name = c.key_name or signer  # a key not trusted here: the repo's claim, by its file's name
                conn.execute(insert(T_SIGNATURES).values(version_id=row.id, key_id=c.key_id, signer=name[:64],
                                                         bundle=text))
                have.add(c.key_id)
            return self._check_version(conn, row, f"{self._name_of(conn, row)}@{row.version}")

    def check_incoming_signatures(self, manifest: Manifest, found: Iterable[tuple[str, str]],
                                  require_signed: str | Iterable[str] | None = None) -> None:
        """Before a version from elsewhere (a Hub repo, an OCI artifact) is recorded, what
        :meth:`import_signatures` and :meth:`check_signed` would refuse afterwards: a signature
        by a key trusted here that is bad or covers other files (IntegrityError), and, under a
        signing policy in force, a version neither its signatures nor those this registry
        already holds for the same digest satisfy (SignaturePolicyError). Nothing is written."""
        from ..errors import IntegrityError

        ref = f"{manifest.name}@{manifest.version}"
        with self._read() as conn:
            keys = self._keys_by_id(conn)
            reqs = required_signers(conn, require_signed)
        expected = signed_resources(manifest)
        checks = []
        for file, text in sorted(found, key=lambda ft: ft[0] != sigfmt.SIGNATURE_FILE):
            c = check_bundle(text, keys, expected, signer=sigfmt.signer_of(file), file=file)
            if c.status in ("bad_signature", "tampered") and c.key_name:
                raise IntegrityError(f"{ref}: {file} by {c.key_name} is refused: {c.reason}",
                                     hint="the repo's files or signature were changed after signing; "
                                          "ask its publisher to push it again")
            if c.status != "bad_signature":
                checks.append(c)
        if not reqs:
            return
        try:
            held = self.signatures(ref)
        except NotFoundError:
            held = None
        if held is not None and held.digest == manifest.digest:
            checks += held.checks
        vs = VersionSignatures(ref, manifest.digest, checks)
        for names in reqs:
            refuse_unless_signed(ref, vs, names)

    def delete_signatures(self, ref: str, *, key_id: str | None = None) -> int:
        """Remove ``name@spec``'s signatures (one key's, or all): for tests and key rotation."""
        r = parse_ref(ref)
        with self._write() as conn:
            row = self._select_version(conn, r.name, r.spec)
            q = delete(T_SIGNATURES).where(T_SIGNATURES.c.version_id == row.id)
            if key_id is not None:
                q = q.where(T_SIGNATURES.c.key_id == key_id)
            return int(conn.execute(q).rowcount or 0)

    def directory_signatures(self, directory: str | os.PathLike[str]) -> VersionSignatures:
        """The signature files in a directory (``model.sig``, ``model.<signer>.sig``), each
        checked against this registry's trusted keys and the files present (any file
        changed, missing or added is ``tampered``)."""
        from pathlib import Path

        d = Path(directory)
        files = sorted(p.name for p in d.iterdir() if p.is_file() and sigfmt.is_signature_file(p.name)) \
            if d.is_dir() else []
        files.sort(key=lambda f: f != sigfmt.SIGNATURE_FILE)
        with self._read() as conn:
            keys = self._keys_by_id(conn)
        out = VersionSignatures(str(d), "")
        try:
            actual: dict[str, str] | None = sigfmt.hash_directory(d)
        except sigfmt.BadBundle:
            actual = None
        for f in files:
            signer = sigfmt.signer_of(f)
            text = (d / f).read_text("utf-8", errors="replace")
            out.bundles.append((f, text))
            out.checks.append(check_bundle(text, keys, actual, signer=signer, file=f))
        return out

    def check_signed_directory(self, directory: str | os.PathLike[str],
                               require_signed: str | Iterable[str] | None = None) -> VersionSignatures | None:
        """Under a signed-only policy, refuse a directory (loaded from disk, not from the
        registry) without a good ``model.sig``-format signature by a key the policy names."""
        reqs = self.required_signers(require_signed)
        if not reqs:
            return None
        vs = self.directory_signatures(directory)
        for names in reqs:
            refuse_unless_signed(str(directory), vs, names)
        return vs

    # policy -------------------------------------------------------------------------------

    def signing_policy(self) -> list[str]:
        """The registry-wide policy: key names one of which must have signed every version a
        user of this registry pulls, attaches or serves (empty: none required)."""
        with self._read() as conn:
            return signing_policy(conn)

    def set_signing_policy(self, names: Iterable[str]) -> list[str]:
        """Require (every user of this registry) a signature by one of ``names``; none clears it."""
        names = policy_names(list(names))
        with self._write() as conn:
            conn.execute(delete(T_SETTINGS).where(T_SETTINGS.c.name == POLICY_SETTING))
            if names:
                conn.execute(insert(T_SETTINGS).values(name=POLICY_SETTING, value=",".join(names)))
        return names

    def required_signers(self, require_signed: str | Iterable[str] | None = None) -> list[list[str]]:
        """Each requirement in force, as the key names that satisfy it: the registry's policy,
        ADAPTERHUB_REQUIRE_SIGNED, and ``require_signed`` (an option). Every one must be met."""
        with self._read() as conn:
            return required_signers(conn, require_signed)

    def check_signed(self, ref: str, require_signed: str | Iterable[str] | None = None) -> VersionSignatures | None:
        """Refuse (:class:`SignaturePolicyError`, with the reason) a version that a policy in
        force says must be signed and is not signed by one of the keys it names. Returns its
        signatures when a policy applied, else None."""
        reqs = self.required_signers(require_signed)
        if not reqs:
            return None
        vs = self.signatures(ref)
        for names in reqs:
            refuse_unless_signed(vs.ref, vs, names)
        return vs


def signing_policy(conn: Connection) -> list[str]:
    value = conn.execute(select(T_SETTINGS.c.value).where(T_SETTINGS.c.name == POLICY_SETTING)).scalar()
    return policy_names(value)


def required_signers(conn: Connection, require_signed: str | Iterable[str] | None = None) -> list[list[str]]:
    """The requirements in force (see :meth:`SignaturesPart.required_signers`)."""
    reqs = [signing_policy(conn), policy_names(os.environ.get(POLICY_ENV)), policy_names(require_signed)]
    return [r for r in reqs if r]


def version_signatures(conn: Connection, row: Any, ref: str) -> VersionSignatures:
    """The signatures of version row ``row``, checked."""
    sigs = conn.execute(select(T_SIGNATURES).where(T_SIGNATURES.c.version_id == row.id)
                        .order_by(T_SIGNATURES.c.id)).all()
    return SignaturesPart._checks(row, ref, sigs, SignaturesPart._keys_by_id(conn))


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

"""Signatures kept beside versions, the trusted signers' public keys, and the registry-wide
signing policy. A signature never changes a version's digest and never enters its manifest:
it is an OpenSSF model signing bundle (:mod:`adapterhub_sdk.signing.bundle`) over exactly
the files a pull writes: the version's files as published plus its manifest."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import catalog
from ..errors import NotFoundError, SigningError
from ..manifest import Manifest
from ..names import parse_ref
from ..signing import bundle as sigfmt
from ..signing.checks import (  # noqa: F401 - re-exported (defined apart for the bare-sqlite3 path)
    POLICY_ENV,
    POLICY_SETTING,
    SignatureCheck,
    VersionSignatures,
    check_bundle,
    checked,
    policy_names,
    refuse_unless_signed,
    requirements_in_force,
    signed_resources,
)
from ..signing.keys import PrivateKey, check_key_name, key_id, load_private_key, load_public_key
from ._core import RegistryCore

#: a signature's status: only ``trusted`` counts for a policy; ``bad_signature`` and
#: ``tampered`` are problems whatever the policy
SIGNATURE_STATUSES = ("trusted", "untrusted", "revoked", "bad_signature", "tampered")
#: a version's status, worst first after the good one
VERSION_STATUSES = ("signed", "unsigned", "untrusted", "revoked", "bad_signature", "tampered")


_SIG_LIMIT = 1 << 20  # a bundle is a few KiB: a certificate chain and one signature


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


class SignaturesPart(RegistryCore):
    """Trusted keys, signing, checking signatures, and the signed-only policy (every statement
    one of :mod:`adapterhub_sdk.catalog`'s or written here in plain SQL, so that the CLI's
    bare-sqlite3 path checks signatures exactly as the registry does)."""

    # keys ---------------------------------------------------------------------------------

    def trust_key(self, name: str, public_key: bytes) -> KeyInfo:
        """Trust the PEM public key ``public_key`` as signer ``name``, for every user of this
        registry. Trusting the same key under the same name again changes nothing."""
        check_key_name(name)
        load_public_key(public_key, source=f"the public key for {name!r}")
        pem = public_key.strip() + b"\n"
        kid = key_id(pem)
        with self._sql(write=True) as q:
            by_name = next(iter(catalog.key_rows(q, name=name)), None)
            by_id = q("SELECT name FROM signing_keys WHERE key_id = ?", (kid,))
            if by_name is not None and by_name.key_id != kid:
                raise SigningError(f"a different key is already trusted as {name!r}",
                                   hint="choose another name, or revoke the old key first")
            if by_id and by_id[0][0] != name:
                raise SigningError(f"this key is already trusted as {by_id[0][0]!r}")
            if by_name is None:
                q.run("INSERT INTO signing_keys (name, key_id, public_key, created_at) VALUES (?, ?, ?, ?)",
                      (name, kid, pem.decode("ascii"), q.now()))
        return self.key(name)

    def key(self, name: str) -> KeyInfo:
        with self._sql() as q:
            rows = catalog.key_rows(q, name=name)
        if not rows:
            raise NotFoundError(f"no key named {name!r} is trusted in this registry",
                                hint="'adapterhub keys list' shows them; 'adapterhub keys trust PUB.pem --name NAME'")
        return self._key_info(rows[0])

    @staticmethod
    def _key_info(row: Any) -> KeyInfo:
        from ..signing.keys import key_dir

        return KeyInfo(row.name, row.key_id, row.revoked_at is not None, row.created_at, row.public_key,
                       local=(key_dir() / f"{row.name}.pem").is_file())

    def keys(self) -> list[KeyInfo]:
        """The signers' keys this registry knows, trusted and revoked, by name."""
        with self._sql() as q:
            rows = catalog.key_rows(q)
        return [self._key_info(r) for r in rows]

    def revoke_key(self, name: str) -> KeyInfo:
        """Stop trusting key ``name``: its signatures then count as revoked, everywhere."""
        with self._sql(write=True) as q:
            done = q.run("UPDATE signing_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                         (q.now(), name))
            if not done and not catalog.key_rows(q, name=name):
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
        with self._sql(write=True) as q:
            row = catalog.select_version(q, r.name, r.spec)
            name = catalog.adapter_name(q, row)
            manifest = Manifest.from_json(row.manifest)
            existing = catalog.signature_rows(q, row.id)
            if pk.key_id not in {e.key_id for e in existing}:
                known = {k.name for k in catalog.key_rows(q) if k.revoked_at is None}
                ignore = {sigfmt.signature_file(n, first=False) for n in {*known, pk.name, *(e.signer for e in existing)}}
                text = sigfmt.sign(pk.key, pk.key_id, signed_resources(manifest), name=f"{name}@{row.version}",
                                   ignore=ignore)
                catalog.insert_signature(q, row.id, pk.key_id, pk.name, text)
        return self.signatures(f"{name}@{row.version}")

    def signatures(self, ref: str) -> VersionSignatures:
        """The signatures of ``name@spec``, each checked against this registry's trusted keys
        and the version's files and manifest."""
        r = parse_ref(ref)
        with self._sql() as q:
            row = catalog.select_version(q, r.name, r.spec)
            return catalog.version_signatures(q, row, f"{catalog.adapter_name(q, row)}@{row.version}")

    def verify_signatures(self) -> list[VersionSignatures]:
        """Every version's signatures, checked (``adapterhub verify`` reports them)."""
        with self._sql() as q:
            keys = catalog.keys_by_id(q)
            rows = [_Checked(*t) for t in q(
                "SELECT v.id, v.version, v.digest, v.manifest, a.name FROM versions v "
                "JOIN adapters a ON a.id = v.adapter_id ORDER BY a.name_key, v.major, v.minor, v.patch, v.version")]
            sigs: dict[int, list[Any]] = {}
            for s in catalog.signature_rows(q):
                sigs.setdefault(s.version_id, []).append(s)
        return [checked(row, f"{row.name}@{row.version}", sigs.get(row.id, []), keys) for row in rows]

    def import_signatures(self, ref: str, found: Iterable[tuple[str, str]]) -> VersionSignatures:
        """Record signature files that came with a version from elsewhere (a Hub repo's
        ``model.sig``, ``model.<signer>.sig``; (file name, bundle JSON)). Each is checked
        against the version's files and manifest: one by a key trusted here that is bad or
        covers other files is refused (:class:`IntegrityError`); one by a key not trusted
        here is kept as that repo's claim, shown as untrusted until its key is trusted."""
        from ..errors import IntegrityError

        r = parse_ref(ref)
        with self._sql(write=True) as q:
            row = catalog.select_version(q, r.name, r.spec)
            keys = catalog.keys_by_id(q)
            expected = signed_resources(Manifest.from_json(row.manifest))
            have = {s.key_id for s in catalog.signature_rows(q, row.id)}
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
                catalog.insert_signature(q, row.id, c.key_id, name[:64], text)
                have.add(c.key_id)
            return catalog.version_signatures(q, row, f"{catalog.adapter_name(q, row)}@{row.version}")

    def check_incoming_signatures(self, manifest: Manifest, found: Iterable[tuple[str, str]],
                                  require_signed: str | Iterable[str] | None = None) -> None:
        """Before a version from elsewhere (a Hub repo, an OCI artifact) is recorded, what
        :meth:`import_signatures` and :meth:`check_signed` would refuse afterwards: a signature
        by a key trusted here that is bad or covers other files (IntegrityError), and, under a
        signing policy in force, a version neither its signatures nor those this registry
        already holds for the same digest satisfy (SignaturePolicyError). Nothing is written."""
        from ..errors import IntegrityError

        ref = f"{manifest.name}@{manifest.version}"
        with self._sql() as q:
            keys = catalog.keys_by_id(q)
            reqs = catalog.required_signers(q, require_signed)
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
        with self._sql(write=True) as q:
            row = catalog.select_version(q, r.name, r.spec)
            if key_id is None:
                return int(q.run("DELETE FROM signatures WHERE version_id = ?", (row.id,)) or 0)
            return int(q.run("DELETE FROM signatures WHERE version_id = ? AND key_id = ?", (row.id, key_id)) or 0)

    def directory_signatures(self, directory: str | os.PathLike[str]) -> VersionSignatures:
        """The signature files in a directory (``model.sig``, ``model.<signer>.sig``), each
        checked against this registry's trusted keys and the files present (any file
        changed, missing or added is ``tampered``)."""
        from pathlib import Path

        from ..adapter_files import open_regular
        from ..errors import IntegrityError

        d = Path(directory)
        # every entry named as a signature, a link or not (is_file() would follow a link out of d)
        files = sorted(p.name for p in d.iterdir() if sigfmt.is_signature_file(p.name)
                       and (p.is_symlink() or p.is_file())) if d.is_dir() else []
        files.sort(key=lambda f: f != sigfmt.SIGNATURE_FILE)
        with self._sql() as q:
            keys = catalog.keys_by_id(q)
        out = VersionSignatures(str(d), "")
        try:
            actual: dict[str, str] | None = sigfmt.hash_directory(d)
        except sigfmt.BadBundle:
            actual = None
        for f in files:
            signer = sigfmt.signer_of(f)
            with open_regular(d / f, what="signature file") as fh:  # never through a link, never unbounded
                raw = fh.read(_SIG_LIMIT + 1)
            if len(raw) > _SIG_LIMIT:
                raise IntegrityError(f"{d / f}: a signature bundle of more than {_SIG_LIMIT >> 20} MiB is no "
                                     "bundle model signing writes", hint="remove it, or sign the directory again")
            text = raw.decode("utf-8", errors="replace")
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
        with self._sql() as q:
            return policy_names(catalog.policy_setting(q))

    def set_signing_policy(self, names: Iterable[str]) -> list[str]:
        """Require (every user of this registry) a signature by one of ``names``; none clears it."""
        names = policy_names(list(names))
        with self._sql(write=True) as q:
            q.run("DELETE FROM settings WHERE name = ?", (POLICY_SETTING,))
            if names:
                q.run("INSERT INTO settings (name, value) VALUES (?, ?)", (POLICY_SETTING, ",".join(names)))
        return names

    def required_signers(self, require_signed: str | Iterable[str] | None = None) -> list[list[str]]:
        """Each requirement in force, as the key names that satisfy it: the registry's policy,
        ADAPTERHUB_REQUIRE_SIGNED, and ``require_signed`` (an option). Every one must be met."""
        with self._sql() as q:
            return catalog.required_signers(q, require_signed)

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


class _Checked(NamedTuple):
    id: int
    version: str
    digest: str
    manifest: str
    name: str

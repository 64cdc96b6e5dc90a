"""The OpenSSF model signing format (what ``model_signing verify key`` accepts), written with
our own code: an in-toto v1 statement whose predicate lists every file with its sha256 (the
``files`` serialization), in a DSSE envelope signed with ECDSA P-256 over its PAE, inside a
Sigstore bundle (v0.3) that names the key by the sha256 of its PEM.

The statement's subject digest is the sha256 of the files' raw digests concatenated in
path order; its ``ignore_paths`` name the signature files (``model.sig`` and every
``model.<signer>.sig`` known when signing) and git's, so a verifier hashing a directory
skips them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography loads when a bundle is signed or checked
    from cryptography.hazmat.primitives.asymmetric import ec

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: the publisher's bundle in a directory; further signers' sit beside it as model.<signer>.sig
SIGNATURE_FILE = "model.sig"
#: what model_signing ignores in a directory unless told otherwise
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


def signature_file(signer: str, *, first: bool) -> str:
    return SIGNATURE_FILE if first else f"model.{signer}.sig"


def is_signature_file(path: str) -> bool:
    return path == SIGNATURE_FILE or (path.startswith("model.") and path.endswith(".sig"))


def signer_of(file: str) -> str:
    """The signer a signature file names: ``model.NAME.sig`` -> NAME; ``model.sig`` -> publisher."""
    return "publisher" if file == SIGNATURE_FILE else file[len("model."):-len(".sig")]


class BadBundle(ValueError):
    """A bundle that is not one, or whose signature does not verify."""


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def statement(resources: Mapping[str, str], *, name: str, ignore: Iterable[str] = ()) -> bytes:
    """The in-toto statement over ``resources`` (path -> sha256 hex)."""
    items = sorted(resources.items())
    root = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in items)).hexdigest()
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": sorted({*GIT_PATHS, SIGNATURE_FILE, *ignore})},
            "resources": [{"name": p, "algorithm": "sha256", "digest": d} for p, d in items],
        },
    }
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8")


def sign(key: ec.EllipticCurvePrivateKey, key_hint: str, resources: Mapping[str, str], *, name: str,
         ignore: Iterable[str] = ()) -> str:
    """A Sigstore bundle (JSON text, as written to ``model.sig``) signing ``resources``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = statement(resources, name=name, ignore=ignore)
    sig = key.sign(pae(payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]},
    }
    return json.dumps(bundle, separators=(",", ":"))


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle: the key it names, the signed payload and the signature (unchecked)."""

    key_hint: str
    payload: bytes
    signature: bytes

    @classmethod
    def parse(cls, text: str | bytes) -> Bundle:
        try:
            d = json.loads(text)
            if d["mediaType"] != BUNDLE_MEDIA_TYPE:
                raise BadBundle(f"not a Sigstore v0.3 bundle (media type {d['mediaType']!r})")
            env = d["dsseEnvelope"]
            if env["payloadType"] != PAYLOAD_TYPE or len(env["signatures"]) != 1:
                raise BadBundle("the bundle's envelope is not one in-toto statement with one signature")
            return cls(str(d["verificationMaterial"]["publicKey"].get("hint") or ""),
                       base64.b64decode(env["payload"], validate=True),
                       base64.b64decode(env["signatures"][0]["sig"], validate=True))
        except BadBundle:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise BadBundle(f"malformed signature bundle ({type(exc).__name__}: {exc})") from None

    def verify(self, key: ec.EllipticCurvePublicKey) -> dict[str, str]:
        """Check the signature with ``key``; the signed files (path -> sha256 hex)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key.verify(self.signature, pae(self.payload), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BadBundle("the signature does not verify with the signer's key") from None
        return self.resources()

    def resources(self) -> dict[str, str]:
        """The files the statement lists (not yet trusted: call :meth:`verify`)."""
        try:
            st = json.loads(self.payload)
            if st["_type"] != STATEMENT_TYPE or st["predicateType"] != PREDICATE_TYPE:
                raise BadBundle("the signed statement is not an OpenSSF model signature v1.0")
            if st["predicate"]["serialization"].get("method") != "files":
                raise BadBundle("the signed statement does not list whole files")
            items = {str(r["name"]): str(r["digest"]) for r in st["predicate"]["resources"]
                     if r.get("algorithm") == "sha256"}
            root = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in sorted(items.items()))).hexdigest()
            if st["subject"][0]["digest"]["sha256"] != root or len(items) != len(st["predicate"]["resources"]):
                raise BadBundle("the signed statement's digest does not match the files it lists")
        except BadBundle:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise BadBundle(f"malformed signed statement ({type(exc).__name__}: {exc})") from None
        return items

    def ignore_paths(self) -> list[str]:
        try:
            return [str(p) for p in json.loads(self.payload)["predicate"]["serialization"].get("ignore_paths", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hash_directory(directory: Path, *, ignore: Iterable[str] = ()) -> dict[str, str]:
    """Every file under ``directory`` (path -> sha256 hex) as model_signing hashes it: the
    signature files, git's files and ``ignore`` skipped; a symlink is refused."""
    skip = {*GIT_PATHS, *ignore}
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        for entry in sorted([*dirs, *files]):
            rel = (rel_root / entry).as_posix()
            full = Path(root) / entry
            if any(rel == s or rel.startswith(s + "/") for s in skip) or (rel_root == Path(".")
                                                                            and is_signature_file(entry)):
                if entry in dirs:
                    dirs.remove(entry)
                continue
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BadBundle(f"{rel} is a symbolic link; signed directories hold plain files")
            if stat.S_ISREG(mode):
                out[rel] = _sha256_file(full)
    return out


def differences(signed: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """What differs between the files a signature lists and those present, one line each."""
    out = [f"{p}: changed" for p in sorted(signed.keys() & actual.keys()) if signed[p] != actual[p]]
    out += [f"{p}: missing" for p in sorted(signed.keys() - actual.keys())]
    out += [f"{p}: not signed" for p in sorted(actual.keys() - signed.keys())]
    return out

"""Signing keys: ECDSA P-256 (SHA-256), the curve OpenSSF model signing verifies.

Private keys never enter the registry: they live in the user's key directory
(``$ADAPTERHUB_HOME/keys`` when ADAPTERHUB_HOME is set, else ``keys/`` under the user config
directory, platformdirs' ``user_config_dir('adapterhub')``), one ``NAME.pem`` (PKCS#8, mode
0600) beside its ``NAME.pub``, in a directory of mode 0700; or at a path the user gives. A
private key file that others can read is refused. Public keys of trusted signers live in
the registry (:mod:`adapterhub_sdk.registry.signatures`), shared by everyone who uses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SigningError

if TYPE_CHECKING:  # cryptography loads when a key is used, not when a command starts
    from cryptography.hazmat.primitives.asymmetric import ec

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)


def check_key_name(name: str) -> str:
    """A key name is lowercase ASCII (letters, digits, '-', '_'), at most 64 characters: it
    names files (``NAME.pem``, a pulled directory's ``model.NAME.sig``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SigningError(f"{name!r} is not a key name",
                           hint="key names are lowercase letters, digits, '-' and '_', e.g. alice or release-2026")
    return name


def key_dir() -> Path:
    """Where this user's private keys live (created 0700 on first use)."""
    env = os.environ.get("ADAPTERHUB_HOME")
    if env:
        return Path(env).expanduser().absolute() / "keys"
    import platformdirs

    return Path(platformdirs.user_config_dir("adapterhub", appauthor=False)) / "keys"


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pem: bytes) -> str:
    """sha256 of the PEM public key: what model_signing records as the bundle's key hint."""
    return hashlib.sha256(pem).hexdigest()


def load_public_key(pem: bytes, *, source: str = "public key") -> ec.EllipticCurvePublicKey:
    """A PEM public key on P-256, or a :class:`SigningError` naming ``source``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{source} is not a PEM public key ({exc})",
                           hint="give the NAME.pub file that 'adapterhub keys generate' wrote") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SigningError(f"{source} is not an ECDSA P-256 key", hint="adapterhub signs with ECDSA P-256 keys")
    return key


@dataclass(frozen=True)
class PrivateKey:
    """A private key loaded from its file, with the name its signatures carry."""

    name: str
    path: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public_pem)


def generate_key(name: str, *, directory: Path | None = None) -> PrivateKey:
    """Make a new P-256 key ``NAME`` in the key directory: ``NAME.pem`` written 0600 (never
    replaced: a key that signed versions stays) and ``NAME.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    check_key_name(name)
    d = directory or key_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    path = d / f"{name}.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningError(f"a private key named {name!r} already exists at {path}",
                           hint="choose another name; an existing key is never replaced") from None
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    (d / f"{name}.pub").write_bytes(public_pem(key.public_key()))
    return PrivateKey(name, path, key)


def _is_path(key: str) -> bool:
    return os.sep in key or "/" in key or key.endswith(".pem")


def load_private_key(key: str | os.PathLike[str]) -> PrivateKey:
    """The private key ``key``: a name in the key directory, or a path to a PEM file (its
    stem names the signer). Refused when the file is readable or writable by others."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, os.PathLike) or _is_path(key):
        path = Path(key).expanduser()
        name = path.stem
    else:
        name = check_key_name(key)
        path = key_dir() / f"{name}.pem"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SigningError(f"no private key {path}",
                           hint=f"'adapterhub keys generate {name}' makes one; or give the path of a PEM key") from None
    if not stat.S_ISREG(st.st_mode):
        raise SigningError(f"private key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SigningError(f"private key {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                           hint=f"make it owner-only: chmod 600 {path}")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise SigningError(f"{path} is not an ECDSA P-256 key", hint="adapterhub signs with ECDSA P-256 keys")
    check_key_name(name)
    return PrivateKey(name, path, loaded)

"""Signing that interoperates: ECDSA P-256 keys (:mod:`.keys`; private keys stay in the
user's key directory), the OpenSSF model signing bundle (:mod:`.bundle`; what
``model_signing verify key`` accepts). Trusted public keys, the signatures beside each version
and the signed-only policy live in the registry (:mod:`adapterhub_sdk.registry.signatures`)."""

from .bundle import SIGNATURE_FILE, BadBundle, hash_directory
from .keys import PrivateKey, generate_key, key_dir, load_private_key, load_public_key

__all__ = ["SIGNATURE_FILE", "BadBundle", "PrivateKey", "generate_key", "hash_directory", "key_dir",
           "load_private_key", "load_public_key"]

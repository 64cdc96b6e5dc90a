"""What else identifies a base besides its fingerprint: the sha256 of each weight file
(what the Hugging Face Hub reports as an LFS oid) and, for a snapshot in the Hub cache,
the repo and commit it came from. Recorded as base sources, they let a Hub id resolve to a
fingerprint without downloading any weights."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from .adapter_files import sha256_file
from .errors import IntegrityError
from .fingerprint import weight_files

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CACHE_DIR = re.compile(r"models--(?P<repo>.+)")


def files_key(digests: Mapping[str, str]) -> str:
    """One digest for a set of weight files: sorted ``name<TAB>sha256`` lines, hashed."""
    body = "".join(f"{name}\t{digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(body.encode()).hexdigest()


def weight_file_digests(path: str | os.PathLike[str], *, compute: bool) -> dict[str, str] | None:
    """sha256 of each safetensors weight file, by file name, when ``compute`` is true (None
    otherwise). In the Hub cache a snapshot's file links to a blob named by the sha256 the
    Hub reported; the bytes are hashed anyway and must match that name, since these digests
    become the shared mapping from Hub files to a fingerprint: a corrupt cache must not be
    recorded as the base everyone resolves against."""
    if not compute:
        return None
    out: dict[str, str] = {}
    for f in weight_files(path):
        digest = sha256_file(f)[0]
        target = Path(os.readlink(f)).name if f.is_symlink() else ""
        if _HEX64.fullmatch(target) and target != digest:
            raise IntegrityError(f"{f.name} in the Hugging Face cache does not match its sha256 {target[:12]} "
                                 f"(its bytes hash to {digest[:12]}): the cached file is corrupt",
                                 hint="delete that snapshot from the cache (hf cache delete) and download it again")
        out[f.name] = digest
    return out


def hub_cache_origin(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(repo id, commit) when ``path`` is a snapshot folder of the Hugging Face cache."""
    p = Path(path).absolute()
    if p.is_file():
        p = p.parent
    if p.parent.name != "snapshots":
        return None
    m = _CACHE_DIR.fullmatch(p.parent.parent.name)
    if not m or not re.fullmatch(r"[0-9a-f]{40}", p.name):
        return None
    return m["repo"].replace("--", "/"), p.name

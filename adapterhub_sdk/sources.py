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

from .fingerprint import weight_files
from .package import sha256_file

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CACHE_DIR = re.compile(r"models--(?P<repo>.+)")


def files_key(digests: Mapping[str, str]) -> str:
    """One digest for a set of weight files: sorted ``name<TAB>sha256`` lines, hashed."""
    body = "".join(f"{name}\t{digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(body.encode()).hexdigest()


def weight_file_digests(path: str | os.PathLike[str], *, compute: bool) -> dict[str, str] | None:
    """sha256 of each safetensors weight file, by file name. In the Hub cache the blob a
    snapshot links to is named by that sha256, so nothing is read; elsewhere the files are
    hashed only when ``compute`` is true (None otherwise)."""
    out: dict[str, str] = {}
    for f in weight_files(path):
        target = Path(os.readlink(f)).name if f.is_symlink() else ""
        if _HEX64.fullmatch(target):
            out[f.name] = target
            continue
        if not compute:
            return None
        out[f.name] = sha256_file(f)[0]
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

"""Reading a snapshot of huggingface_hub's cache safely: which blob each entry of a snapshot
is (no link followed out of the repo's own ``blobs/`` folder), which files of a snapshot
make up an adapter, and whether the cached blobs still match the sha256 they are named by."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from .adapter_files import CONFIG, describe, refuse, sha256_file
from .errors import IntegrityError, NotFoundError


def _check_cached_files(ref: Any, snap: Path) -> None:
    """Files the Hub stores with LFS sit in huggingface_hub's cache as blobs named by their
    sha256: a blob whose bytes no longer match its name (a damaged cache) is refused, with
    what to do. Run for a repo without a manifest (nothing else checks its bytes) and when a
    repo with one fails its checks (to tell a damaged cache from a bad repo); a good pull
    of a repo with a manifest is not hashed an extra time."""
    bad = []
    for f in sorted(snap.rglob("*")):
        if not f.is_symlink() or not f.is_file():
            continue
        name = Path(os.readlink(f)).name
        if re.fullmatch(r"[0-9a-f]{64}", name) and sha256_file(f)[0] != name:
            bad.append(str(f.relative_to(snap)))
    if bad:
        raise IntegrityError(f"{ref}: the Hugging Face cache holds damaged copies of {', '.join(bad)}",
                             hint="delete that snapshot from the cache ('hf cache delete') and pull again")


def _cached_file(snap: Path, rel: str) -> Path | None:
    """The file huggingface_hub's cache holds for ``rel`` in the snapshot ``snap``: the blob
    its link resolves to, which must be a regular file in that repo's own ``blobs/`` folder
    (or a plain file in the snapshot, in a cache on a filesystem without links). None if
    the snapshot has no such entry; anything else (a link out of the cache, a FIFO ...) is
    refused by name. Readers then open the blob itself: no link is followed after this."""
    entry = snap / rel
    try:
        st = entry.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode):
        return entry
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(entry))
        blobs = Path(os.path.realpath(snap.parent.parent / "blobs"))
        try:
            regular = stat.S_ISREG(target.lstat().st_mode)
        except FileNotFoundError:
            return None
        if target.parent == blobs and regular:
            return target
        refuse(entry, describe(st, entry), "cached file")
    refuse(entry, describe(st, entry), "cached file")


def _snapshot_files(ref: Any, snap: Path) -> dict[str, Path]:
    """The adapter's files in a cache snapshot (top level, or the one subfolder holding an
    adapter config, as PEFT pushes a non-default adapter), mapped to their cached blobs."""
    folder = snap
    if _cached_file(snap, CONFIG) is None:
        subs = sorted(d.name for d in snap.iterdir() if not d.is_symlink() and d.is_dir()
                      and not d.name.startswith(".") and _cached_file(d, CONFIG) is not None)
        if len(subs) == 1:
            folder = snap / subs[0]
    out = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or (not entry.is_symlink() and entry.is_dir()):
            continue
        found = _cached_file(folder, entry.name)
        if found is not None:
            out[entry.name] = found
    if CONFIG not in out:
        raise NotFoundError(f"{ref}: no {CONFIG}; not a PEFT adapter repo")
    return out

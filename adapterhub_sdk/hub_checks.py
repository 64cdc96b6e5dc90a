"""What a Hub import checks of a repo's claims before anything is recorded: the manifest's
size (read only when it is no larger than a manifest can be), the files it lists (named in
a short line however many), and a pinned base this registry knows, against the adapter
files (a repo claiming a base its files do not fit would otherwise resolve ``exact``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .adapter_files import open_regular
from .errors import (
    DISTRUST,
    AdapterFormatError,
    IncompatibleAdapterError,
    IntegrityError,
    NotFoundError,
)
from .manifest import Manifest
from .methods.base import few

#: an adapter's manifest lists a few files and its config (itself at most 16 MiB)
MAX_MANIFEST_BYTES = 32 << 20


def read_manifest(ref: Any, path: str | os.PathLike[str], display: Path) -> Manifest:
    """The manifest at ``path`` (a regular file), refused unread when larger than a manifest can be."""
    with open_regular(path, display=display, what="cached file") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise AdapterFormatError(f"{ref}: the repo's manifest is {size:,} bytes, larger than "
                                     f"{MAX_MANIFEST_BYTES >> 20} MiB, which no adapter's manifest needs",
                                     hint=DISTRUST)
        return Manifest.from_json(fh.read(MAX_MANIFEST_BYTES + 1))


def refuse_missing(ref: Any, missing: list[str]) -> None:
    if missing:
        raise IntegrityError(f"{ref}: {len(missing):,} file{'s' if len(missing) != 1 else ''} listed in the "
                             f"manifest {'are' if len(missing) != 1 else 'is'} missing from the repo: "
                             f"{few(missing)}", hint=DISTRUST)


def check_claimed_base(ref: Any, manifest: Manifest, pkg: Any, registry: Any) -> None:
    """A manifest pinned to a base this registry knows: the adapter files must fit it."""
    fp = manifest.base.fingerprint
    if not fp:
        return
    try:
        base = registry.get_base(fp)
    except NotFoundError:
        return  # a claim of the repo's, until that base is fingerprinted here
    reasons = pkg.check_base(base)
    if reasons:
        raise IncompatibleAdapterError(
            f"{ref}: the manifest pins base {fp[:12]}, but the adapter files do not fit that base: {reasons[0]}"
            + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""), reasons=reasons, hint=DISTRUST)


#: summary entries an SDK adds from what it checked, not from the files alone
_CHECKED_NOTES = frozenset({"validated"})


def check_method_as_claimed(ref: Any, manifest: Manifest, pkg: Any) -> None:
    """The manifest's method is the one its files give: type, variant, PEFT type and config
    exactly (``adapter_config.json`` as read), and every summary entry both state. Export
    limits, runtime verdicts and ``show`` read the manifest's method: a manifest claiming a
    plain LoRA over files PEFT loads as DoRA or with another scaling would pass them all."""
    claimed = manifest.method if isinstance(manifest.method, dict) else {}
    given = {"type": pkg.method.name, "variant": pkg.variant, "peft_type": pkg.config.get("peft_type"),
             "config": pkg.config}
    wrong = [k for k, v in given.items() if claimed.get(k) != v]
    summary, files_summary = claimed.get("summary") or {}, pkg.summary or {}
    if isinstance(summary, dict):
        wrong += [f"summary.{k}" for k in sorted(set(summary) & set(files_summary) - _CHECKED_NOTES)
                  if summary[k] != files_summary[k]]
    else:
        wrong.append("summary")
    if wrong:
        raise IntegrityError(f"{ref}: the manifest's method does not match its adapter files ({', '.join(wrong)} "
                             "differ); nothing was recorded", hint=DISTRUST)

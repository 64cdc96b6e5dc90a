"""What differs between a published version and a refused re-publish of it, field by field
("license: apache-2.0 → none"), so the error says what to change instead of "other content"."""

from __future__ import annotations

import json
from typing import Any

from ..errors import VersionConflictError
from ..manifest import Manifest

_LONG = 48


def _show(value: Any) -> str:
    if value is None or value == "" or value == () or value == []:
        return "none"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _LONG else text[:_LONG - 1] + "…"


def _short(digest: str | None) -> str:
    return "none" if not digest else digest.removeprefix("sha256:")[:12]


def _dict_changes(label: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{label}.{k}: {_show(old.get(k))} → {_show(new.get(k))}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


#: the parts of ``method`` that the SDK derives from the files and config: they change with
#: the SDK (a newer describe, a ``validated`` note, a method plugin that now claims the type),
#: never with what the user gave
DERIVED_METHOD_KEYS = ("summary", "variant", "type")


def differences(old: Manifest, new: Manifest, *, derived: bool = True) -> list[str]:
    """One line per differing field of the two manifests' digested bodies (provenance and
    signature are outside the digest and never differ here), published side first.
    ``derived=False`` leaves out what the SDK derives from the files (the method's summary,
    variant and type, the requirements, the base's arch signature): what remains is what the
    user gave (files, config, base, tasks, description, license, metrics)."""
    out: list[str] = []
    if sorted(set(old.tasks)) != sorted(set(new.tasks)):
        out.append(f"tasks: {', '.join(sorted(set(old.tasks))) or 'none'} → {', '.join(sorted(set(new.tasks))) or 'none'}")
    for label in ("description", "license"):
        a, b = getattr(old, label), getattr(new, label)
        if a != b:
            out.append(f"{label}: {_show(a)} → {_show(b)}")
    if old.metrics != new.metrics:
        out += _dict_changes("metrics", old.metrics, new.metrics)
    ob, nb = old.base, new.base
    if ob.fingerprint != nb.fingerprint:
        out.append(f"base fingerprint: {_short(ob.fingerprint)} → {_short(nb.fingerprint)}"
                   + (" (unpinned: published without a base)" if not nb.fingerprint else ""))
    elif derived and ob.arch_signature != nb.arch_signature:
        out.append(f"base arch signature: {_short(ob.arch_signature)} → {_short(nb.arch_signature)}")
    for label in ("name", "revision"):
        a, b = getattr(ob, label), getattr(nb, label)
        if a != b:
            out.append(f"base {label}: {_show(a)} → {_show(b)}")
    of, nf = {f.path: f for f in old.files}, {f.path: f for f in new.files}
    for path in sorted(set(of) | set(nf)):
        a, b = of.get(path), nf.get(path)
        if a is None:
            out.append(f"files: {path} added")
        elif b is None:
            out.append(f"files: {path} removed")
        elif a.sha256 != b.sha256:
            out.append(f"files: {path} sha256 {_short(a.sha256)} → {_short(b.sha256)}")
    if derived:
        if old.method != new.method:
            out += _dict_changes("method", old.method, new.method)
        if not out and old.requirements != new.requirements:
            out.append("requirements (module shapes the adapter needs) differ")
    else:
        om = {k: v for k, v in old.method.items() if k not in DERIVED_METHOD_KEYS}
        nm = {k: v for k, v in new.method.items() if k not in DERIVED_METHOD_KEYS}
        if om != nm:
            out += _dict_changes("method", om, nm)
    return out


def same_content(old: Manifest, new: Manifest) -> bool:
    """Whether ``new`` has the files and metadata of ``old``, whatever the SDKs that made
    them derived from those (a re-publish of the same adapter with a newer SDK)."""
    return (old.name, old.version) == (new.name, new.version) and not differences(old, new, derived=False)


def conflict(old: Manifest | None, new: Manifest, *, here: str = "") -> VersionConflictError:
    """The error for ``new`` refused because ``old`` holds its name@version, naming what differs."""
    diffs = differences(old, new, derived=False) if old is not None else []
    what = "; ".join(diffs)
    if old is not None and not diffs:  # the same files and metadata: only what an SDK derived differs
        diffs = differences(old, new)
        what = ("the files and metadata are the same; only what the SDK that made each derived from them "
                "differs (" + "; ".join(diffs) + ")") if diffs else ""
    err = VersionConflictError(f"{new.name}@{new.version} already exists{here} with other content"
                               + (f": {what}" if what else ""))
    err.differences = tuple(diffs)
    return err


__all__ = ["DERIVED_METHOD_KEYS", "conflict", "differences", "same_content"]

"""Adapter names (``namespace/name``) and references (``namespace/name@spec``).

Names follow the Hugging Face Hub's repo-id rules, ASCII only, so a name is safe to
show, to put in a URL and to compare. A name never becomes a filesystem path: blobs
are addressed by digest and pulled files go where the user says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidNameError, InvalidVersionError

_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?", re.ASCII)
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
RESERVED_ALIASES = frozenset({"latest"})


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid ``namespace/name``; raise InvalidNameError otherwise."""
    if not isinstance(name, str):
        raise InvalidNameError(f"adapter name must be a string, not {type(name).__name__}")
    shown = name.encode("ascii", "backslashreplace").decode()
    if not name.isascii():
        raise InvalidNameError(f"adapter name {shown!r} contains non-ASCII characters")
    parts = name.split("/")
    if len(parts) != 2:
        raise InvalidNameError(f"adapter name {shown!r} must be exactly 'namespace/name'")
    for part in parts:
        if not _PART.fullmatch(part) or ".." in part or "--" in part:
            raise InvalidNameError(f"adapter name {shown!r} has an invalid part {part!r}")
    return name


def name_key(name: str) -> str:
    """Case-folded key: ``Acme/Sentiment`` and ``acme/sentiment`` are the same adapter."""
    return validate_name(name).lower()


def validate_alias(alias: str) -> str:
    from .versions import VersionSpec

    if not isinstance(alias, str) or not alias.isascii() or not _ALIAS.fullmatch(alias):
        raise InvalidNameError(
            f"alias {alias!r} is invalid",
            hint="aliases are lower-case ASCII: a letter, then letters, digits, '-' or '_' (e.g. prod)",
        )
    # an alias must read back as an alias in NS/NAME@alias, never as (or like) a version spec
    try:
        kind = VersionSpec.parse(alias).kind
    except InvalidVersionError:
        kind = "invalid"
    if alias in RESERVED_ALIASES or kind != "alias":
        raise InvalidNameError(f"alias {alias!r} is reserved or looks like a version",
                               hint="choose a word such as prod, staging or canary")
    return alias


@dataclass(frozen=True)
class AdapterRef:
    """A parsed ``namespace/name[@spec]``; ``spec`` is None when absent."""

    name: str
    spec: str | None = None

    def __str__(self) -> str:
        return self.name if self.spec is None else f"{self.name}@{self.spec}"


def parse_ref(text: str, *, default_spec: str | None = None) -> AdapterRef:
    """Parse ``namespace/name[@spec]``. The spec is validated by :mod:`versions`."""
    from .versions import VersionSpec

    if not isinstance(text, str):
        raise InvalidNameError(f"adapter reference must be a string, not {type(text).__name__}")
    name, sep, spec = text.partition("@")
    validate_name(name)
    if sep and not spec:
        raise InvalidNameError(f"{text!r} has an empty version after '@'",
                               hint="write NS/NAME alone for the latest, or NS/NAME@SPEC (1.2.0, ^1, prod)")
    spec_value = spec if sep else default_spec
    if spec_value is not None:
        VersionSpec.parse(spec_value)
    return AdapterRef(name, spec_value)


#: how many characters a typo may add or drop; the registry only reads names this close in length
TYPO_SLACK = 3


def typo_window(name: str) -> tuple[str, str, int, int]:
    """Where the names one typo away from ``name`` lie: their key starts with the first half
    of its key or ends with the last half, and their length is within TYPO_SLACK of its own;
    the registry reads only those (head, tail, shortest, longest)."""
    key = name_key(name)
    half = max(1, len(key) // 2)
    return key[:half], key[-half:], len(key) - TYPO_SLACK, len(key) + TYPO_SLACK


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``did you mean acme/sentiment?`` for a name that is not there, from the names that
    are (compared case-insensitively, as names are), or None when none is close."""
    import difflib

    by_key = {name_key(c): c for c in candidates}
    close = difflib.get_close_matches(name_key(name), list(by_key), n=3, cutoff=0.75)
    if not close:
        return None
    return "did you mean " + " or ".join(by_key[k] for k in close) + "?"

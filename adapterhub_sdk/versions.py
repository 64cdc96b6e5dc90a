"""Semantic versions and version specs.

A published version is a full semantic version (``1.2.3``, ``1.0.0-rc.1``) and never
changes. A spec picks versions: an exact version, a range (``^1.2``, ``~1.2``,
``>=1,<2``, a partial ``1.2`` meaning ``1.2.x``), ``latest``, or an alias that the
registry maps to one version. Pre-releases match only specs that name one, and
yanked versions match only an exact pin (the registry enforces the latter).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidVersionError

_NUM = r"0|[1-9]\d{0,8}"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION_RE = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?",
    re.ASCII,
)
_PARTIAL_RE = re.compile(
    rf"v?(?P<major>{_NUM})(?:\.(?P<minor>{_NUM}|[xX*]))?(?:\.(?P<patch>{_NUM}|[xX*]))?"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?",
    re.ASCII,
)
_CMP_RE = re.compile(r"(?P<op>>=|<=|>|<|==|=|!=)?\s*(?P<ver>\S+)", re.ASCII)


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version, ordered by semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        if not isinstance(text, str):
            raise InvalidVersionError(f"version must be a string, not {type(text).__name__}")
        m = _VERSION_RE.fullmatch(text.strip()) if text.isascii() else None
        if not m:
            raise InvalidVersionError(
                f"{text!r} is not a semantic version",
                hint="publish versions look like 1.0.0 or 1.0.0-rc.1",
            )
        pre = tuple(m["pre"].split(".")) if m["pre"] else ()
        for ident in pre:
            if ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
                raise InvalidVersionError(f"{text!r}: numeric pre-release part {ident!r} has a leading zero")
        return cls(int(m["major"]), int(m["minor"]), int(m["patch"]), pre, m["build"] or "")

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            s += "-" + ".".join(self.prerelease)
        if self.build:
            s += "+" + self.build
        return s

    def _key(self) -> tuple:
        pre: tuple = (1,)
        if self.prerelease:
            pre = (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease))
        return (self.major, self.minor, self.patch, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)


def _bound(text: str, spec: str) -> tuple[Version, int]:
    """Parse a possibly partial version; return its lowest version and how many parts were given."""
    m = _PARTIAL_RE.fullmatch(text)
    if not m:
        raise InvalidVersionError(f"{spec!r}: {text!r} is not a version")
    parts = [m["major"], m["minor"], m["patch"]]
    given = 0
    nums = []
    for p in parts:
        if p is None or p in ("x", "X", "*"):
            break
        given += 1
        nums.append(int(p))
    if m["pre"] and given < 3:
        raise InvalidVersionError(f"{spec!r}: a pre-release needs a full version")
    nums += [0] * (3 - len(nums))
    pre = tuple(m["pre"].split(".")) if m["pre"] else ()
    return Version(nums[0], nums[1], nums[2], pre), given


def _bump(v: Version, index: int) -> Version:
    if index == 0:
        return Version(v.major + 1, 0, 0, ("0",))
    if index == 1:
        return Version(v.major, v.minor + 1, 0, ("0",))
    return Version(v.major, v.minor, v.patch + 1, ("0",))


@dataclass(frozen=True)
class VersionSpec:
    """A parsed spec. ``kind`` is ``exact``, ``range``, ``latest`` or ``alias``."""

    text: str
    kind: str
    comparators: tuple[tuple[str, Version], ...] = ()
    exact: Version | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        if not isinstance(text, str) or not text.strip():
            raise InvalidVersionError("empty version spec")
        s = text.strip()
        if not s.isascii() or len(s) > 200:
            raise InvalidVersionError(f"version spec {text!r} is not valid")
        if s in ("latest", "*", "x"):
            return cls(s, "latest")
        if _VERSION_RE.fullmatch(s) or (s[:1] in "=v" and _VERSION_RE.fullmatch(s.lstrip("=v"))):
            v = Version.parse(s.lstrip("=v"))
            return cls(s, "exact", (("==", v),), exact=v)
        if re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", s) and not re.match(r"[vx]\d", s):
            return cls(s, "alias", alias=s)
        return cls(s, "range", tuple(cls._comparators(s)))

    @staticmethod
    def _comparators(s: str) -> list[tuple[str, Version]]:
        out: list[tuple[str, Version]] = []
        for raw in re.split(r"\s*,\s*|\s+(?=[<>=!^~])", s):
            part = raw.strip()
            if not part:
                raise InvalidVersionError(f"version spec {s!r} has an empty part")
            if part[0] in "^~":
                low, given = _bound(part[1:].strip(), s)
                if part[0] == "^":
                    # first non-zero of the given parts is the one that may not change
                    idx = 0 if low.major or given == 1 else (1 if low.minor or given == 2 else 2)
                else:
                    idx = 0 if given == 1 else 1
                out += [(">=", low), ("<", _bump(low, idx))]
                continue
            m = _CMP_RE.fullmatch(part)
            if not m:
                raise InvalidVersionError(f"version spec {s!r}: cannot read {part!r}")
            op = m["op"] or "="
            v, given = _bound(m["ver"], s)
            if op in ("=", "==") and given < 3:
                out += [(">=", v), ("<", _bump(v, given - 1))]
            elif op in ("=", "=="):
                out.append(("==", v))
            elif op == ">" and given < 3:
                out.append((">=", _bump(v, given - 1)))
            elif op == "<=" and given < 3:
                out.append(("<", _bump(v, given - 1)))
            else:
                out.append((op, v))
        return out

    def allows_prerelease(self) -> bool:
        return any(v.prerelease and v.prerelease != ("0",) for _, v in self.comparators)

    def pins(self, version: Version) -> bool:
        """Whether an exact spec designates ``version``: the same precedence and, when the
        spec spells build metadata (``1.0.0+build.8``), that build (``+build.7`` is another
        artifact, never taken for it)."""
        want = self.exact
        return (self.kind == "exact" and want is not None and version == want
                and (not want.build or version.build == want.build))

    def matches(self, version: Version) -> bool:
        """Whether ``version`` satisfies a range or exact spec (aliases resolve in the registry)."""
        if self.kind == "alias":
            return False
        if self.kind == "latest":
            return not version.is_prerelease
        if version.is_prerelease and self.kind == "range" and not self._pre_ok(version):
            return False
        for op, v in self.comparators:
            ok = {
                "==": version == v,
                "!=": version != v,
                ">=": version >= v,
                ">": version > v,
                "<=": version <= v,
                "<": version < v,
            }[op]
            if not ok:
                return False
        return True

    def _pre_ok(self, version: Version) -> bool:
        # A pre-release matches only when a comparator names a pre-release of the same x.y.z.
        return any(
            v.prerelease and v.prerelease != ("0",)
            and (v.major, v.minor, v.patch) == (version.major, version.minor, version.patch)
            for _, v in self.comparators
        )

    def best(self, versions: Iterable[Version]) -> Version | None:
        hits = [v for v in versions if self.matches(v)]
        return max(hits) if hits else None


def looks_like_spec(text: str) -> bool:
    try:
        return VersionSpec.parse(text).kind != "alias"
    except InvalidVersionError:
        return False

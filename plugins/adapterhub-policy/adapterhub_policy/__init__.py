"""adapterhub-policy: a team's publish rules, checked before anything is written.

The rules live in a TOML file whose path is in the environment variable
``ADAPTERHUB_POLICY``::

    allowed_licenses = ["apache-2.0", "mit"]          # license must be one of these
    allowed_base_fingerprints = ["3f2a9c1d"]          # base fingerprints, or prefixes >= 8 hex
    required_metrics = ["accuracy"]                   # names that must be in the metrics
    require_description = true                       # a non-empty description

Every rule is optional; a rule that is absent is not checked. With ``ADAPTERHUB_POLICY``
unset (or empty) the plugin accepts every publish. A policy file that cannot be read or
parsed, or holds an unknown key or a value of the wrong type, rejects every publish with a
reason naming the file: a broken policy never silently allows everything.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adapterhub_sdk as ah

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__version__ = "0.1.0"

ENV = "ADAPTERHUB_POLICY"
RULES = ("allowed_licenses", "allowed_base_fingerprints", "required_metrics", "require_description")
MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")

__all__ = ["ENV", "RULES", "Policy", "PolicyFileError", "check", "load_policy", "parse_policy",
           "policy_from_env", "validate_publish"]


class PolicyFileError(ValueError):
    """The policy file cannot be read, is not TOML, or does not follow the schema."""


@dataclass(frozen=True)
class Policy:
    """A team's publish rules; ``None`` means the rule is not checked."""

    path: Path | None = None
    allowed_licenses: tuple[str, ...] | None = None
    allowed_base_fingerprints: tuple[str, ...] | None = None
    required_metrics: tuple[str, ...] | None = None
    require_description: bool = False


def _str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PolicyFileError(f"policy file {path}: {key} must be a list of non-empty strings, "
                              f"not {value!r}")
    return tuple(v.strip() for v in value)


def _fingerprint(path: Path, i: int, value: str) -> str:
    fp = value.lower().removeprefix("sha256:")
    if not _HEX.fullmatch(fp) or not MIN_PREFIX <= len(fp) <= 64:
        raise PolicyFileError(f"policy file {path}: allowed_base_fingerprints[{i}] {value!r} is not a "
                              f"fingerprint or a prefix of at least {MIN_PREFIX} hex digits")
    return fp


def parse_policy(data: Mapping[str, Any], path: Path) -> Policy:
    """A Policy from the parsed TOML of ``path``; raises PolicyFileError for anything off-schema."""
    unknown = sorted(set(data) - set(RULES))
    if unknown:
        raise PolicyFileError(f"policy file {path}: unknown key {unknown[0]!r} "
                              f"(known: {', '.join(RULES)})")
    kw: dict[str, Any] = {}
    for key in ("allowed_licenses", "required_metrics"):
        if key in data:
            kw[key] = _str_list(path, key, data[key])
    if "allowed_base_fingerprints" in data:
        fps = _str_list(path, "allowed_base_fingerprints", data["allowed_base_fingerprints"])
        kw["allowed_base_fingerprints"] = tuple(_fingerprint(path, i, v) for i, v in enumerate(fps))
    if "require_description" in data:
        if not isinstance(data["require_description"], bool):
            raise PolicyFileError(f"policy file {path}: require_description must be true or false, "
                                  f"not {data['require_description']!r}")
        kw["require_description"] = data["require_description"]
    return Policy(path=path, **kw)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and check a policy file. Raises PolicyFileError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyFileError(f"policy file {p} cannot be read: {reason}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"policy file {p} is not valid TOML: {exc}") from exc
    return parse_policy(data, p)


def policy_from_env() -> Policy | None:
    """The policy named by ``ADAPTERHUB_POLICY``, or None when it is unset or empty."""
    raw = os.environ.get(ENV, "").strip()
    return load_policy(raw) if raw else None


def _listed(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(values) + "]"


def check(policy: Policy, manifest: ah.Manifest) -> list[str]:
    """Every rule ``manifest`` breaks, one line each, as ``rule <name>: <why>`` (empty: it passes)."""
    failed: list[str] = []
    if policy.allowed_licenses is not None:
        lic = manifest.license
        allowed = {a.lower() for a in policy.allowed_licenses}  # SPDX ids are case-insensitive
        if not lic:
            failed.append(f"rule allowed_licenses: no license given (pass --license; allowed: "
                          f"{_listed(policy.allowed_licenses)})")
        elif lic.lower() not in allowed:
            failed.append(f"rule allowed_licenses: license {lic!r} is not in {_listed(policy.allowed_licenses)}")
    if policy.allowed_base_fingerprints is not None:
        fp = (manifest.base.fingerprint or "").lower().removeprefix("sha256:")
        if not fp:
            failed.append("rule allowed_base_fingerprints: the adapter is not pinned to a base "
                          "fingerprint (pass --base)")
        elif not any(fp.startswith(prefix) for prefix in policy.allowed_base_fingerprints):
            failed.append(f"rule allowed_base_fingerprints: base {fp[:12]} is not in "
                          f"{_listed(policy.allowed_base_fingerprints)}")
    if policy.required_metrics is not None:
        missing = [m for m in policy.required_metrics if m not in (manifest.metrics or {})]
        if missing:
            failed.append(f"rule required_metrics: metric {', '.join(repr(m) for m in missing)} missing "
                          f"(pass --metric NAME=VALUE)")
    if policy.require_description and not (manifest.description or "").strip():
        failed.append("rule require_description: a description is required (pass --description)")
    return failed


@ah.hookimpl
def validate_publish(manifest, package):
    """Reject a publish that breaks the policy in ``ADAPTERHUB_POLICY`` (read on every publish)."""
    try:
        policy = policy_from_env()
    except PolicyFileError as exc:
        return f"{exc} (from {ENV}); fix the file or unset {ENV}"
    if policy is None:
        return None
    failed = check(policy, manifest)
    if not failed:
        return None
    more = f" (and {len(failed) - 1} more rule{'s' if len(failed) > 2 else ''} failed)" if len(failed) > 1 else ""
    return failed[0] + more

"""The registry: a SQL catalog (SQLite by default, PostgreSQL for teams) over a
content-addressed blob store.

A version becomes visible in one transaction that runs only after every blob it
references is stored, so a version is whole or absent whatever process dies when.

:class:`Registry` is the public façade; its parts, one job each, live beside it:
:mod:`.bases` (bases and what identifies them), :mod:`.publish` (the publish
transaction), :mod:`.query` (show, versions, list, aliases, yank), :mod:`.resolve`,
:mod:`.transfer` (pull, push) and :mod:`.lifecycle` (verify, gc).

Importing the package loads nothing else: each name below is imported when first used, so
that the parts written on :mod:`adapterhub_sdk.catalog`'s plain SQL (publish, transfer,
signatures) load without SQLAlchemy for :mod:`adapterhub_sdk.sqlite_registry`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import (
        T_ADAPTERS,
        T_ALIASES,
        T_BASES,
        T_FILES,
        T_FITS,
        T_REQS,
        T_SOURCES,
        T_TASKS,
        T_VERSIONS,
    )
    from ._registry import Registry
    from .publish import UnpinnedPublishWarning
    from .results import (
        MANIFEST_FILE,
        VERDICTS,
        GcReport,
        Match,
        PublishResult,
        VerifyReport,
        VersionInfo,
    )

_WHERE = {
    "MANIFEST_FILE": "results",
    "T_ADAPTERS": "_core",
    "T_ALIASES": "_core",
    "T_BASES": "_core",
    "T_FILES": "_core",
    "T_FITS": "_core",
    "T_REQS": "_core",
    "T_SOURCES": "_core",
    "T_TASKS": "_core",
    "T_VERSIONS": "_core",
    "UnpinnedPublishWarning": "publish",
    "VERDICTS": "results",
    "GcReport": "results",
    "Match": "results",
    "PublishResult": "results",
    "Registry": "_registry",
    "VerifyReport": "results",
    "VersionInfo": "results",
}

__all__ = [
    "MANIFEST_FILE",
    "T_ADAPTERS",
    "T_ALIASES",
    "T_BASES",
    "T_FILES",
    "T_FITS",
    "T_REQS",
    "T_SOURCES",
    "T_TASKS",
    "T_VERSIONS",
    "UnpinnedPublishWarning",
    "VERDICTS",
    "GcReport",
    "Match",
    "PublishResult",
    "Registry",
    "VerifyReport",
    "VersionInfo",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

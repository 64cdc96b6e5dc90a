"""The method API a plugin implements, and the shape check every method shares.

A method turns an adapter's config and tensor shapes into *requirements*: the base
tensors it touches and the shape each must have (``None`` for a dimension it does not
constrain). Checking requirements needs only the base's shape table, never its weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AdapterFormatError

if TYPE_CHECKING:
    from ..fingerprint import BaseFingerprint

Shape = tuple[int, ...]
#: base tensor name -> expected shape; ``None`` matches any size, ``[]`` only requires existence
Requirements = dict[str, list[int | None]]

PEFT_PREFIX = "base_model.model."


class AdapterMethod:
    """Base class for method plugins. Subclasses set ``name`` and override the methods."""

    #: short name used in manifests, ``--method`` filters and ``adapterhub plugins``
    name: str = ""
    #: PEFT ``peft_type`` values this method handles (upper case), if any
    peft_types: tuple[str, ...] = ()

    def detect(self, config: Mapping[str, Any]) -> str | None:
        """Return the variant name (e.g. ``"dora"``) when this method owns ``config``, else None."""
        if str(config.get("peft_type", "")).upper() in self.peft_types:
            return self.name
        return None

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> Requirements:
        """Base tensors this adapter touches and their expected shapes. Raise
        AdapterFormatError for a tensor the method does not recognise."""
        raise NotImplementedError

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        """Facts for the manifest: trainable parameters, rank, targets ..."""
        return {"trainable_params": sum(_numel(s) for s in tensors.values())}


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def strip_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def detect_method(config: Mapping[str, Any]) -> tuple[AdapterMethod, str]:
    from ..plugins import methods

    for method in methods():
        variant = method.detect(config)
        if variant:
            return method, variant
    raise AdapterFormatError(
        f"no installed method plugin recognises peft_type {config.get('peft_type')!r}",
        hint="install a plugin for this method ('adapterhub plugins' lists what is loaded)",
    )


def requirements_digest(req: Requirements) -> str:
    body = json.dumps(req, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def check_requirements(req: Mapping[str, list[int | None]], base: BaseFingerprint) -> list[str]:
    """Reasons why ``base`` cannot take an adapter with these requirements (empty: it fits)."""
    reasons: list[str] = []
    missing: list[str] = []
    for name in sorted(req):
        want = req[name]
        have = base.shape_of(name)
        if have is None:
            missing.append(name)
            continue
        if not want:  # existence is all the method could check
            continue
        if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want, have)):
            shown = [("*" if w is None else w) for w in want]
            if ("embed" in name or "lm_head" in name or "wte" in name) and want and want[0] not in (None, have[0]):
                reasons.append(f"vocabulary size: {name} has {have[0]} rows in the base, "
                               f"the adapter expects {want[0]}")
            else:
                reasons.append(f"shape: {name} is {list(have)} in the base, the adapter needs {shown}")
    if missing:
        modules = sorted({m.rsplit(".", 1)[0] for m in missing})
        more = f" (+{len(modules) - 3} more)" if len(modules) > 3 else ""
        reasons.insert(0, f"missing module: {', '.join(modules[:3])}{more} not in the base")
    return reasons

"""The method API a plugin implements, and the shape check every method shares.

A method turns an adapter's config and tensor shapes into *requirements*: the base
tensors it touches and the shape each must have (``None`` for a dimension it does not
constrain, ``[]`` for "must exist"). Checking requirements needs only the base's shape
table, never its weights. A few facts that are not one tensor have ``@`` names:
``@input_embeddings`` (the input embedding matrix), ``@num_layers``, ``@kv_width``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AdapterFormatError

if TYPE_CHECKING:
    from ..fingerprint import BaseFingerprint

Shape = tuple[int, ...]
#: base tensor name -> expected shape; ``None`` matches any size, ``[]`` only requires existence
Requirements = dict[str, list[int | None]]

PEFT_PREFIX = "base_model.model."
MAX_REASONS = 8  # shape mismatches listed one by one; the rest are counted
PSEUDO_LABELS = {
    "@input_embeddings": "input embeddings",
    "@num_layers": "number of layers",
    "@kv_width": "key/value width",
}


class AdapterMethod:
    """Base class for method plugins. Subclasses set ``name`` and override the methods."""

    #: short name used in manifests, ``--method`` filters and ``adapterhub plugins``
    name: str = ""
    #: PEFT ``peft_type`` values this method handles (upper case), if any
    peft_types: tuple[str, ...] = ()
    #: the family's variants (for runtime limits and docs)
    variants: tuple[str, ...] = ()

    def detect(self, config: Mapping[str, Any]) -> str | None:
        """Return the variant name (e.g. ``"dora"``) when this method owns ``config``, else None."""
        if str(config.get("peft_type", "")).upper() in self.peft_types:
            return self.name
        return None

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: BaseFingerprint | None = None) -> Requirements:
        """Base tensors this adapter touches and their expected shapes. ``base``, when given,
        is the base it is being published against (shapes and ``config``, no weights).
        Raise AdapterFormatError for a tensor the method does not recognise."""
        raise NotImplementedError

    def validate(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                 base: BaseFingerprint) -> list[str]:
        """Reasons the adapter does not fit ``base`` (empty: it fits)."""
        return check_requirements(self.requirements(config, tensors, base), base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        """Facts for the manifest: trainable parameters, rank, targets ..."""
        return {"trainable_params": sum(numel(s) for s in tensors.values())}

    def apply(self, model: Any, adapter_dir: str, config: Mapping[str, Any], adapter_name: str) -> Any:
        """Put the adapter on ``model`` and return the model. Only methods PEFT cannot load
        implement this; the default means "load with PEFT"."""
        raise NotImplementedError


def numel(shape: Shape | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n



def strip_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def group_by_module(tensors: Mapping[str, Shape], parts: str) -> dict[str, dict[str, Shape]]:
    """Split PEFT keys ``base_model.model.<module>.<part>[.weight]`` by module, for the
    parts matching the regex alternation ``parts``; other keys raise AdapterFormatError."""
    rx = re.compile(rf"(?P<module>.+)\.(?P<part>{parts})(?:\.(?P<param>weight|bias))?")
    out: dict[str, dict[str, Shape]] = {}
    for key, shape in tensors.items():
        m = rx.fullmatch(strip_prefix(key))
        if m is None:
            raise AdapterFormatError(f"unexpected tensor {key!r} for this adapter type",
                                     hint="the adapter file does not match its adapter_config.json")
        part = m["part"] + (".bias" if m["param"] == "bias" else "")
        out.setdefault(m["module"], {})[part] = shape
    return out


def split_full_copies(tensors: Mapping[str, Shape], adapter_parts: str) -> tuple[dict[str, Shape], Requirements]:
    """Separate ``modules_to_save``-style full tensor copies (``<module>.weight``) from the
    method's own tensors; return (method tensors, requirements for the copies).
    A copy of a wrapped layer (PEFT's ``save_embedding_layers``) is saved as
    ``<module>.base_layer.weight``; it stands for the base's ``<module>.weight``."""
    own = re.compile(rf"\.(?:{adapter_parts})(?:\.(?:weight|bias))?$")
    rest: dict[str, Shape] = {}
    req: Requirements = {}
    for key, shape in tensors.items():
        rel = strip_prefix(key)
        if own.search(rel) is None and rel.endswith((".weight", ".bias")):
            req[rel.replace(".base_layer.", ".")] = list(shape)
        else:
            rest[key] = shape
    return rest, req


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


def _label(name: str) -> str:
    return PSEUDO_LABELS.get(name, name)


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
            vocab = ("embed" in name or "lm_head" in name or "wte" in name) and not name.startswith("@")
            if vocab and want and want[0] not in (None, have[0]):
                reasons.append(f"vocabulary size: {name} has {have[0]} rows in the base, "
                               f"the adapter expects {want[0]}")
            else:
                reasons.append(f"shape: {_label(name)} is {list(have)} in the base, the adapter needs {shown}")
    if len(reasons) > MAX_REASONS:
        reasons = reasons[:MAX_REASONS] + [f"(+{len(reasons) - MAX_REASONS} more shape mismatches)"]
    if missing:
        modules = sorted({m if m.startswith("@") else m.rsplit(".", 1)[0] for m in missing})
        more = f" (+{len(modules) - 3} more)" if len(modules) > 3 else ""
        reasons.insert(0, f"missing module: {', '.join(_label(m) for m in modules[:3])}{more} not in the base")
    return reasons

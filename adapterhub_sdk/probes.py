"""Which requirement sets can fit a base, found through an index instead of by checking
every set ever published.

Each requirement set stores one *probe*: a key that every base it fits must have. It is
``NAME:D0xD1...`` for the first tensor (in name order) whose required shape is fully
given, else ``NAME`` for the first tensor it needs to exist, else ``""`` (only facts such
as ``@num_layers``: a candidate for every base). A base has a key ``NAME`` and
``NAME:SHAPE`` per tensor (tied names included; a kernel also its flattened 2-D shape), so a
set that fits it has its probe among
them: the sets to check against a new architecture are those whose probe is one of the
base's keys, a few per architecture rather than every set in the registry. Sound, not
exact: a candidate is still checked tensor by tensor (``check_requirements``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: the length of requirement_sets.probe
PROBE_MAX = 1024


def shape_key(name: str, shape: Iterable[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def requirement_probe(req: Mapping[str, Any]) -> str:
    """The probe of a requirement set (see the module docstring)."""
    named = sorted(n for n in req if not n.startswith("@"))
    for n in named:
        want = req[n]
        if want and all(isinstance(d, int) for d in want):
            key = shape_key(n, want)
            if len(key) <= PROBE_MAX:
                return key
    for n in named:
        if len(n) <= PROBE_MAX:
            return n
    return ""


def base_keys(shapes: Mapping[str, Iterable[int]], tied: Mapping[str, str]) -> list[str]:
    """Every probe a base answers to: each tensor's name, and its name with its shape."""
    keys: set[str] = {""}
    for n, s in shapes.items():
        keys.update(_keys(n, s))
    for alias, target in tied.items():
        if target in shapes:
            keys.update(_keys(alias, shapes[target]))
    return sorted(keys)


def _keys(name: str, shape: Iterable[int]) -> list[str]:
    """``NAME``, ``NAME:SHAPE`` and, for a kernel of more than two dimensions, its flattened
    ``NAME:OUTxIN_FLAT`` (what a set made without the base requires of a convolution that
    PEFT's LyCORIS, OFT, BOFT and AdaLoRA layers see flattened; methods.base.shape_fits)."""
    dims = list(shape)
    out = [name, shape_key(name, dims)]
    if len(dims) > 2:
        flat = 1
        for d in dims[1:]:
            flat *= d
        out.append(shape_key(name, [dims[0], flat]))
    return out

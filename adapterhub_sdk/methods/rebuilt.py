"""The generic check for a base known only by its tensors (a state dict or a custom model's
checkpoint: no transformers config to build it from).

The modules the adapter touches are rebuilt on the meta device from their weight shapes, and
PEFT's own injection says which adapter tensors, of which shapes, fit them. A weight's shape
does not always say the layer: a 2-D weight is tried as ``nn.Linear`` (out, in), as
transformers' ``Conv1D`` (in, out) and as ``nn.Embedding``; a 3- to 5-D one is a convolution
with one group. So the check is a refusal only where it cannot be a wrong guess: key names
agree under some guess, and no guess gives the adapter's shapes for a 2-D layer. Where names
never agree, or only a convolution disagrees (its groups are not in the checkpoint), the answer
is "cannot tell" and the generic method falls back to checking that the modules exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .base import PEFT_PREFIX, Shape, strip_prefix

_KINDS_2D = ("linear", "conv1d_t", "embedding")
_memo: dict[str, list[str] | None] = {}


def _layer(kind: str, shape: tuple[int, ...], bias: bool) -> Any:
    from torch import nn

    if len(shape) == 2:
        if kind == "conv1d_t":
            from transformers.pytorch_utils import Conv1D

            return Conv1D(shape[1], shape[0])  # weight (in, out)
        if kind == "embedding":
            return nn.Embedding(shape[0], shape[1])
        return nn.Linear(shape[1], shape[0], bias=bias)
    conv: Any = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(len(shape))
    if conv is None:
        return None
    return conv(shape[1], shape[0], tuple(shape[2:]), bias=bias)


def _build(base: Any, kinds: Mapping[str, str]) -> Any:
    """A module tree holding only the touched modules, as layers of the given kinds."""
    import torch
    from torch import nn

    root = nn.Module()
    with torch.device("meta"):
        for name in sorted(kinds):
            shape = base.shape_of(f"{name}.weight")
            layer = _layer(kinds[name], tuple(shape), base.shape_of(f"{name}.bias") is not None)
            if layer is None:
                return None
            parent = root
            *path, leaf = name.split(".")
            for part in path:
                child = parent._modules.get(part)
                if child is None:
                    child = nn.Module()
                    parent.add_module(part, child)
                parent = child
            if leaf in parent._modules:
                return None
            parent.add_module(leaf, layer)
    return root


def _owner(key: str, modules: list[str]) -> str | None:
    """The touched module a key belongs to (the longest that prefixes it), None for tuner state."""
    best = None
    for m in modules:
        if key.startswith(f"{m}.") and (best is None or len(m) > len(best)):
            best = m
    return best


def check_rebuilt(config: Mapping[str, Any], tensors: Mapping[str, Shape], base: Any, touched: list[str],
                  inject: Callable[..., tuple[dict[str, list[int]], Any]], tuner: bool) -> list[str] | None:
    """Reasons the adapter does not fit ``base`` (empty: it fits exactly as PEFT would build it),
    or None when the rebuilt model cannot tell."""
    touched = sorted(m for m in touched if (s := base.shape_of(f"{m}.weight")) is not None and len(s) >= 2)
    if not touched:
        return None
    memo_key = json.dumps([config, sorted((k, list(v)) for k, v in tensors.items()), base.digest, touched],
                          sort_keys=True, default=str)
    if memo_key in _memo:
        return _memo[memo_key]
    actual = {strip_prefix(k) if k.startswith(PEFT_PREFIX) else k.removeprefix("base_model."): list(s)
              for k, s in tensors.items()}
    # compare only what belongs to the touched modules or to the tuner; full copies
    # (modules_to_save) are checked as requirements on the base
    actual = {k: v for k, v in actual.items() if _owner(k, touched) is not None or "." not in k}

    def attempt(kinds: Mapping[str, str]) -> dict[str, list[int]] | None:
        model = _build(base, kinds)
        if model is None:
            return None
        try:
            expected, _ = inject(model, config, tuner=tuner)
        except Exception:  # noqa: BLE001 - PEFT cannot adapt this guess of the layer
            return None
        return expected

    def disagree(expected: Mapping[str, list[int]], module: str | None) -> tuple[bool, bool]:
        """(names differ, shapes differ) for one module's keys (None: the tuner's own)."""
        exp = {k: v for k, v in expected.items() if _owner(k, touched) == module}
        act = {k: v for k, v in actual.items() if _owner(k, touched) == module}
        return set(exp) != set(act), any(exp[k] != act[k] for k in set(exp) & set(act))

    kinds = {m: "linear" for m in touched}
    expected = attempt(kinds)
    for m in touched:  # try the other readings of a 2-D weight where this one disagrees
        if len(base.shape_of(f"{m}.weight")) != 2 or (expected is not None and disagree(expected, m) == (False, False)):
            continue
        named = None  # the first reading under which PEFT builds the adapter's tensor names
        if expected is not None and not disagree(expected, m)[0]:
            named = (kinds, expected)
        for kind in _KINDS_2D[1:]:
            trial = attempt({**kinds, m: kind})
            if trial is None:
                continue
            if disagree(trial, m) == (False, False):
                named = ({**kinds, m: kind}, trial)
                break
            if named is None and not disagree(trial, m)[0]:
                named = ({**kinds, m: kind}, trial)
        if named is not None:
            kinds, expected = named
    result: list[str] | None
    if expected is None:
        result = None
    else:
        verdicts = {m: disagree(expected, m) for m in [*touched, None]}
        if any(names for names, _ in verdicts.values()):
            result = None  # PEFT builds other tensors than the adapter has under every guess
        elif any(shapes and m is not None and len(base.shape_of(f"{m}.weight")) > 2
                 for m, (_, shapes) in verdicts.items()):
            result = None  # a convolution's groups could explain it
        else:
            result = [f"shape: {k} is {actual[k]} in the adapter, the base needs {expected[k]}"
                      for k in sorted(set(expected) & set(actual)) if expected[k] != actual[k]]
    if len(_memo) > 16:
        _memo.clear()
    _memo[memo_key] = result
    return result

"""LyCORIS-style methods from PEFT: LoHa (Hadamard product) and LoKr (Kronecker product)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import (
    AdapterMethod,
    Requirements,
    Shape,
    group_by_module,
    numel,
    one_of,
    pin_flattened,
    split_full_copies,
)

_LOHA = "hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2"
_LOKR = "lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2"


def _kernel(module: str, out_f: int, in_f: int, t: Shape, base: Any) -> list[list[int]]:
    """The kernel shapes behind a Tucker (``use_effective_conv2d``) core ``t`` of shape
    ``(r, r, k1, k2)``. PEFT stores a Conv1d's core as ``(r, r, k, 1)``: a trailing 1 is a
    Conv1d when the base says so, a Conv2d of kernel ``(k, 1)`` otherwise; without a base,
    both (empty: not a core)."""
    if len(t) != 4:
        return []
    if t[3] != 1:
        return [[out_f, in_f, t[2], t[3]]]
    have = base.shape_of(f"{module}.weight") if base is not None else None
    if have is not None and len(have) == 3:
        return [[out_f, in_f, t[2]]]
    if have is not None:
        return [[out_f, in_f, t[2], 1]]
    return [[out_f, in_f, t[2]], [out_f, in_f, t[2], 1]]


class LohaMethod(AdapterMethod):
    name = "loha"
    peft_types = ("LOHA",)
    target_parts = _LOHA  # validate checks coverage (AdapterMethod.target_parts)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, _LOHA)
        for module, p in group_by_module(own, _LOHA).items():
            w1a, w1b, t1 = p.get("hada_w1_a"), p.get("hada_w1_b"), p.get("hada_t1")
            if w1a is None or w1b is None or len(w1a) != 2 or len(w1b) != 2:
                req[f"{module}.weight"] = []
            elif t1 is None:  # Linear, or a convolution seen flattened: [out, in * k...]
                req[f"{module}.weight"] = [w1a[0], w1b[1]]
            else:  # convolution with a Tucker core: w1_a is [r, out], w1_b [r, in]
                req[f"{module}.weight"] = one_of(_kernel(module, w1a[1], w1b[1], t1, base)) or []
        return pin_flattened(req, base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()), "rank": config.get("r"),
                "alpha": config.get("alpha"), "targets": config.get("target_modules")}


class LokrMethod(AdapterMethod):
    name = "lokr"
    peft_types = ("LOKR",)
    target_parts = _LOKR  # validate checks coverage (AdapterMethod.target_parts)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, _LOKR)
        for module, p in group_by_module(own, _LOKR).items():
            req[f"{module}.weight"] = self._kernel_shape(module, p, base)
        return pin_flattened(req, base)

    @staticmethod
    def _kernel_shape(module: str, p: Mapping[str, Shape], base: Any) -> Any:
        """PEFT's LoKr weight is kron(w1, w2): w1 is ``(a, c)`` (whole or as w1_a @ w1_b) and
        w2 ``(b, d, k...)`` whole, ``(b, d*k...)`` as w2_a @ w2_b (a flattened kernel), or a
        Tucker core ``(r, r, k1, k2)`` with w2_a ``(r, b)`` and w2_b ``(r, d)``; the weight is
        ``(a*b, c*d, k...)``."""
        w1 = p.get("lokr_w1")
        if w1 is None and "lokr_w1_a" in p and "lokr_w1_b" in p:
            w1 = (p["lokr_w1_a"][0], p["lokr_w1_b"][-1])
        w2a, w2b, t2 = p.get("lokr_w2_a"), p.get("lokr_w2_b"), p.get("lokr_t2")
        if w1 is None or len(w1) != 2:
            return []
        if (w2 := p.get("lokr_w2")) is not None and len(w2) >= 2:
            return [w1[0] * w2[0], w1[1] * w2[1], *w2[2:]]
        if w2a is None or w2b is None or len(w2a) != 2 or len(w2b) != 2:
            return []
        if t2 is not None:
            kernels = _kernel(module, w2a[1], w2b[1], t2, base)
            return one_of([w1[0] * k[0], w1[1] * k[1], *k[2:]] for k in kernels) if kernels else []
        return [w1[0] * w2a[0], w1[1] * w2b[1]]

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()), "rank": config.get("r"),
                "alpha": config.get("alpha"), "decompose_factor": config.get("decompose_factor"),
                "targets": config.get("target_modules")}


@hookimpl
def register_methods(register):
    register(LohaMethod())
    register(LokrMethod())

"""Orthogonal fine-tuning: OFT and BOFT (butterfly OFT). Both rotate a module's input
in blocks, so the block layout fixes its input size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from .base import (
    AdapterMethod,
    Requirements,
    Shape,
    group_by_module,
    numel,
    pin_flattened,
    split_full_copies,
)


def _block_size(packed: int) -> int | None:
    """OFT stores each b x b skew-symmetric block as its b(b-1)/2 upper entries."""
    b = (1 + math.isqrt(1 + 8 * packed)) // 2
    return b if b * (b - 1) // 2 == packed else None


class OftMethod(AdapterMethod):
    name = "oft"
    peft_types = ("OFT",)
    target_parts = "oft_R|oft_s|oft_embedding_R"  # validate checks coverage (AdapterMethod.target_parts)
    #: an nn.Embedding's rotation is ``oft_embedding_R`` (it rotates the embedding dimension,
    #: the weight's second); a convolution's rotates its kernel flattened to in * k * k
    _PARTS = "oft_R|oft_s|oft_embedding_R"

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, self._PARTS)
        for module, p in group_by_module(own, self._PARTS).items():
            r = p.get("oft_R") or p.get("oft_embedding_R")
            in_f = None
            if r is not None and len(r) == 2 and not config.get("block_share"):
                b = _block_size(r[1])
                in_f = r[0] * b if b else None
            out = p.get("oft_s")
            shape: list[int | None] = [out[0] if out else None, in_f]
            req[f"{module}.weight"] = shape if any(d is not None for d in shape) else []
        return pin_flattened(req, base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "rank": config.get("r"), "block_size": config.get("oft_block_size"),
                "targets": config.get("target_modules")}


class BoftMethod(AdapterMethod):
    name = "boft"
    peft_types = ("BOFT",)
    target_parts = "boft_R|boft_s"  # validate checks coverage (AdapterMethod.target_parts)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        own, req = split_full_copies(tensors, "boft_R|boft_s")
        for module, p in group_by_module(own, "boft_R|boft_s").items():
            r, s = p.get("boft_R"), p.get("boft_s")
            in_f = r[1] * r[2] if r is not None and len(r) == 4 else None
            # the output scale is (out, 1) on a Linear, (1, out) on a Conv2d
            out = (s[1] if s[0] == 1 else s[0]) if s is not None and len(s) == 2 else None
            req[f"{module}.weight"] = [out, in_f] if (out or in_f) else []
        return pin_flattened(req, base)

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "block_size": config.get("boft_block_size"), "block_num": config.get("boft_block_num"),
                "butterfly_factor": config.get("boft_n_butterfly_factor"),
                "targets": config.get("target_modules")}


@hookimpl
def register_methods(register):
    register(OftMethod())
    register(BoftMethod())

"""The runtime half of a deployment: per-row LoRA on wrapped ``nn.Linear`` modules.

Each wrapped module keeps its adapters' A and B (scaling folded into B) by slot; a forward
hook adds ``x A_i B_i`` for row i, as one matmul when every row uses the same adapter and as
two batched matmuls over per-row stacks when they differ (smaller ranks zero-padded, rows
without an adapter given zeros: both add exact zeros)."""

from __future__ import annotations

import re
from typing import Any

LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>A|B)\.weight")


class RowSlots:
    """Which adapter slot each batch row uses during one forward (shared by all wrappers)."""

    def __init__(self) -> None:
        self.slots: list[int] | None = None  # per row; -1 = base only
        self.uniform: int | None = None  # set when every row uses the same slot
        self.key: tuple[int, ...] = ()  # the slots as a tuple: what stacked tensors are cached under

    def set(self, slots: list[int] | None) -> None:
        self.slots = slots
        self.key = tuple(slots or ())
        self.uniform = slots[0] if slots and all(s == slots[0] for s in slots) else None


class MultiLoraLinear:
    """Forward hook state for one wrapped ``nn.Linear``: y = base(x) + x A_i B_i per row i.

    A mixed batch runs as two batched matmuls over per-row stacks of A and B (rows without an
    adapter on this module get zeros, smaller ranks are zero-padded: both add exact zeros).
    The stacks of the last batch composition are kept while they take no more memory than
    the adapters resident on the module, so the decode steps of one generation reuse them."""

    def __init__(self, module: Any, rows: RowSlots):
        self.module = module
        self.rows = rows
        self.A: dict[int, Any] = {}  # slot -> [in, r]
        self.B: dict[int, Any] = {}  # slot -> [r, out], scaling folded in
        self.cached: tuple[tuple[int, ...], tuple[Any, Any] | None] | None = None  # (row slots, stacks)
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: tuple, y: Any) -> Any:
        rows = self.rows
        if rows.slots is None or not self.A:
            return y
        x = args[0]
        import torch

        if rows.uniform is not None:
            a = self.A.get(rows.uniform)
            if a is None:
                return y
            b = self.B[rows.uniform]
            if y.dtype != a.dtype:
                return y + ((x @ a) @ b).to(y.dtype)
            return torch.addmm(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]) @ a, b).view(y.shape)
        stacks = self._stacks(rows.key)
        if stacks is None:  # no row has an adapter on this module
            return y
        a, b = stacks
        n = x.shape[0]
        h = torch.bmm(x.reshape(n, -1, x.shape[-1]), a)  # [n, t, r]
        y3 = y.reshape(n, -1, y.shape[-1])
        if y.dtype != b.dtype:
            return (y3 + torch.bmm(h, b).to(y.dtype)).view(y.shape)
        return torch.baddbmm(y3, h, b).view(y.shape)

    def _stacks(self, key: tuple[int, ...]) -> tuple[Any, Any] | None:
        cached = self.cached
        if cached is not None and cached[0] == key:
            return cached[1]
        stacks = self._stack(key)
        size = 0 if stacks is None else sum(t.numel() * t.element_size() for t in stacks)
        resident = sum(self.nbytes(s) for s in self.A)
        self.cached = (key, stacks) if size <= resident else None
        return stacks

    def _stack(self, key: tuple[int, ...]) -> tuple[Any, Any] | None:
        import torch

        used = [self.A[s] for s in set(key) if s in self.A]
        if not used:
            return None
        r = max(a.shape[1] for a in used)
        if all(s in self.A and self.A[s].shape[1] == r for s in key):
            return torch.stack([self.A[s] for s in key]), torch.stack([self.B[s] for s in key])
        a0, b0 = used[0], self.B[next(s for s in key if s in self.A)]
        a = a0.new_zeros((len(key), a0.shape[0], r))
        b = b0.new_zeros((len(key), r, b0.shape[1]))
        for i, s in enumerate(key):
            if s in self.A:
                rank = self.A[s].shape[1]
                a[i, :, :rank] = self.A[s]
                b[i, :rank] = self.B[s]
        return a, b

    def cached_bytes(self) -> int:
        if self.cached is None or self.cached[1] is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.cached[1])

    def nbytes(self, slot: int) -> int:
        if slot not in self.A:
            return 0
        a, b = self.A[slot], self.B[slot]
        return a.numel() * a.element_size() + b.numel() * b.element_size()


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


__all__ = ["LORA_KEY", "MultiLoraLinear", "RowSlots", "pattern_value"]

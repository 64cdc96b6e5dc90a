"""The runtime half of a deployment: per-row LoRA-family updates on wrapped ``nn.Linear`` modules
(and LoRA on ``nn.Embedding``: :class:`MultiLoraEmbedding`).

Each wrapped module keeps its adapters' A and B (scaling, and DoRA's magnitude / norm, folded
into B) by slot, and per-slot vectors for what else PEFT computes on that module (a lora_B bias,
DoRA's rescale of the base output, IA3's output or input scaling: see
:mod:`~adapterhub_sdk.multilora_variants`). A forward hook adds them for row i, as one matmul
when every row uses the same adapter and as two batched matmuls over per-row stacks when they
differ (smaller ranks zero-padded, rows without an adapter given zeros and ones: both exact)."""

from __future__ import annotations

import re
from typing import Any

LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>A|B)\.weight")

#: per-slot vectors a module may carry, with the value a row without one gets (exact no-ops)
VECTORS = {"bias": 0.0, "dora": 0.0, "scale_out": 1.0, "scale_in": 1.0}


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
    """Forward hook state for one wrapped ``nn.Linear``; for row i with slot s:

    ``y = base(x * scale_in[s]) * scale_out[s] + dora[s] * (base(x) - bias) + x A_s B_s + bias[s]``

    (each term only where slot s has it; PEFT's order within one adapter). A mixed batch runs
    as two batched matmuls over per-row stacks of A and B plus per-row vector stacks. The
    stacks of the last batch composition are kept while they take no more memory than the
    adapters resident on the module, so the decode steps of one generation reuse them."""

    def __init__(self, module: Any, rows: RowSlots):
        self.module = module
        self.rows = rows
        self.A: dict[int, Any] = {}  # slot -> [in, r]
        self.B: dict[int, Any] = {}  # slot -> [r, out], scaling folded in
        self.vec: dict[str, dict[int, Any]] = {k: {} for k in VECTORS}  # kind -> slot -> [out] / [in]
        self.has_vectors = False  # any slot has a vector here (plain LoRA modules skip them)
        self.cached: tuple[tuple[int, ...], Any] | None = None  # (row slots, stacks)
        self.handle = module.register_forward_hook(self._hook)
        self.pre_handle: Any = None  # registered with the first input scale (IA3 feed-forward)

    def add_vector(self, kind: str, slot: int, v: Any) -> None:
        self.vec[kind][slot] = v
        self.has_vectors = True
        self.cached = None
        if kind == "scale_in" and self.pre_handle is None:
            self.pre_handle = self.module.register_forward_pre_hook(self._pre)

    def slots(self) -> set[int]:
        out = set(self.A)
        for d in self.vec.values():
            out |= set(d)
        return out

    def drop(self, slot: int) -> None:
        self.A.pop(slot, None)
        self.B.pop(slot, None)
        for d in self.vec.values():
            d.pop(slot, None)
        self.has_vectors = any(self.vec.values())
        self.cached = None

    def _pre(self, module: Any, args: tuple) -> Any:
        """IA3 on a feed-forward module scales the input: PEFT's ``(x.to(l) * l).to(x)``."""
        rows, scales = self.rows, self.vec["scale_in"]
        if rows.slots is None or not scales:
            return None
        x = args[0]
        if rows.uniform is not None:
            s = scales.get(rows.uniform)
        else:
            stacks = self._stacks(rows.key)
            s = None if stacks is None else stacks[2].get("scale_in")
            if s is not None:
                s = s.view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        if s is None:
            return None
        return ((x.to(s.dtype) * s).to(x.dtype), *args[1:])

    def _hook(self, module: Any, args: tuple, y: Any) -> Any:
        rows = self.rows
        if rows.slots is None or not (self.A or self.has_vectors):
            return y
        x = args[0]
        import torch

        if rows.uniform is not None:
            slot = rows.uniform
            a = self.A.get(slot)
            vecs = {k: d[slot] for k, d in self.vec.items() if slot in d and k != "scale_in"} \
                if self.has_vectors else {}
            if a is None and not vecs:
                return y
            if not vecs and a is not None:
                b = self.B[slot]
                if y.dtype != a.dtype:  # a half-precision base: PEFT runs the adapter in float32, adds, casts back
                    return (y.to(a.dtype) + (x.to(a.dtype) @ a) @ b).to(y.dtype)
                return torch.addmm(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]) @ a, b).view(y.shape)
            return self._apply(x, y, a, self.B.get(slot), vecs)
        stacks = self._stacks(rows.key)
        if stacks is None:  # no row has an adapter on this module
            return y
        a, b, vecs = stacks
        n = x.shape[0]
        out_vecs = {k: v.view(n, 1, -1) for k, v in vecs.items() if k != "scale_in"}
        x3 = x.reshape(n, -1, x.shape[-1])
        y3 = y.reshape(n, -1, y.shape[-1])
        if out_vecs:
            return self._apply(x3, y3, a, b, out_vecs, batched=True).view(y.shape)
        if a is None:
            return y
        if y.dtype != a.dtype:
            return (y3.to(a.dtype) + torch.bmm(torch.bmm(x3.to(a.dtype), a), b)).to(y.dtype).view(y.shape)
        return torch.baddbmm(y3, torch.bmm(x3, a), b).view(y.shape)  # h = x A: [n, t, r]

    def _apply(self, x: Any, y: Any, a: Any, b: Any, vecs: dict[str, Any], batched: bool = False) -> Any:
        """The update with vectors: IA3's output scale, DoRA's rescale, the low-rank term, the lora_B
        bias; in the adapter's dtype (float32 on a half-precision base, as PEFT), cast back once."""
        import torch

        cd = next(iter(vecs.values())).dtype  # vectors, A and B share it: at least float32
        out = y.to(cd)
        if "scale_out" in vecs:
            out = out * vecs["scale_out"]  # PEFT: (result * ia3_l).to(result dtype)
        if "dora" in vecs:
            bias = self.module.bias
            base = y if bias is None else y - bias  # PEFT subtracts in the base output's dtype
            out = out + vecs["dora"] * base.to(cd)
        if a is not None:
            xc = x.to(cd)
            out = out + (torch.bmm(torch.bmm(xc, a), b) if batched else (xc @ a) @ b)
        if "bias" in vecs:
            out = out + vecs["bias"]
        return out.to(y.dtype)

    def _stacks(self, key: tuple[int, ...]) -> tuple[Any, Any, dict[str, Any]] | None:
        cached = self.cached
        if cached is not None and cached[0] == key:
            return cached[1]
        stacks = self._stack(key)
        size = 0 if stacks is None else _size(stacks)
        resident = sum(self.nbytes(s) for s in self.slots())
        self.cached = (key, stacks) if size <= resident else None
        return stacks

    def _stack(self, key: tuple[int, ...]) -> tuple[Any, Any, dict[str, Any]] | None:
        import torch

        vecs = {}
        for kind, d in self.vec.items():
            if any(s in d for s in key):
                ref = next(d[s] for s in key if s in d)
                vecs[kind] = torch.stack([d[s] if s in d else torch.full_like(ref, VECTORS[kind]) for s in key])
        used = [self.A[s] for s in set(key) if s in self.A]
        if not used:
            return None if not vecs else (None, None, vecs)
        r = max(a.shape[1] for a in used)
        if all(s in self.A and self.A[s].shape[1] == r for s in key):
            return torch.stack([self.A[s] for s in key]), torch.stack([self.B[s] for s in key]), vecs
        a0, b0 = used[0], self.B[next(s for s in key if s in self.A)]
        a = a0.new_zeros((len(key), a0.shape[0], r))
        b = b0.new_zeros((len(key), r, b0.shape[1]))
        for i, s in enumerate(key):
            if s in self.A:
                rank = self.A[s].shape[1]
                a[i, :, :rank] = self.A[s]
                b[i, :rank] = self.B[s]
        return a, b, vecs

    def cached_bytes(self) -> int:
        if self.cached is None or self.cached[1] is None:
            return 0
        return _size(self.cached[1])

    def nbytes(self, slot: int) -> int:
        ts = [d[slot] for d in (self.A, self.B, *self.vec.values()) if slot in d]
        return sum(t.numel() * t.element_size() for t in ts)


class MultiLoraEmbedding:
    """Forward hook state for one wrapped ``nn.Embedding`` (PEFT's ``lora.Embedding``); row i with slot s:

    ``y = embed_W_s(x) + (embed(x, A_s) @ B_s) * scaling_s * embed_scale``

    A_s is ``lora_embedding_A`` transposed ([vocab, r]), looked up with the base module's own
    ``padding_idx`` / ``max_norm`` / ``norm_type`` as PEFT's ``_embed`` does; B_s is
    ``lora_embedding_B`` transposed ([r, dim]); ``embed_scale`` only where the base module has a
    scalar one (a scaled word embedding); W_s the adapter's saved copy of the base weights where
    it differs from the base's (PEFT loads that copy), else the base's. Adapter tensors are in
    float32 on a half-precision base and the sum is cast back once, as PEFT. Rows of one slot
    are computed together (PEFT's sub-batches), so a mixed batch costs one lookup per adapter."""

    def __init__(self, module: Any, rows: RowSlots):
        self.module = module
        self.rows = rows
        self.A: dict[int, Any] = {}  # slot -> [vocab, r]
        self.B: dict[int, Any] = {}  # slot -> [r, dim]
        self.scaling: dict[int, float] = {}
        self.weight: dict[int, Any] = {}  # slot -> the adapter's copy of the base weights (where it differs)
        self._inner = False  # running the base forward on a copy: this hook stays out of it
        self.handle = module.register_forward_hook(self._hook)

    def slots(self) -> set[int]:
        return set(self.A)

    def drop(self, slot: int) -> None:
        for d in (self.A, self.B, self.scaling, self.weight):
            d.pop(slot, None)

    def delta(self, slot: int, x: Any) -> Any:
        """PEFT's ``(_embed(x, A^T) @ B^T) * scaling`` (times the module's embed_scale) for slot ``slot``."""
        import torch.nn.functional as F

        m = self.module
        h = F.embedding(x, self.A[slot], padding_idx=m.padding_idx, max_norm=m.max_norm, norm_type=m.norm_type,
                        scale_grad_by_freq=m.scale_grad_by_freq, sparse=m.sparse)
        out = (h @ self.B[slot]) * self.scaling[slot]
        scale = embed_scale(m)
        return out if scale is None else out * scale.to(out.dtype)

    def _rows(self, slot: int, x: Any, y: Any) -> Any:
        w = self.weight.get(slot)
        if w is not None:
            from torch.nn.utils.stateless import _reparametrize_module

            self._inner = True
            try:  # the module's own forward (scaling and lookup options included) on the adapter's copy;
                # ``forward`` itself, not ``__call__``: no hook of the module (another adapter's
                # modules_to_save copy, this one) runs on these rows, which are a subset of the batch
                with _reparametrize_module(self.module, {"weight": w}):
                    y = self.module.forward(x)
            finally:
                self._inner = False
        return (y + self.delta(slot, x)).to(y.dtype)

    def _hook(self, module: Any, args: tuple, y: Any) -> Any:
        rows = self.rows
        if rows.slots is None or not self.A or self._inner:
            return y
        x = args[0]
        if rows.uniform is not None:
            return self._rows(rows.uniform, x, y) if rows.uniform in self.A else y
        import torch

        for slot in sorted(set(rows.slots) & set(self.A)):
            at = torch.tensor([i for i, s in enumerate(rows.slots) if s == slot], device=y.device)
            y = y.index_copy(0, at, self._rows(slot, x.index_select(0, at), y.index_select(0, at)))
        return y

    def cached_bytes(self) -> int:
        return 0

    def nbytes(self, slot: int) -> int:
        ts = [d[slot] for d in (self.A, self.B, self.weight) if slot in d]
        return sum(t.numel() * t.element_size() for t in ts)


def embed_scale(module: Any) -> Any:
    """The scale a scaled word embedding applies in its forward, as PEFT reads it (``embed_scale``:
    a number, or a one-element tensor; anything else PEFT ignores), else None."""
    import torch

    s = getattr(module, "embed_scale", None)
    if isinstance(s, (int, float)):
        return torch.tensor(s, device=module.weight.device, dtype=module.weight.dtype)
    if isinstance(s, torch.Tensor) and s.numel() == 1:
        return s
    return None


def _size(stacks: tuple[Any, Any, dict[str, Any]]) -> int:
    a, b, vecs = stacks
    ts = [t for t in (a, b, *vecs.values()) if t is not None]
    return sum(t.numel() * t.element_size() for t in ts)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


__all__ = ["LORA_KEY", "VECTORS", "MultiLoraEmbedding", "MultiLoraLinear", "RowSlots", "embed_scale",
           "pattern_value"]

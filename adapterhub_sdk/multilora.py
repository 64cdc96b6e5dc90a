"""The runtime half of a deployment: per-row LoRA-family updates on wrapped ``nn.Linear`` modules
(and LoRA on ``nn.Embedding``: :class:`MultiLoraEmbedding`).

Each wrapped module keeps its adapters' ``lora_A`` / ``lora_B`` weights as PEFT holds them
(A [r, in], B [out, r], in float32 on a half-precision base) with the scaling apart, and
per-slot vectors for what else PEFT computes on that module (a lora_B bias, DoRA's
``m / ||W + s B A||``, IA3's output or input scaling: see :mod:`~adapterhub_sdk.multilora_variants`).
A forward hook computes each row's output with the operations PEFT's ``lora.Linear.forward``
runs for that row's adapter alone, in its order and dtypes: ``F.linear`` on A, then on B, times
the scaling, added to the base output, cast back once. A mixed batch runs that per adapter on
its rows (as PEFT's own mixed batches do): batching adapters into one matmul (zero-padded
stacks, ``bmm``) rounds differently from PEFT's matmul, on half-precision bases and float32 alike."""

from __future__ import annotations

import re
from typing import Any

LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>A|B)\.weight")

#: the kinds of per-slot vectors a module may carry: lora_B's bias, DoRA's m / ||W + s B A||, IA3's scales
VECTORS = ("bias", "dora", "scale_out", "scale_in")


class RowSlots:
    """Which adapter slot each batch row uses during one forward (shared by all wrappers)."""

    def __init__(self) -> None:
        self.slots: list[int] | None = None  # per row; -1 = base only
        self.uniform: int | None = None  # set when every row uses the same slot
        self.key: tuple[int, ...] = ()  # the slots as a tuple
        self._groups: tuple[tuple[int, ...], Any, list[tuple[int, Any]]] | None = None  # (key, device, groups)

    def set(self, slots: list[int] | None) -> None:
        self.slots = slots
        self.key = tuple(slots or ())
        self.uniform = slots[0] if slots and all(s == slots[0] for s in slots) else None

    def groups(self, device: Any) -> list[tuple[int, Any]]:
        """(slot, rows) for each adapter slot in the batch, rows a slice where they are adjacent,
        else an index tensor on ``device``; kept while the same composition runs on (decode steps)."""
        g = self._groups
        if g is not None and g[0] == self.key and g[1] == device:
            return g[2]
        import torch

        at: dict[int, list[int]] = {}
        for i, s in enumerate(self.key):
            if s >= 0:
                at.setdefault(s, []).append(i)
        out: list[tuple[int, Any]] = []
        for s, idx in at.items():
            adjacent = idx[-1] - idx[0] == len(idx) - 1
            out.append((s, slice(idx[0], idx[-1] + 1) if adjacent else torch.tensor(idx, device=device)))
        self._groups = (self.key, device, out)
        return out


def batch_rows(rows: RowSlots, module: Any, x: Any, y: Any | None = None) -> tuple[Any, Any]:
    """``x`` (and the module's output ``y``) with one row per batch row, for a mixed batch's
    per-row updates. A module called once for the whole batch with a batch dimension of 1 (a
    position embedding looked up with ``position_ids`` of shape [1, T], broadcast by the model
    afterwards) gives every row that one input: expanded, ``y`` as a fresh tensor, so that each
    row's adapter update lands on its own row and no other. Any other row count (a module called
    on a flattened [B*T, ...] input) cannot be told apart per row: refused, never guessed."""
    n = len(rows.slots or ())
    if x.shape[0] == n and (y is None or y.shape[0] == n):
        return x, y
    if x.dim() >= 1 and x.shape[0] == 1 and (y is None or y.shape[0] in (1, n)):  # n: another hook expanded it
        x = x.expand(n, *x.shape[1:])
        return x, (y.expand(n, *y.shape[1:]).clone() if y is not None and y.shape[0] == 1 else y)
    from .errors import IncompatibleAdapterError

    name = type(module).__name__
    raise IncompatibleAdapterError(
        f"a batch of {n} rows on different adapters reached a {name} called with {x.shape[0]} rows: which row "
        "is whose cannot be told there, so no adapter is applied by guess",
        reasons=[f"{name} input of {tuple(x.shape)} for {n} rows"],
        hint="run the rows of each adapter as their own batch (one adapter per batch) for this model")


class MultiLoraLinear:
    """Forward hook state for one wrapped ``nn.Linear``; rows with slot s get what PEFT's layer
    computes with that adapter alone (``peft/tuners/lora/layer.py``, ``Linear.forward`` and its
    DoRA variant; ``tuners/ia3/layer.py``), with ``xa = x.to(A.dtype)`` and ``h = F.linear(F.linear(xa,
    A), B, b)``:

    - LoRA / rsLoRA / ``lora_bias``: ``(y + h * s).to(y.dtype)``
    - DoRA: ``(y + ((d - 1) * (y - bias) + d * h * s)).to(y.dtype)`` with ``d = m / ||W + s B A||``
    - IA3: ``(y * l).to(y.dtype)``, or the input scaled (``_pre``) on a feed-forward module."""

    def __init__(self, module: Any, rows: RowSlots):
        self.module = module
        self.rows = rows
        self.A: dict[int, Any] = {}  # slot -> lora_A.weight [r, in]
        self.B: dict[int, Any] = {}  # slot -> lora_B.weight [out, r], unscaled
        self.scaling: dict[int, float] = {}  # slot -> PEFT's scaling (alpha / r, alpha / sqrt(r))
        self.vec: dict[str, dict[int, Any]] = {k: {} for k in VECTORS}  # kind -> slot -> [out] / [in]
        self.cached = None  # nothing is stacked per batch (kept for callers that reset it)
        self.handle = module.register_forward_hook(self._hook)
        self.pre_handle: Any = None  # registered with the first input scale (IA3 feed-forward)

    def add_vector(self, kind: str, slot: int, v: Any) -> None:
        self.vec[kind][slot] = v
        if kind == "scale_in" and self.pre_handle is None:
            self.pre_handle = self.module.register_forward_pre_hook(self._pre)

    def slots(self) -> set[int]:
        out = set(self.A)
        for d in self.vec.values():
            out |= set(d)
        return out

    def drop(self, slot: int) -> None:
        for d in (self.A, self.B, self.scaling, *self.vec.values()):
            d.pop(slot, None)

    def _pre(self, module: Any, args: tuple) -> Any:
        """IA3 on a feed-forward module scales the input: PEFT's ``(x.to(l) * l).to(x)``."""
        rows, scales = self.rows, self.vec["scale_in"]
        if rows.slots is None or not scales:
            return None
        x = args[0]
        if rows.uniform is not None:
            s = scales.get(rows.uniform)
            return None if s is None else (((x.to(s.dtype) * s).to(x.dtype)), *args[1:])
        if not any(slot in scales for slot, _ in rows.groups(x.device)):
            return None
        x, _ = batch_rows(rows, module, x)
        out = None
        for slot, at in rows.groups(x.device):
            s = scales.get(slot)
            if s is not None:
                out = x.clone() if out is None else out
                out[at] = (x[at].to(s.dtype) * s).to(x.dtype)
        return None if out is None else (out, *args[1:])

    def _rows(self, slot: int, x: Any, y: Any) -> Any:
        """PEFT's output for adapter ``slot`` on rows ``x`` whose base output is ``y`` (None: ``y`` as
        is). Plain LoRA writes it into ``y``: ``y.add_(h)`` computes ``y + h`` in h's dtype and casts
        once into y's, which is what PEFT's ``(y + h).to(y.dtype)`` rounds to, without the copies."""
        a = self.A.get(slot)
        if a is None:
            scale = self.vec["scale_out"].get(slot)
            return None if scale is None else (y * scale).to(y.dtype)  # IA3: (result * l).to(result dtype)
        import torch.nn.functional as F

        xa = x if x.dtype == a.dtype else x.to(a.dtype)  # PEFT's _cast_input_dtype
        h = F.linear(F.linear(xa, a), self.B[slot], self.vec["bias"].get(slot))  # lora_B(lora_A(dropout(x)))
        d = self.vec["dora"].get(slot)
        if d is None:
            return y.add_(h.mul_(self.scaling[slot]))
        bias = self.module.bias
        base = y if bias is None else y - bias  # in the base output's dtype, as PEFT
        return (y + ((d - 1) * base + d * h * self.scaling[slot])).to(y.dtype)

    def _hook(self, module: Any, args: tuple, y: Any) -> Any:
        rows = self.rows
        if rows.slots is None:
            return y
        x = args[0]
        if rows.uniform is not None:
            out = self._rows(rows.uniform, x, y) if rows.uniform >= 0 else None
            return y if out is None else out
        here = self.slots()
        if not any(slot in here for slot, _ in rows.groups(x.device)):
            return y  # no row's adapter touches this module: the base's output, whatever its shape
        x, y = batch_rows(rows, module, x, y)
        a = next(iter(self.A.values()), None)  # every slot's A here has the one adapter dtype
        xa = x if a is None or x.dtype == a.dtype else x.to(a.dtype)  # cast once: per element, the same
        for slot, at in rows.groups(x.device):
            if slot in here:
                part = y[at]  # a view where the rows are adjacent, else a copy
                new = self._rows(slot, xa[at] if slot in self.A else x[at], part)
                if new is not None and (new is not part or not isinstance(at, slice)):
                    y[at] = new  # the module's fresh output, other rows untouched
        return y

    def cached_bytes(self) -> int:
        return 0

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

        if not set(rows.slots) & set(self.A):
            return y
        x, y = batch_rows(rows, module, x, y)
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


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


__all__ = ["LORA_KEY", "VECTORS", "MultiLoraEmbedding", "MultiLoraLinear", "RowSlots", "embed_scale",
           "pattern_value"]

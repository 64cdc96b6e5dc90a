"""What each LoRA-family variant and IA3 put on a deployment's modules, computed as PEFT does.

:func:`prepare` turns a checked adapter (config + tensors) into per-module updates for
:class:`~adapterhub_sdk.multilora.MultiLoraLinear` and per-module trained copies for
:class:`ModuleCopies`. For one row with adapter s (PEFT 0.17+, ``tuners/lora/layer.py``,
``tuners/lora/dora.py``, ``tuners/ia3/layer.py``, ``utils/other.py``):

- LoRA / rsLoRA: ``y + (x A^T B^T) s`` (s = alpha/r, alpha/sqrt(r)); ``lora_bias``: ``y + (x A^T B^T + b_B) s``.
- DoRA: ``y + ((m/n - 1)(y - bias) + (m/n) (x A^T B^T) s)`` with ``n = ||W + s B A||`` per output
  feature (PEFT recomputes it each forward from the unmerged weight, ``lora_B(lora_A(I))``, in the
  adapter's float32; here it is computed once, at attach, with the same operations).
- IA3: ``y * l`` (the bias scaled too), or ``base(x * l)`` for a feed-forward module (l of
  shape ``(1, in)``, as PEFT saved it).
- ``modules_to_save``: the row's output is the adapter's trained copy of the module's.
- LoRA / rsLoRA on an ``nn.Embedding``: ``y + s (embed(x, A^T) B^T)`` (times a scaled
  embedding's ``embed_scale``), the lookup with the base module's ``padding_idx`` / ``max_norm``;
  a saved copy of the base embedding (PEFT's ``save_embedding_layers``) is what PEFT loads into
  the base, so where it differs from the base's weights the row uses it. DoRA, ``lora_bias`` and
  ``ensure_weight_tying`` on an embedding are refused (:func:`embedding_refusals`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import AdapterFormatError, IncompatibleAdapterError
from .methods.base import strip_prefix
from .multilora import MultiLoraEmbedding, MultiLoraLinear, RowSlots, pattern_value

_HINT = "load it with ah.load_adapter (PEFT) outside a Deployment"
_LORA_PART = re.compile(r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector"
                        r"|base_layer\.weight)")  # the last: PEFT's save_embedding_layers copy of lm_head
_IA3_PART = re.compile(r"(?P<module>.+)\.ia3_l")
_EMBED_PART = re.compile(r"(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B|base_layer\.weight)")


@dataclass
class ModuleUpdate:
    """One adapter's update of one ``nn.Linear``: PEFT's lora_A.weight [r, in] and lora_B.weight
    [out, r] (unscaled), its scaling, and vectors."""

    a: Any = None
    b: Any = None
    scaling: float = 1.0
    vec: dict[str, Any] = field(default_factory=dict)  # kind (multilora.VECTORS) -> [out] or [in]


@dataclass
class EmbeddingUpdate:
    """One adapter's LoRA on one ``nn.Embedding``: A [vocab, r], B [r, dim], PEFT's scaling apart
    (PEFT multiplies after the matmul), and the adapter's copy of the base weights where it differs."""

    a: Any
    b: Any
    scaling: float
    weight: Any = None


@dataclass
class Prepared:
    """Everything one adapter puts on a deployment's modules, checked and on the model's device."""

    linear: dict[str, ModuleUpdate] = field(default_factory=dict)
    copies: dict[str, Any] = field(default_factory=dict)  # module name -> trained copy (nn.Module)
    embeddings: dict[str, EmbeddingUpdate] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        ranks = [u.a.shape[0] for u in self.linear.values() if u.a is not None]
        return max([*ranks, *(u.a.shape[1] for u in self.embeddings.values())], default=0)

    @property
    def modules(self) -> int:
        return len(set(self.linear) | set(self.copies) | set(self.embeddings))


class ModuleCopies:
    """Forward hook on a module some adapters replace (``modules_to_save``): rows whose slot
    has a copy get that copy's output, computed on their rows only; other rows keep the base's."""

    def __init__(self, module: Any, rows: RowSlots):
        self.module = module
        self.rows = rows
        self.copies: dict[int, Any] = {}
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: tuple, y: Any) -> Any:
        rows = self.rows
        if rows.slots is None or not self.copies:
            return y
        x = args[0]
        if rows.uniform is not None:
            c = self.copies.get(rows.uniform)
            return y if c is None else c(x)
        import torch

        from .multilora import batch_rows

        if not set(rows.slots) & set(self.copies):
            return y
        x, y = batch_rows(rows, module, x, y)
        for slot, c in self.copies.items():
            idx = [i for i, s in enumerate(rows.slots) if s == slot]
            if idx:
                at = torch.tensor(idx, device=y.device)
                y = y.index_copy(0, at, c(x.index_select(0, at)).to(y.dtype))
        return y

    def nbytes(self, slot: int) -> int:
        c = self.copies.get(slot)
        return 0 if c is None else sum(t.numel() * t.element_size() for t in c.state_dict().values())


def prepare(model: Any, config: Mapping[str, Any], tensors: Mapping[str, Any],
            base_value: Callable[[Any], Any] | None = None) -> Prepared:
    """Per-module updates of an adapter whose pin, digests and values were checked already.
    ``base_value(t)``: the base's own value of the model's tensor ``t`` (where an adapter is
    merged into it, what it held before; default ``t``): everything computed from the base's
    weights (DoRA's norm, an embedding copy's comparison, a trained copy's other parameters)
    reads it, never a merged weight. Raises IncompatibleAdapterError (what this runtime would
    not compute as PEFT does) or AdapterFormatError."""
    own: Callable[[Any], Any] = base_value or (lambda t: t)
    from .lora_options import deployment_refusals, peft_type_of, saved_module

    peft_type = peft_type_of(config)
    if peft_type not in ("IA3", "LORA", ""):
        raise IncompatibleAdapterError(f"this runtime serves LoRA and IA3 adapters; this one is {peft_type}",
                                       hint=_HINT)
    part = _IA3_PART if peft_type == "IA3" else _LORA_PART
    refused = deployment_refusals(config)
    if refused:  # PEFT would compute something this runtime does not: refuse, never approximate
        raise IncompatibleAdapterError(f"this runtime serves LoRA/rsLoRA/DoRA/IA3; the adapter {refused[0]}",
                                       reasons=refused, hint=_HINT)
    embedded = sorted({strip_prefix(k).split(".lora_embedding_")[0] for k in tensors if ".lora_embedding_" in k})
    why = [r for module in embedded for r in embedding_refusals(config, module)]
    if why:
        raise IncompatibleAdapterError(f"runtime 'transformers' does not serve it as PEFT computes it: {why[0]}",
                                       reasons=[f"runtime 'transformers' does not serve it as PEFT computes it: {r}"
                                                for r in why], hint=_HINT)
    parts: dict[str, dict[str, Any]] = {}
    saved: dict[str, dict[str, Any]] = {}
    emb: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        rel = strip_prefix(key)
        m = part.fullmatch(rel)
        e = _EMBED_PART.fullmatch(rel)
        if e is not None and e["module"] in embedded:
            emb.setdefault(e["module"], {})[e["part"]] = t
        elif m is not None:
            parts.setdefault(m["module"], {})[m["part"] if peft_type != "IA3" else "l"] = t
        elif "." in rel and saved_module(config, rel.rsplit(".", 1)[0]) == rel.rsplit(".", 1)[0]:
            module, param = rel.rsplit(".", 1)
            saved.setdefault(module, {})[param] = t
        elif rel.endswith(".lora_velora_embed"):
            continue  # VeLoRA's buffer for the backward pass; its forward is plain LoRA
        else:
            kind = "an IA3 vector" if peft_type == "IA3" else "a LoRA weight"
            raise IncompatibleAdapterError(f"tensor {key!r} is not {kind} or a modules_to_save copy this runtime "
                                           "can serve", hint=_HINT)
    out = Prepared()
    for module_name, p in emb.items():
        if module_name in parts or saved_module(config, module_name) is not None:
            raise IncompatibleAdapterError(f"{module_name} has both LoRA on the embedding and other tensors "
                                           "(modules_to_save, a Linear LoRA); PEFT cannot load that either", hint=_HINT)
        out.embeddings[module_name] = _embedding(model, config, module_name, p, own)
    for module_name, p in parts.items():
        target = _linear(model, module_name)
        out.linear[module_name] = _ia3(module_name, target, p["l"]) if peft_type == "IA3" else \
            _lora(config, module_name, target, p, own)
    for module_name, params in saved.items():
        if module_name in parts:
            raise IncompatibleAdapterError(f"{module_name} is both adapted and saved whole (modules_to_save); "
                                           "this runtime serves one or the other", hint=_HINT)
        out.copies[module_name] = _copy(model, module_name, params, own)
    return out


def _module(model: Any, module_name: str, kind: type, wrong: str) -> Any:
    """The base's module ``module_name``, which must be a ``kind`` (else ``wrong`` says why)."""
    try:
        mod = model.get_submodule(module_name)
    except AttributeError:
        raise IncompatibleAdapterError(f"missing module: {module_name} not in the base") from None
    if not isinstance(mod, kind):
        raise IncompatibleAdapterError(f"{module_name} is a {type(mod).__name__}; {wrong}", hint=_HINT)
    return mod


def _linear(model: Any, module_name: str) -> Any:
    import torch

    return _module(model, module_name, torch.nn.Linear, "this runtime serves LoRA and IA3 on nn.Linear modules")


def tied_to(model: Any, weight: Any, module_name: str, param: str = "weight") -> list[str]:
    """The other parameters of ``model`` that are the tensor ``weight`` (``module_name``'s
    ``param``): an LM head tied to the input embedding."""
    return [n for n, q in model.named_parameters(remove_duplicate=False)
            if q is weight and n != f"{module_name}.{param}"]


def embedding_refusals(config: Mapping[str, Any], module: str) -> list[str]:
    """Why LoRA on the ``nn.Embedding`` ``module`` is not computed here as PEFT does (empty: it is).
    Attach asks it of the adapter's tensors, ``resolve --runtime transformers`` of the manifest."""
    out = []
    if config.get("use_dora"):
        out.append(f"{module} is an nn.Embedding and the adapter uses DoRA there (PEFT's DoRA on embeddings), "
                   "which this runtime does not compute")
    if config.get("lora_bias"):
        out.append(f"{module} is an nn.Embedding and the adapter uses lora_bias there, which PEFT itself refuses")
    if config.get("ensure_weight_tying"):
        out.append(f"{module} is an nn.Embedding and the adapter ties its LoRA to the tied output layer's "
                   "(ensure_weight_tying), which this runtime does not do")
    return out


def _embedding(model: Any, config: Mapping[str, Any], module_name: str, p: dict[str, Any],
               own: Callable[[Any], Any]) -> EmbeddingUpdate:
    import torch

    from .lora_options import lora_alpha

    mod = _module(model, module_name, torch.nn.Embedding, "the adapter has LoRA for an nn.Embedding there")
    if "lora_embedding_A" not in p or "lora_embedding_B" not in p:
        raise AdapterFormatError(f"module {module_name!r} lacks lora_embedding_A or lora_embedding_B")
    a, b, w = p["lora_embedding_A"], p["lora_embedding_B"], mod.weight
    r = a.shape[0]
    if a.dim() != 2 or b.dim() != 2 or tuple(w.shape) != (a.shape[1], b.shape[0]) or b.shape[1] != r:
        raise IncompatibleAdapterError(f"shape: {module_name} is {list(w.shape)}, the adapter needs "
                                       f"{[a.shape[1], b.shape[0]] if a.dim() == b.dim() == 2 else 'other'}")
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module_name, lora_alpha(config)))
    vd = _vec_dtype(w)  # PEFT loads adapters in float32 on a half-precision base (autocast_adapter_dtype)
    update = EmbeddingUpdate(a=a.t().contiguous().to(w.device, vd), b=b.t().contiguous().to(w.device, vd),
                             scaling=alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)
    copy_w = p.get("base_layer.weight")
    if copy_w is not None:  # PEFT's save_embedding_layers: from_pretrained loads it into the base module
        if tuple(copy_w.shape) != tuple(w.shape):
            raise IncompatibleAdapterError(f"shape: {module_name} is {list(w.shape)}, the adapter's copy of it "
                                           f"is {list(copy_w.shape)}")
        copy_w = copy_w.to(w.device, w.dtype)
        if not torch.equal(copy_w, own(w)):  # the base's own weights, not a merged adapter's
            tied = tied_to(model, w, module_name)
            if tied:
                raise IncompatibleAdapterError(f"{module_name}: the adapter's saved copy of the embedding differs from "
                                               f"this base's, and PEFT would load it into {tied[0]} too (tied)",
                                               hint="attach it to the base it was trained on")
            update.weight = copy_w
    return update


def _vec_dtype(w: Any) -> Any:
    import torch

    return torch.promote_types(w.dtype, torch.float32)  # PEFT runs an adapter's vectors in float32


def _lora(config: Mapping[str, Any], module_name: str, target: Any, p: dict[str, Any],
          own: Callable[[Any], Any]) -> ModuleUpdate:
    import torch

    from .lora_options import lora_alpha

    if "lora_A.weight" not in p or "lora_B.weight" not in p:
        raise AdapterFormatError(f"module {module_name!r} lacks lora_A or lora_B")
    a, b = p["lora_A.weight"], p["lora_B.weight"]
    r = a.shape[0]
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module_name, lora_alpha(config)))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    w = target.weight
    if tuple(w.shape) != (b.shape[0], a.shape[1]) or b.shape[1] != r:
        raise IncompatibleAdapterError(f"shape: {module_name} is {list(w.shape)}, the adapter needs "
                                       f"{[b.shape[0], a.shape[1]]}")
    copy_w = p.get("base_layer.weight")  # PEFT saves lm_head's base weights beside its LoRA and loads them there
    if copy_w is not None and (tuple(copy_w.shape) != tuple(w.shape)
                               or not torch.equal(copy_w.to(w.device, w.dtype), own(w))):
        raise IncompatibleAdapterError(
            f"{module_name}: the adapter's saved copy of the layer's base weights "
            + ("has another shape" if tuple(copy_w.shape) != tuple(w.shape) else "differs from this base's")
            + "; PEFT would load that copy in their place, which this runtime does not serve",
            reasons=[f"{module_name}: the adapter carries other base weights for the layer"],
            hint="attach it to the base it was trained on, or " + _HINT)
    vd = _vec_dtype(w)  # PEFT loads adapters in float32 on a half-precision base (autocast_adapter_dtype)
    update = ModuleUpdate(a=a.to(w.device, vd).contiguous(), b=b.to(w.device, vd).contiguous(), scaling=scaling)
    magnitude = p.get("lora_magnitude_vector")
    if bool(config.get("use_dora")) != (magnitude is not None):
        raise AdapterFormatError(f"module {module_name!r}: use_dora is {bool(config.get('use_dora'))} but "
                                 f"lora_magnitude_vector is {'present' if magnitude is not None else 'missing'}")
    if magnitude is not None:
        if tuple(magnitude.shape) != (w.shape[0],):
            raise IncompatibleAdapterError(f"shape: {module_name} DoRA magnitude is {list(magnitude.shape)}, the "
                                           f"module has {w.shape[0]} outputs")
        import torch.nn.functional as F

        with torch.no_grad():  # PEFT's DoRA forward: lora_B(lora_A(I)).T, the norm of W + s that, m / norm
            eye = torch.eye(a.shape[1], device=w.device, dtype=vd)
            lw = F.linear(F.linear(eye, update.a), update.b).T
            norm = torch.linalg.norm(own(w).to(vd) + scaling * lw, dim=1).to(vd)  # W: the base's own
            mns = magnitude.to(w.device, vd) / norm
        if not bool(torch.isfinite(mns).all()):
            raise IncompatibleAdapterError(f"{module_name}: DoRA's weight norm ||W + s B A|| is zero for an output "
                                           "feature (PEFT would output NaN/Inf)")
        update.vec["dora"] = mns
    if "lora_B.bias" in p:
        if not config.get("lora_bias"):
            raise AdapterFormatError(f"module {module_name!r} has a lora_B bias but lora_bias is off in its config")
        bias = p["lora_B.bias"]
        if tuple(bias.shape) != (w.shape[0],):
            raise IncompatibleAdapterError(f"shape: {module_name} lora_B bias is {list(bias.shape)}")
        update.vec["bias"] = bias.to(w.device, vd)  # lora_B's own bias: scaled with its output, as PEFT
    return update


def _ia3(module_name: str, target: Any, vec: Any) -> ModuleUpdate:
    w = target.weight
    out_f, in_f = w.shape
    shape = tuple(vec.shape)
    if shape == (out_f, 1) and shape != (1, in_f):
        kind = "scale_out"
    elif shape == (1, in_f) and shape != (out_f, 1):
        kind = "scale_in"  # a feed-forward module: PEFT scales its input
    else:
        raise IncompatibleAdapterError(f"shape: {module_name} IA3 vector is {list(shape)}, the module is "
                                       f"{list(w.shape)} (wants [{out_f}, 1] or, feed-forward, [1, {in_f}])")
    return ModuleUpdate(vec={kind: vec.flatten().to(w.device, _vec_dtype(w))})


def _copy(model: Any, module_name: str, params: dict[str, Any], own: Callable[[Any], Any]) -> Any:
    import torch

    try:
        mod = model.get_submodule(module_name)
    except AttributeError:
        raise IncompatibleAdapterError(f"missing module: {module_name} (modules_to_save) not in the base") from None
    copyable = isinstance(mod, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)) or \
        type(mod).__name__.endswith("RMSNorm")
    if any(True for _ in mod.children()) or not copyable:
        raise IncompatibleAdapterError(f"{module_name} (modules_to_save) is a {type(mod).__name__}; this runtime "
                                       "serves trained copies of Linear, Embedding and norm layers", hint=_HINT)
    base = dict(mod.named_parameters(recurse=False))
    for name, t in params.items():
        have = base.get(name)
        if have is None or tuple(have.shape) != tuple(t.shape):
            raise IncompatibleAdapterError(f"shape: {module_name}.{name} (modules_to_save) is "
                                           f"{list(have.shape) if have is not None else 'missing'} in the base, "
                                           f"the adapter's copy is {list(t.shape)}")
    # PEFT's ModulesToSaveWrapper: a copy of the base module, then the saved tensors; without this
    # deployment's hooks on it (a deep copy would carry every other adapter's copy or LoRA there)
    ours = (ModuleCopies, MultiLoraLinear, MultiLoraEmbedding)
    memo: dict[int, Any] = {id(v): type(v)((i, h) for i, h in v.items() if not isinstance(getattr(h, "__self__", None),
                                                                                          ours))
                            for k, v in vars(mod).items() if k.endswith("hooks") and isinstance(v, dict)}
    dup = copy.deepcopy(mod, memo)
    with torch.no_grad():
        for name, have in base.items():
            t = params.get(name)
            getattr(dup, name).copy_(own(have) if t is None else t.to(have.dtype))  # the base's own, not merged
    return dup.eval().requires_grad_(False)


def merge_refusals(slot: int, wrappers: Mapping[str, Any], copies: Mapping[str, ModuleCopies],
                   embeddings: Mapping[str, MultiLoraEmbedding] | None = None, model: Any = None) -> None:
    """Raise IncompatibleAdapterError where folding slot ``slot`` into the base weights would not
    give its unmerged output; changes nothing. A weight tied to another module's (``model``: an
    LM head sharing the input embedding) is refused, since folding the update, or copying a
    trained copy (``modules_to_save``), into it would change that module too, which the unmerged
    adapter does not (PEFT merges a LoRA there anyway, with a warning, and its output changes)."""
    if model is not None:
        changed = [(n, e.module.weight) for n, e in (embeddings or {}).items() if slot in e.A]
        changed += [(n, w.module.weight) for n, w in wrappers.items() if slot in w.slots()]
        for n, weight in changed:
            others = [m for m in tied_to(model, weight, n) if not m.startswith(f"{n}.")]
            if others:
                raise IncompatibleAdapterError(f"{n}'s weight is tied to {others[0]}: merging the adapter into it "
                                               f"would change {others[0]} too, so the merged model would not give "
                                               "the unmerged output", hint="serve it unmerged")
        tied = [(n, pn, m) for n, c in copies.items() if slot in c.copies
                for pn, p in c.module.named_parameters(recurse=False)
                for m in tied_to(model, p, n, pn) if not m.startswith(f"{n}.")]
        if tied:
            reasons = [f"{n}.{pn} is tied to {m}: merging the adapter's trained copy of {n} (modules_to_save) "
                       f"would change {m} too, so the merged model would not give the unmerged output"
                       for n, pn, m in tied]
            raise IncompatibleAdapterError(reasons[0], reasons=reasons, hint="serve it unmerged")
    for name, w in wrappers.items():
        if slot in w.vec["bias"] and w.module.bias is None:
            raise IncompatibleAdapterError(f"{name} has no bias to merge the adapter's lora_B bias into "
                                           "(PEFT cannot merge it either)", hint="serve it unmerged")
    for name, e in (embeddings or {}).items():
        if slot in e.A and e.module.max_norm is not None:  # the lookup renormalises rows: merged is not unmerged
            raise IncompatibleAdapterError(f"{name} renormalises looked-up rows (max_norm), so the merged embedding "
                                           "would not give the unmerged output", hint="serve it unmerged")


def merge_slot(slot: int, wrappers: Mapping[str, Any], copies: Mapping[str, ModuleCopies],
               embeddings: Mapping[str, MultiLoraEmbedding] | None = None,
               model: Any = None) -> list[tuple[Any, Any]]:
    """Fold slot ``slot`` into the base weights as PEFT's ``merge`` does; returns (tensor,
    original) pairs to restore. Checks everything before it changes anything
    (:func:`merge_refusals`). LoRA's delta is PEFT's ``(B @ A) * s``, added into the weight in
    place as PEFT's default merge does (one rounding on a half-precision base)."""
    import torch

    merge_refusals(slot, wrappers, copies, embeddings, model)

    def delta(w: Any) -> Any:  # [out, in], in the adapter's dtype: PEFT's get_delta_weight
        return (w.B[slot] @ w.A[slot]) * w.scaling[slot]
    backup: list[tuple[Any, Any]] = []
    with torch.no_grad():
        for e in (embeddings or {}).values():
            if slot not in e.A:
                continue
            weight = e.module.weight  # PEFT: W (or the adapter's copy) + (s B A)^T in the adapter's dtype, cast
            backup.append((weight, weight.detach().clone()))
            start = e.weight.get(slot, weight)
            weight.copy_(start + ((e.A[slot] @ e.B[slot]) * e.scaling[slot]).to(weight.dtype))
        for w in wrappers.values():
            if slot not in w.slots():
                continue
            weight, bias = w.module.weight, w.module.bias
            backup.append((weight, weight.detach().clone()))
            if bias is not None:
                backup.append((bias, bias.detach().clone()))
            v = {k: d[slot] for k, d in w.vec.items() if slot in d}
            if not v:  # plain LoRA: PEFT's W += (B A) s, the float32 delta added in place (one rounding)
                weight += delta(w)
                continue
            new = weight.to(torch.float32)
            if "dora" in v:  # (m/n) (W + s B A); the bias stays
                new = v["dora"].to(torch.float32)[:, None] * (new + delta(w).to(torch.float32))
            if "scale_out" in v:  # PEFT: W * l and b * l
                new = new * v["scale_out"].to(torch.float32)[:, None]
                if bias is not None:
                    bias.copy_((bias * v["scale_out"]).to(bias.dtype))
            if "scale_in" in v:
                new = new * v["scale_in"].to(torch.float32)[None, :]
            if slot in w.A and "dora" not in v:
                new = new + delta(w).to(torch.float32)
            weight.copy_(new.to(weight.dtype))
            if "bias" in v:  # PEFT: bias + lora_B.bias * s
                bias.copy_((bias + v["bias"] * w.scaling[slot]).to(bias.dtype))
        for c in copies.values():
            dup = c.copies.get(slot)
            if dup is None:
                continue
            for p, q in zip(c.module.parameters(recurse=False), dup.parameters(recurse=False), strict=True):
                backup.append((p, p.detach().clone()))
                p.copy_(q)
    return backup


__all__ = ["EmbeddingUpdate", "ModuleCopies", "ModuleUpdate", "Prepared", "embedding_refusals", "merge_refusals",
           "merge_slot", "prepare"]

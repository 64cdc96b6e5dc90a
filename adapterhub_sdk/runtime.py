"""Runtime backends: what puts a base and adapters on a device and runs them. Each
backend states its limits, so "can this adapter run here?" is answered from the
manifest, before anything is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .hookspecs import hookimpl


@dataclass(frozen=True)
class RuntimeLimits:
    """What a backend runs. ``None`` means no limit."""

    methods: frozenset[str] | None = None  # method types (``lora``, ``ia3``, ...)
    unsupported_variants: frozenset[str] = frozenset()  # e.g. {"dora"}
    max_rank: int | None = None
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    devices: tuple[str, ...] = ("cpu",)
    mixed_batch_methods: frozenset[str] = frozenset()  # methods it can mix in one batch
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": sorted(self.methods) if self.methods is not None else None,
            "unsupported_variants": sorted(self.unsupported_variants),
            "max_rank": self.max_rank, "dtypes": list(self.dtypes), "devices": list(self.devices),
            "mixed_batch_methods": sorted(self.mixed_batch_methods), "notes": list(self.notes),
        }


@dataclass
class RuntimeBackend:
    """Base class for runtime plugins. Subclasses set ``name`` and ``limits``; they may
    override :meth:`check` for rules the limits cannot express."""

    name: str = ""
    limits: RuntimeLimits = field(default_factory=RuntimeLimits)

    def check(self, method: str, variant: str, summary: Mapping[str, Any]) -> list[str]:
        """Reasons this backend cannot run an adapter (empty: it can)."""
        lim = self.limits
        reasons = []
        if lim.methods is not None and method not in lim.methods:
            reasons.append(f"runtime {self.name!r} does not run {method} adapters "
                           f"(it runs {', '.join(sorted(lim.methods))})")
        if variant in lim.unsupported_variants:
            reasons.append(f"runtime {self.name!r} does not support the {variant} variant")
        ranks = [r for r in [summary.get("rank"), *(summary.get("ranks") or [])] if isinstance(r, int)]
        if lim.max_rank is not None and ranks and max(ranks) > lim.max_rank:
            reasons.append(f"runtime {self.name!r} supports rank <= {lim.max_rank}, the adapter has rank {max(ranks)}")
        return reasons

    def check_method(self, method: Mapping[str, Any]) -> list[str]:
        """Reasons from a manifest's whole ``method`` entry (``type``, ``variant``, ``config``,
        ``summary``): what :meth:`check` says, plus what only the config shows (a LoRA
        option the backend does not implement). ``resolve --runtime`` and attach use this;
        override it for rules on the config."""
        return self.check(str(method.get("type")), str(method.get("variant") or ""), method.get("summary") or {})


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, no CUDA
        return False


class TransformersRuntime(RuntimeBackend):
    """Built-in: a transformers model with adapters served by :class:`~adapterhub_sdk.deploy.Deployment`,
    on CPU or CUDA."""

    def __init__(self) -> None:
        super().__init__("transformers", RuntimeLimits(
            methods=frozenset({"lora", "ia3"}),
            devices=("cpu", "cuda"),
            mixed_batch_methods=frozenset({"lora", "ia3"}),
            notes=("Deployment serves LoRA, rsLoRA, DoRA, lora_bias, modules_to_save and IA3 on nn.Linear "
                   "(copies: Linear, Embedding, norm layers), and LoRA / rsLoRA on nn.Embedding, mixed in one "
                   "batch, mergeable",
                   "other methods load with ah.load_adapter (PEFT or the method plugin's apply)"),
        ))

    def check(self, method: str, variant: str, summary: Mapping[str, Any]) -> list[str]:
        return super().check(method, variant, summary)

    def check_method(self, method: Mapping[str, Any]) -> list[str]:
        from .lora_options import deployment_refusals

        reasons = super().check_method(method)
        if method.get("type") in ("lora", "ia3"):
            config = dict(method.get("config") or {})
            config.setdefault("peft_type", "IA3" if method.get("type") == "ia3" else "LORA")
            reasons += [f"runtime {self.name!r} does not serve it as PEFT computes it: the adapter {why}"
                        for why in deployment_refusals(config)]
            if not reasons:
                reasons += self._layer_kinds(config, method.get("requirements") or {},
                                             (method.get("summary") or {}).get("embedding_modules") or ())
        return reasons

    def _layer_kinds(self, config: Mapping[str, Any], requirements: Mapping[str, Any],
                     embeddings: Any = ()) -> list[str]:
        """What the manifest's requirements (the base tensors the adapter touches) show that a
        Deployment does not serve: a convolution (an N-D kernel), an ``nn.MultiheadAttention``
        or a bare parameter (not ``<module>.weight``), a ``modules_to_save`` copy of a block, a
        LoRA option on an embedding that the embedding path does not compute (DoRA). The manifest
        does not tell an embedding's 2-D weight from a Linear's, so embeddings are the modules its
        summary lists as such (``embedding_modules``: the LoRA method records those holding
        ``lora_embedding_A/B``; another plugin may too) and those named as transformers names them
        (:data:`EMBEDDING_NAMES`, for manifests made before); attach checks the module itself."""
        from .lora_options import saved_module
        from .multilora_variants import embedding_refusals

        listed = {m for m in embeddings if isinstance(m, str)} if isinstance(embeddings, (list, tuple)) else set()
        why = [r for name in sorted(requirements)
               if (_embedding_name(name) or name.rsplit(".", 1)[0] in listed)
               and saved_module(config, name.rsplit(".", 1)[0]) is None
               for r in embedding_refusals(config, name.rsplit(".", 1)[0])]
        if why:
            return [f"runtime {self.name!r} does not serve it as PEFT computes it: {r}" for r in why]

        for name, shape in sorted(requirements.items()):
            module = name.rsplit(".", 1)[0]
            copy = saved_module(config, module)
            if copy is not None and copy != module:
                return [f"runtime {self.name!r} serves modules_to_save copies of single layers; {copy} is a block"]
            dims = len(shape) if isinstance(shape, (list, tuple)) else 0
            if copy is not None:
                if dims > 2:
                    return [f"runtime {self.name!r} serves modules_to_save copies of Linear, Embedding and norm "
                            f"layers; {name} is {dims}-D"]
            elif not name.endswith(".weight") or dims > 2:
                return [f"runtime {self.name!r} serves LoRA and IA3 on nn.Linear modules; {name} is "
                        + (f"a {dims}-D kernel (a convolution)" if dims > 2 else "not a Linear weight")]
        return []


#: the last part of an ``nn.Embedding``'s module name in transformers' models (token, position
#: and token-type embeddings)
EMBEDDING_NAMES = frozenset({"embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings",
                             "token_type_embeddings", "embed_in", "tok_embeddings", "shared", "embed_positions",
                             "embeddings", "embedding", "tok_embedding", "pos_embedding", "token_embedding",
                             "emb", "tok_emb", "pos_emb", "word_emb"})


def _embedding_name(tensor: str) -> bool:
    parts = tensor.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in EMBEDDING_NAMES


def __getattr__(name: str) -> Any:
    """Old import paths: the runtime lookups live with the other plugin lookups in
    :mod:`adapterhub_sdk.plugins` (this module is itself a built-in plugin)."""
    if name in ("runtimes", "get_runtime"):
        from . import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_runtimes(register):
    register(TransformersRuntime())

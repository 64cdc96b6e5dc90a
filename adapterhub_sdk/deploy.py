"""Serving many adapters on one copy of a base model.

A :class:`Deployment` loads the base once and attaches LoRA adapters from the registry by
spec (``acme/sentiment@^1``, ``acme/sentiment@prod``). Each is resolved, its blobs read
and digest-verified in memory, and checked against the base fingerprint before any tensor
touches the model. Target ``nn.Linear`` modules (and ``nn.Embedding`` ones) are wrapped
once; adapters live beside them as small per-adapter tensors, so attaching, detaching or
swapping one costs the same however many are resident, and a batch may mix adapters row by row (each
adapter's rows computed as PEFT computes them, two matmuls per adapter per module). A single hot
adapter can be merged into the base weights for zero overhead and unmerged exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapter_files import refuse_nonfinite
from .devices import usable_device
from .errors import AdapterFormatError, IncompatibleAdapterError, InvalidNameError, NotFoundError
from .fingerprint import fingerprint
from .generation import GenerationError
from .methods.base import check_requirements
from .multilora import MultiLoraEmbedding, MultiLoraLinear, RowSlots
from .multilora_variants import ModuleCopies, Prepared, merge_refusals, merge_slot, prepare


class StructuralMatchWarning(UserWarning):
    """An adapter was attached to a base with other weights than it was trained on."""


@dataclass
class AttachedAdapter:
    """An adapter resident in a deployment."""

    name: str  # what requests call it (``model`` in the HTTP API)
    ref: str  # name@version it came from
    digest: str
    verdict: str  # exact | structural
    rank: int
    modules: int
    nbytes: int  # memory its tensors take
    file_bytes: int  # size of its files in the registry
    slot: int = field(repr=False, default=-1)
    pinned: bool = True  # False: a directory without a base fingerprint, checked by shapes only
    path: str | None = None  # the directory it was read from (None: the registry)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "ref": self.ref, "digest": self.digest, "verdict": self.verdict,
               "rank": self.rank, "modules": self.modules, "bytes": self.nbytes, "file_bytes": self.file_bytes,
               "pinned": self.pinned}
        if self.path is not None:
            out["path"] = self.path
        return out


class Deployment:
    """One base model in memory, many adapters attached by registry spec.

    ``base``: a model directory, ``hf://ORG/MODEL[@REV]``, or a model already in memory.
    ``strict``: refuse adapters that fit only structurally (other base weights).
    """

    def __init__(self, base: Any, *, registry: Any = None, device: str = "cpu", dtype: Any = None,
                 strict: bool = False, tokenizer: Any = None, require_signed: Any = None):
        from .plugins import get_runtime

        self.registry = registry
        self.strict = strict
        self.require_signed = require_signed  # key names, beside the registry's policy and the env's
        self.device = usable_device(device)  # a typo or a missing GPU: one error, before any load
        self.runtime = get_runtime("transformers")
        self._lock = threading.RLock()
        self._rows = RowSlots()
        self._wrapped: dict[str, MultiLoraLinear] = {}
        self._copies: dict[str, ModuleCopies] = {}  # modules some adapters replace (modules_to_save)
        self._embeddings: dict[str, MultiLoraEmbedding] = {}  # nn.Embedding modules with LoRA
        self._adapters: dict[str, AttachedAdapter] = {}
        self._next_slot = 0
        self._merged: tuple[str, list[tuple[Any, Any]]] | None = None
        self.base_path: Path | None = None
        self._loaded: Any = None
        if isinstance(base, (str, Path)):
            path = self._local_base(str(base))
            self.base_path = path
            from .base_loading import load_base

            # the files from_pretrained loads, at their stored dtype unless dtype is given; strict:
            # a base that would not load as its checkpoint is refused
            self._loaded = load_base(path, dtype, strict=strict)
            self.fingerprint = self._loaded.fingerprint
            self.model: Any = self._loaded.model
            if tokenizer is None:
                tokenizer = _try_tokenizer(path)
        else:
            self.model = base
            self.fingerprint = fingerprint(base)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        if registry is not None:
            with contextlib.suppress(Exception):
                registry.register_base(self.fingerprint)

    @staticmethod
    def _local_base(text: str) -> Path:
        from .remotes import remote_for

        remote = remote_for(text)  # hf://ORG/MODEL[@REV]: the remote downloads it (@REV is a git revision)
        if remote is not None:
            return remote.fetch_base(text)
        p = Path(text)
        if not p.exists():
            raise NotFoundError(f"base {text!r} does not exist", hint="pass a model directory or hf://ORG/MODEL")
        return p

    # ------------------------------------------------------------------ adapters

    @property
    def adapters(self) -> dict[str, AttachedAdapter]:
        return dict(self._adapters)

    def attach(self, spec: str, *, name: str | None = None) -> AttachedAdapter:
        """Resolve ``spec`` in the registry, verify and check it, then attach it as ``name``
        (default: the adapter's name). Raises IncompatibleAdapterError with the reasons."""
        if self.registry is None:
            raise NotFoundError("this deployment has no registry to attach from",
                                hint="Deployment(base, registry=ah.Registry.open())")
        if name is not None and (not name.strip() or name != name.strip() or name == "base"):
            raise InvalidNameError(f"adapter name {name!r} is not usable here"
                                   + (": 'base' means the base model" if name == "base" else ""),
                                   hint="pick a non-empty name without surrounding spaces, other than 'base'")
        info = self.registry.show(spec)
        self.registry.check_signed(f"{info.name}@{info.version}", self.require_signed)  # a signing policy
        manifest = info.manifest
        key = name or info.name
        verdict, reasons = self._verdict(manifest)
        if verdict == "incompatible":
            raise IncompatibleAdapterError(f"{info.name}@{info.version} does not fit this base: {reasons[0]}",
                                           reasons=reasons)
        if verdict == "structural":
            if self.strict:
                raise IncompatibleAdapterError(
                    f"{info.name}@{info.version} was trained on other base weights (strict mode)",
                    reasons=reasons, hint="attach it without strict=True to accept a structural fit")
            warnings.warn(f"{info.name}@{info.version}: base weights differ from the ones it was trained on; "
                          "it fits structurally", StructuralMatchWarning, stacklevel=2)
        limits = self.runtime.check_method({**manifest.method, "requirements": manifest.requirements})
        if limits:
            raise IncompatibleAdapterError(f"{info.name}@{info.version}: {limits[0]}", reasons=limits,
                                           hint="load other methods with ah.load_adapter (PEFT) outside a Deployment")
        config, tensors = self._read_verified(manifest)
        prepared = self._prepare(config, tensors)
        return self._install(key, f"{info.name}@{info.version}", info.digest, verdict, prepared, info.size)

    def _install(self, key: str, ref: str, digest: str, verdict: str, prepared: Prepared,
                 file_bytes: int, *, pinned: bool = True, path: str | None = None) -> AttachedAdapter:
        """Put checked, prepared tensors in a new slot and serve them as ``key`` (a swap when
        ``key`` is attached already). Every check happens before this."""
        with self._lock:
            slot = self._next_slot
            self._next_slot += 1
            nbytes = 0
            for module_name, update in prepared.linear.items():
                wrapper = self._wrap(module_name)
                if update.a is not None:
                    wrapper.A[slot] = update.a
                    wrapper.B[slot] = update.b
                    wrapper.scaling[slot] = update.scaling
                for kind, v in update.vec.items():
                    wrapper.add_vector(kind, slot, v)
                wrapper.cached = None
                nbytes += wrapper.nbytes(slot)
            for module_name, e in prepared.embeddings.items():
                emb = self._embeddings.get(module_name)
                if emb is None:
                    emb = self._embeddings[module_name] = MultiLoraEmbedding(self.model.get_submodule(module_name),
                                                                             self._rows)
                emb.A[slot], emb.B[slot], emb.scaling[slot] = e.a, e.b, e.scaling
                if e.weight is not None:
                    emb.weight[slot] = e.weight
                nbytes += emb.nbytes(slot)
            for module_name, dup in prepared.copies.items():
                copies = self._copies.get(module_name)
                if copies is None:
                    copies = self._copies[module_name] = ModuleCopies(self.model.get_submodule(module_name), self._rows)
                copies.copies[slot] = dup
                nbytes += copies.nbytes(slot)
            attached = AttachedAdapter(key, ref, digest, verdict, prepared.rank, prepared.modules, nbytes, file_bytes,
                                       slot, pinned=pinned, path=path)
            old = self._adapters.get(key)
            remerge = self._merged is not None and self._merged[0] == key
            if remerge:
                self.unmerge()  # the old version's weights leave the base before the swap
            self._adapters[key] = attached  # a swap is one assignment: requests see old or new
            if old is not None:
                self._drop_slot(old.slot)
            if remerge:  # the name stays merged, now with the new version, where it can be merged
                try:
                    self.merge(key)
                except IncompatibleAdapterError as exc:
                    warnings.warn(f"{ref} is served unmerged: {exc}", stacklevel=3)
        return attached

    def replace(self, name: str, spec: str) -> AttachedAdapter:
        """Swap the adapter served as ``name`` for ``spec`` (e.g. a newer version) while serving."""
        if name not in self._adapters:
            raise NotFoundError(f"no adapter {name!r} is attached")
        return self.attach(spec, name=name)

    def detach(self, name: str) -> None:
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                raise NotFoundError(f"no adapter {name!r} is attached",
                                    hint=f"attached: {', '.join(self._adapters) or 'none'}")
            if self._merged and self._merged[0] == name:
                self.unmerge()
            self._drop_slot(adapter.slot)

    def _drop_slot(self, slot: int) -> None:
        for w in self._wrapped.values():
            w.drop(slot)
        for e in self._embeddings.values():
            e.drop(slot)
        for c in self._copies.values():
            c.copies.pop(slot, None)

    def _verdict(self, manifest: Any) -> tuple[str, list[str]]:
        if manifest.base.fingerprint == self.fingerprint.digest:
            return "exact", []
        reasons = check_requirements(manifest.requirements, self.fingerprint)
        if reasons:
            return "incompatible", reasons
        return "structural", ["base weights differ from the ones the adapter was trained on"]

    def _read_verified(self, manifest: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from safetensors.torch import load as load_safetensors

        files = {f.path: f for f in manifest.files}
        if "adapter_config.json" not in files or "adapter_model.safetensors" not in files:
            raise AdapterFormatError(f"{manifest.name}@{manifest.version} lacks adapter_config.json or "
                                     "adapter_model.safetensors")

        def read(path: str) -> bytes:
            buf = io.BytesIO()
            self.registry.blobs.copy_verified(files[path].sha256, buf)
            return buf.getvalue()

        config = json.loads(read("adapter_config.json"))
        tensors = load_safetensors(read("adapter_model.safetensors"))
        refuse_nonfinite(f"{manifest.name}@{manifest.version}", tensors)
        return config, tensors

    def _prepare(self, config: dict[str, Any], tensors: dict[str, Any]) -> Prepared:
        """Per target module, what the adapter adds there (:mod:`.multilora_variants`), on the
        model's device and dtype; refuses what this runtime would not compute as PEFT does.
        Computed from the base's own weights: where an adapter is merged, what its backup holds
        (under the lock, so no merge or unmerge runs meanwhile)."""
        with self._lock:
            own: dict[int, Any] = {}
            for tensor, original in self._merged[1] if self._merged is not None else ():
                own.setdefault(id(tensor), original)  # the first backup of a tensor is the base's own
            return prepare(self.model, config, tensors, base_value=lambda t: own.get(id(t), t))

    def _wrap(self, module_name: str) -> MultiLoraLinear:
        w = self._wrapped.get(module_name)
        if w is None:
            w = MultiLoraLinear(self.model.get_submodule(module_name), self._rows)
            self._wrapped[module_name] = w
        return w

    # ------------------------------------------------------------------ merge

    def merge(self, name: str) -> None:
        """Fold one adapter into the base weights: zero overhead while it is the only one used.
        A batch using anything else unmerges it first (exactly: the base weights are restored)."""
        with self._lock:
            if self._merged is not None and self._merged[0] == name:
                return
            slot = self._slot(name)
            # a refusal leaves everything as it was (the adapter merged before stays merged)
            merge_refusals(slot, self._wrapped, self._copies, self._embeddings, model=self.model)
            self.unmerge()
            self._merged = (name, merge_slot(slot, self._wrapped, self._copies, self._embeddings, model=self.model))

    def unmerge(self) -> None:
        import torch

        with self._lock:
            if self._merged is None:
                return
            _, backup = self._merged
            with torch.no_grad():
                for tensor, original in reversed(backup):
                    tensor.copy_(original)
            self._merged = None

    @property
    def merged(self) -> str | None:
        return self._merged[0] if self._merged else None

    # ------------------------------------------------------------------ running

    def _slot(self, name: str | None) -> int:
        if name is None or name == "" or name == "base":
            return -1
        adapter = self._adapters.get(name)
        if adapter is None:
            raise NotFoundError(f"no adapter {name!r} is attached",
                                hint=f"attached: {', '.join(self._adapters) or 'none'}")
        return adapter.slot

    @contextlib.contextmanager
    def use(self, adapters: Sequence[str | None] | str | None, batch_size: int | None = None) -> Iterator[None]:
        """Run model calls inside this block with row i using ``adapters[i]`` (None: the base).
        A single name applies to every row."""
        with self._lock:
            if isinstance(adapters, str) or adapters is None:
                n = batch_size or 1
                names: list[str | None] = [adapters] * n
            else:
                names = list(adapters)
                if batch_size is not None and len(names) != batch_size:
                    raise GenerationError(f"{len(names)} adapter names for a batch of {batch_size} rows",
                                          hint="give one name (or None) per row, or a single name for all rows")
            slots = [self._slot(n) for n in names]
            if self._merged is not None:
                merged_slot = self._slot(self._merged[0])
                if all(s == merged_slot for s in slots):
                    slots = [-1] * len(slots)  # already in the weights
                else:
                    self.unmerge()
            self._rows.set(slots)
            try:
                yield
            finally:
                self._rows.set(None)

    def forward(self, input_ids: Any, adapters: Sequence[str | None] | str | None = None,
                attention_mask: Any = None) -> Any:
        """Logits for a batch in which row i uses ``adapters[i]``."""
        import torch

        with torch.no_grad(), self.use(adapters, batch_size=int(input_ids.shape[0])):
            return self.model(input_ids=input_ids.to(self.device),
                              attention_mask=None if attention_mask is None else attention_mask.to(self.device)).logits

    def generate(self, prompts: Sequence[str] | Any, adapters: Sequence[str | None] | str | None = None, *,
                 max_new_tokens: int = 32, temperature: float | Sequence[float] = 0.0,
                 top_p: float | Sequence[float] = 1.0, stop: Sequence[str] = (),
                 on_token: Callable[[int, int], bool | None] | None = None,
                 seed: int | Sequence[int | None] | None = None) -> list[dict[str, Any]]:
        """Generate for a batch of prompts (strings, or token id lists), row i with ``adapters[i]``.
        ``on_token(row, token_id)`` is called as tokens are produced (streaming); returning
        False stops that row. Returns per row: text, token ids, finish_reason, usage.

        ``temperature``, ``top_p`` and ``seed`` take one value for all rows or one per row.
        Every row draws from its own random generator (seeded with its seed, or fresh), so a
        seeded row gives the same tokens alone as beside any other rows.

        Rows fail alone: a row whose logits are NaN/Inf (a broken adapter), or whose sampling
        or ``on_token`` raises, stops there with ``finish_reason: "error"``, ``error`` (a
        one-line message) and ``error_code`` (``nonfinite_logits`` | ``generation_failed``);
        its text and token ids are what it produced before. The other rows run on unchanged.
        When every row failed, the first failure is raised instead
        (:class:`~adapterhub_sdk.generation.RowError`, with ``.results``)."""
        from .generation import generate_rows

        return generate_rows(self, prompts, adapters, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, stop=stop, on_token=on_token, seed=seed)

    # ------------------------------------------------------------------ accounting

    def memory(self) -> dict[str, Any]:
        """Bytes held by the base parameters and by each attached adapter (``batch_cache_bytes``:
        0, a mixed batch keeps no per-row stacks)."""
        base = sum(p.numel() * p.element_size() for p in self.model.parameters())
        per = {name: a.nbytes for name, a in self._adapters.items()}
        return {"base_bytes": base, "adapter_bytes": sum(per.values()), "adapters": per,
                "batch_cache_bytes": sum(w.cached_bytes() for w in self._wrapped.values()),
                "merged": self.merged}

    def describe(self) -> dict[str, Any]:
        return {"base": {"fingerprint": self.fingerprint.digest, "path": str(self.base_path) if self.base_path else None,
                         "n_params": self.fingerprint.n_params,
                         **(self._loaded.describe() if self._loaded is not None else {})},
                "device": str(self.device), "strict": self.strict,
                "adapters": [a.to_dict() for a in self._adapters.values()], "memory": self.memory()}


def _try_tokenizer(path: Path) -> Any:
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - token ids still work without a tokenizer
        return None


__all__ = ["AttachedAdapter", "Deployment", "StructuralMatchWarning"]



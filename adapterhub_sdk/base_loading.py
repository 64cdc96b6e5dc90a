"""Load a base model directory so that its stated fingerprint is the one of what loaded.

``Deployment(path)`` checks adapters against a fingerprint; that fingerprint must be of
the weights in memory. So the files are chosen as ``from_pretrained`` chooses them (see
:mod:`adapterhub_sdk.layouts`, ambiguous directories are refused before anything
loads), the model is loaded at the dtype the checkpoint stores (transformers would
otherwise use config.json's ``dtype``, or float32), and the loaded model is checked
against the checkpoint: every tensor in memory must be the checkpoint's, cast to the
dtype it has in memory when the caller asked for a dtype, and nothing more or less. When
it is not, transformers changed the tensors on the way (adapter files in the directory
applied, a quantization, a dropped or initialised tensor): ``strict`` refuses the base,
otherwise the deployment warns and states the fingerprint of what is in memory instead.
A directory holding adapter files (which from_pretrained applies) is flagged before it loads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AdapterHubError, UnsafeFormatError, WeightsNotFoundError
from .fingerprint import BaseFingerprint, fingerprint
from .layouts import Checkpoint, resolve_checkpoint
from .methods.base import few

_FLOAT = ("F64", "F32", "BF16", "F16")
ADAPTER_CONFIG = "adapter_config.json"  # from_pretrained of a directory holding it applies that adapter


class BaseModelKindError(AdapterHubError, ValueError):
    """A deployment was given a base that is not a causal language model."""


class LoadedBaseWarning(UserWarning):
    """The model in memory is not exactly the checkpoint's tensors (transformers changed them)."""


class LoadedBaseError(AdapterHubError, ValueError):
    """A strict deployment's base would not load as its checkpoint's tensors (adapter files in
    the directory, or transformers changed the tensors while loading)."""


def _torch_dtype(name: str) -> Any:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[name]


def stored_dtype(fp: BaseFingerprint) -> str | None:
    """The floating dtype the checkpoint stores its weights in (the most common one, by
    tensor count, when several); None when it stores no float tensor we can load as such."""
    floats = {k: v for k, v in fp.dtypes.items() if k in _FLOAT}
    if not floats:
        return None
    return max(floats, key=lambda k: (floats[k], k))


@dataclass
class LoadedBase:
    model: Any
    fingerprint: BaseFingerprint  # what adapters are checked against
    checkpoint: Checkpoint
    checkpoint_fingerprint: BaseFingerprint
    loaded_fingerprint: str  # of the model as it is in memory (before moving to a device)
    loaded_dtype: str
    requested_dtype: str | None
    changed: str | None = None  # how what loaded differs from the checkpoint (beyond a cast asked for)

    @property
    def cast(self) -> bool:
        return (self.changed is None and self.requested_dtype is not None
                and self.loaded_fingerprint != self.checkpoint_fingerprint.digest)

    def describe(self) -> dict[str, Any]:
        ck = self.checkpoint_fingerprint
        if self.loaded_fingerprint == ck.digest:
            of = "the checkpoint, as loaded (no cast)"
        elif self.cast:
            of = (f"the checkpoint as stored ({', '.join(sorted(ck.dtypes))}); the model in memory was cast to "
                  f"{self.loaded_dtype} (dtype asked for) and its own fingerprint is loaded.fingerprint")
        else:
            of = f"the model as loaded: transformers changed the checkpoint's tensors while loading ({self.changed})"
        return {"checkpoint": {"fingerprint": ck.digest, "dtypes": dict(ck.dtypes), **self.checkpoint.describe()},
                "loaded": {"fingerprint": self.loaded_fingerprint, "dtype": self.loaded_dtype,
                           "requested_dtype": self.requested_dtype, "cast": self.cast},
                "fingerprint_of": of}


def require_causal_lm(path: Path) -> None:
    """Refuse a base whose config.json names no causal language model, before anything loads.

    ``AutoModelForCausalLM`` would load such a base with another head and other module names
    (a BERT encoder as ``BertLMHeadModel`` under ``bert.``), so adapters that resolve as exact
    would then be refused as "missing module". A config that cannot be read is left to
    ``from_pretrained`` to report."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(cfg, dict):
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)]
    model_type = cfg.get("model_type")
    if archs:
        causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        if any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return
        what = f"a {', '.join(archs)} (config.json 'architectures')"
    elif not isinstance(model_type, str) or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return
    else:
        what = f"model_type {model_type!r} (config.json), which has no causal LM class in transformers"
    raise BaseModelKindError(
        f"Deployment serves causal language models; {path} is {what}",
        hint="serve a base saved from a *ForCausalLM model; adapters of other models still publish, "
             "resolve, pull and export, and load with PEFT on the model class they were trained on")


def _adapter_files(path: Path, strict: bool) -> None:
    """Flag adapter files in a base directory before it loads: from_pretrained of a directory
    holding ``adapter_config.json`` applies that adapter to the base, so what loads is not the
    weights the directory's fingerprint covers. ``strict`` refuses; otherwise a warning, and the
    loaded-model check states what loaded. Pickled adapter weights that loading would unpickle
    are refused either way."""
    names = sorted(p.name for p in path.iterdir()
                   if p.is_file() and (p.name == ADAPTER_CONFIG or p.name.startswith("adapter_model.")))
    if not names:
        return
    applied = ADAPTER_CONFIG in names
    what = (f"{path} holds adapter files ({', '.join(names)}) beside the base weights"
            + ("; from_pretrained applies that adapter while loading, so the model would not be "
               "the weights its fingerprint covers" if applied else ""))
    hint = ("deploy the base's own directory, without the adapter files (publish the adapter with "
            "'adapterhub publish DIR --base BASE' to attach it by name)")
    if strict:
        raise LoadedBaseError(what, hint=hint)
    if applied and "adapter_model.safetensors" not in names and len(names) > 1:
        raise UnsafeFormatError(f"{path}: from_pretrained would unpickle the adapter weights beside the base "
                                f"({', '.join(n for n in names if n != ADAPTER_CONFIG)})", hint=hint)
    warnings.warn(f"{what}; {hint}", LoadedBaseWarning, stacklevel=4)


def _bits(t: Any) -> Any:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)


def _changes(model: Any, loaded: BaseFingerprint, ck_fp: BaseFingerprint, checkpoint: Checkpoint,
             cast: bool) -> str | None:
    """How the model in memory differs from the checkpoint's tensors (each cast to the float
    dtype it has in memory, when ``cast``): None when it is exactly them. One tensor at a time."""
    from safetensors import safe_open

    mem, disk = set(loaded.shapes), set(ck_fp.shapes)
    found = []
    if extra := sorted(mem - disk):
        found.append(f"{len(extra)} tensor(s) in the model, not in the checkpoint (added or initialised "
                     f"while loading): {few(extra)}")
    if missing := sorted(disk - mem):
        found.append(f"{len(missing)} checkpoint tensor(s) not in the model (dropped or renamed while loading): "
                     f"{few(missing)}")
    state = model.state_dict()
    differ: list[str] = []
    retyped: list[str] = []
    todo = mem & disk
    for file in checkpoint.files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is no mapping
                if name not in todo:
                    continue
                todo.discard(name)
                stored, t = f.get_tensor(name), state[name]
                if t.dtype != stored.dtype:
                    if not (cast and t.dtype.is_floating_point and stored.dtype.is_floating_point):
                        retyped.append(f"{name} ({str(stored.dtype)[6:]} -> {str(t.dtype)[6:]})")
                        continue
                    stored = stored.to(t.dtype)
                if tuple(t.shape) != tuple(stored.shape) or not _bits(t).equal(_bits(stored)):
                    differ.append(name)
    if retyped:
        found.append(f"{len(retyped)} tensor(s) of another dtype than "
                     f"{'a cast of ' if cast else ''}the checkpoint's: {few(sorted(retyped))}")
    if differ:
        found.append(f"{len(differ)} tensor(s) with other values than the checkpoint's"
                     f"{' cast' if cast else ''}: {few(sorted(differ))}")
    if todo:  # listed by the fingerprint, not found in the files: cannot be compared
        found.append(f"{len(todo)} tensor(s) not read from the checkpoint files: {few(sorted(todo))}")
    if not found and loaded.digest != ck_fp.digest and not cast:
        found.append("its fingerprint differs from the checkpoint's")
    return "; ".join(found) or None


def load_base(path: Path, dtype: Any = None, *, strict: bool = False) -> LoadedBase:
    """Load ``path`` with transformers at its stored dtype (or ``dtype``), then check that what
    loaded is the checkpoint's tensors (cast to ``dtype`` when given). A directory with adapter
    files, or a model transformers changed while loading: ``strict`` refuses, otherwise a
    LoadedBaseWarning and the fingerprint of what loaded is the one adapters are checked against."""
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint = resolve_checkpoint(path)  # refuses what from_pretrained cannot load, before loading
    if not path.is_dir():
        raise WeightsNotFoundError(f"{path}: a deployment needs a model directory (config.json and weights), "
                                   "not a single weights file", hint="pass the directory save_pretrained wrote")
    require_causal_lm(path)
    _adapter_files(path, strict)
    ck_fp = fingerprint(path, as_stored=True)  # refuses ambiguous directories; what loaded is checked below
    stored = stored_dtype(ck_fp)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    load_dtype = dtype if dtype is not None else (_torch_dtype(stored) if stored else "auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype, use_safetensors=True)
    loaded = fingerprint(model)
    loaded_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    requested = None if dtype is None else str(dtype).removeprefix("torch.")
    base_fp = ck_fp
    changed = None if loaded.digest == ck_fp.digest else _changes(model, loaded, ck_fp, checkpoint,
                                                                  cast=dtype is not None)
    if changed is not None:
        what = (f"{path}: the model transformers loaded differs from its checkpoint"
                f"{f' cast to {requested}' if requested else ''} (fingerprint {loaded.short}, files "
                f"{ck_fp.short}): {changed}")
        if strict:
            raise LoadedBaseError(what, hint="deploy a directory that from_pretrained loads as it is stored, or "
                                             "deploy without strict=True to serve what loaded, with adapters "
                                             "checked against it")
        warnings.warn(f"{what}; adapters are checked against the loaded weights", LoadedBaseWarning, stacklevel=3)
        base_fp = loaded
    return LoadedBase(model, base_fp, checkpoint, ck_fp, loaded.digest, loaded_dtype, requested, changed)


__all__ = ["BaseModelKindError", "LoadedBase", "LoadedBaseError", "LoadedBaseWarning", "load_base", "require_causal_lm", "stored_dtype"]

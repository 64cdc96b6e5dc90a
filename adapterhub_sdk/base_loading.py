"""Load a base model directory so that its stated fingerprint is the one of what loaded.

``Deployment(path)`` checks adapters against a fingerprint; that fingerprint must be of
the weights in memory. So the files are chosen as ``from_pretrained`` chooses them (see
:mod:`adapterhub_sdk.layouts`, ambiguous directories are refused before anything
loads), the model is loaded at the dtype the checkpoint stores (transformers would
otherwise use config.json's ``dtype``, or float32), and the loaded model is fingerprinted
again in memory: when it differs from the checkpoint without a cast the caller asked for,
transformers changed the tensors on the way (a conversion, a dropped or initialised
tensor) and the deployment states the fingerprint of what is in memory instead.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AdapterHubError, WeightsNotFoundError
from .fingerprint import BaseFingerprint, fingerprint
from .layouts import Checkpoint, resolve_checkpoint

_FLOAT = ("F64", "F32", "BF16", "F16")


class BaseModelKindError(AdapterHubError, ValueError):
    """A deployment was given a base that is not a causal language model."""


class LoadedBaseWarning(UserWarning):
    """The model in memory is not exactly the checkpoint's tensors (transformers changed them)."""


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

    @property
    def cast(self) -> bool:
        return self.loaded_fingerprint != self.checkpoint_fingerprint.digest and self.requested_dtype is not None

    def describe(self) -> dict[str, Any]:
        ck = self.checkpoint_fingerprint
        if self.loaded_fingerprint == ck.digest:
            of = "the checkpoint, as loaded (no cast)"
        elif self.fingerprint is ck:
            of = (f"the checkpoint as stored ({', '.join(sorted(ck.dtypes))}); the model in memory was cast to "
                  f"{self.loaded_dtype} (dtype asked for) and its own fingerprint is loaded.fingerprint")
        else:
            of = "the model as loaded: transformers changed the checkpoint's tensors while loading"
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


def load_base(path: Path, dtype: Any = None) -> LoadedBase:
    """Load ``path`` with transformers at its stored dtype (or ``dtype``), fingerprint checked."""
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint = resolve_checkpoint(path)  # refuses what from_pretrained cannot load, before loading
    if not path.is_dir():
        raise WeightsNotFoundError(f"{path}: a deployment needs a model directory (config.json and weights), "
                                   "not a single weights file", hint="pass the directory save_pretrained wrote")
    require_causal_lm(path)
    ck_fp = fingerprint(path)  # refuses ambiguous directories
    stored = stored_dtype(ck_fp)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    load_dtype = dtype if dtype is not None else (_torch_dtype(stored) if stored else "auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype, use_safetensors=True)
    loaded = fingerprint(model)
    loaded_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    requested = None if dtype is None else str(dtype).removeprefix("torch.")
    base_fp = ck_fp
    if loaded.digest != ck_fp.digest and dtype is None:
        # no cast was asked for, yet memory differs from the files: state what is in memory
        warnings.warn(f"{path}: the model transformers loaded differs from its checkpoint (fingerprint "
                      f"{loaded.short}, files {ck_fp.short}); adapters are checked against the loaded weights",
                      LoadedBaseWarning, stacklevel=3)
        base_fp = loaded
    return LoadedBase(model, base_fp, checkpoint, ck_fp, loaded.digest, loaded_dtype, requested)


__all__ = ["BaseModelKindError", "LoadedBase", "LoadedBaseWarning", "load_base", "require_causal_lm", "stored_dtype"]

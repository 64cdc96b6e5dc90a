"""Which weight files a base model directory *is*: the ones ``from_pretrained`` loads.

A base's fingerprint must cover exactly the tensors transformers loads from that
directory, so the file choice follows transformers' own precedence for a local folder
(``_get_resolved_checkpoint_files`` in ``transformers.modeling_utils``), without a
variant and with safetensors only (we never read pickles):

1. ``transformers_weights`` in ``config.json`` names the file (or index) explicitly;
2. else ``model.safetensors``;
3. else ``model.safetensors.index.json`` and the shards its ``weight_map`` names.

Everything else is ignored, as transformers ignores it: variants
(``model.fp16.safetensors``), stray files (``consolidated.safetensors``), an adapter's
``adapter_model.safetensors``, a pickle beside safetensors. A directory with only such
files cannot be loaded by ``from_pretrained`` and is refused. When both
``model.safetensors`` and a shard index are present, transformers loads the single file
but other loaders (vLLM, for one) read the shards: the caller fingerprints both and
refuses the directory as ambiguous unless they hold the same tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptFileError, WeightsNotFoundError
from .safetensors_io import looks_like_pickle, refuse_pickle

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class AmbiguousCheckpointError(CorruptFileError):
    """A directory holds two different weight sets that different loaders would pick."""


@dataclass(frozen=True)
class Checkpoint:
    """The weight files of a base: what ``from_pretrained`` of ``path`` loads."""

    path: Path  # what the caller passed (a directory or one .safetensors file)
    files: list[Path]  # the weight files loaded, in name order
    index: Path | None = None  # the shard index, when sharded
    #: another weight set in the directory that some loaders read instead (the shards
    #: beside model.safetensors); must hold the same tensors or the directory is ambiguous
    shadowed: list[Path] = field(default_factory=list)
    shadowed_index: Path | None = None
    #: other *.safetensors files in the directory that loading ignores
    ignored: list[str] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def describe(self) -> dict[str, Any]:
        return {"files": [f.name for f in self.files], "index": self.index.name if self.index else None,
                "ignored": list(self.ignored)}


def read_index(index_path: Path) -> dict[str, Any]:
    """The ``weight_map`` of a safetensors shard index."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{index_path.name}: not a valid safetensors index ({exc})") from exc
    return weight_map


def shard_files(directory: Path, index_path: Path) -> list[Path]:
    """The shards an index names, each a file inside ``directory``."""
    weight_map = read_index(index_path)
    try:
        names = sorted(set(weight_map.values()))
    except TypeError as exc:
        raise CorruptFileError(f"{index_path.name}: not a valid safetensors index ({exc})") from exc
    files = []
    for n in names:
        if not isinstance(n, str) or "/" in n or "\\" in n or n.startswith("."):
            raise CorruptFileError(f"{index_path.name}: refuses shard name {n!r}")
        f = directory / n
        if not f.is_file():
            raise CorruptFileError(f"{index_path.name} names shard {n!r}, which is missing",
                                   hint="re-download the model; a shard is missing")
        files.append(f)
    return files


def _explicit(directory: Path) -> str | None:
    """config.json's ``transformers_weights``: the file transformers is told to load."""
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = cfg.get("transformers_weights") if isinstance(cfg, dict) else None
    if name is None:
        return None
    if not isinstance(name, str) or not name.endswith((".safetensors", ".safetensors.index.json")):
        raise CorruptFileError(f"config.json: transformers_weights {name!r} is not a safetensors file or index",
                               hint="point transformers_weights at a .safetensors file or remove it")
    base = os.path.abspath(directory)
    target = os.path.abspath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base:
        raise CorruptFileError(f"config.json: transformers_weights {name!r} is outside the model directory")
    return os.path.relpath(target, base)


def _stray(directory: Path, chosen: list[Path]) -> list[str]:
    keep = {f.name for f in chosen}
    return sorted(f.name for f in directory.glob("*.safetensors")
                  if f.name not in keep and f.name != "adapter_model.safetensors")


def resolve_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The files ``from_pretrained(path)`` loads, or the reason it cannot / we will not."""
    p = Path(path)
    if not p.exists():
        raise WeightsNotFoundError(f"{p}: no such file or directory")
    if p.is_file():
        if p.suffix != ".safetensors" or looks_like_pickle(p):
            if looks_like_pickle(p):
                refuse_pickle(p, "checkpoint")
            raise WeightsNotFoundError(f"{p}: not a .safetensors file")
        return Checkpoint(p, [p])
    explicit = _explicit(p)
    single = p / (explicit if explicit and explicit.endswith(".safetensors") else SAFE_WEIGHTS_NAME)
    index = p / (explicit if explicit and explicit.endswith(".index.json") else SAFE_WEIGHTS_INDEX_NAME)
    if explicit and not (p / explicit).is_file():
        raise WeightsNotFoundError(f"config.json names transformers_weights {explicit!r}, which is missing",
                                   hint="re-download the model")
    if (not explicit or explicit.endswith(".safetensors")) and single.is_file():
        if looks_like_pickle(single):
            refuse_pickle(single, "checkpoint")
        shadowed: list[Path] = []
        shadowed_index = None
        if not explicit and index.is_file():
            shadowed_index = index
            try:
                shadowed = shard_files(p, index)
            except CorruptFileError as exc:
                raise AmbiguousCheckpointError(
                    f"{p} holds {SAFE_WEIGHTS_NAME} and {index.name}, whose shards are broken ({exc}): "
                    "transformers loads the single file, other loaders the shards",
                    hint=f"keep one weight set: remove {index.name} and its shards, or {SAFE_WEIGHTS_NAME}") from exc
        return Checkpoint(p, [single], None, shadowed, shadowed_index,
                          _stray(p, [single, *shadowed]))
    if index.is_file():
        files = shard_files(p, index)
        return Checkpoint(p, files, index, ignored=_stray(p, files))
    pickles = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(pickles[0], "checkpoint")
    others = _stray(p, [])
    if others:
        variant = [n for n in others if n.startswith("model.") and n.count(".") == 2]
        hint = (f"load a variant explicitly: pass the file itself (e.g. {p / variant[0]})" if variant
                else f"pass the file itself (e.g. {p / others[0]}) or rename it to {SAFE_WEIGHTS_NAME}")
        raise WeightsNotFoundError(
            f"{p} has {', '.join(others[:3])}{' ...' if len(others) > 3 else ''} but no {SAFE_WEIGHTS_NAME} "
            f"or {SAFE_WEIGHTS_INDEX_NAME}: from_pretrained cannot load this directory", hint=hint)
    if (p / "adapter_config.json").exists():
        raise WeightsNotFoundError(f"{p} is an adapter, not a base model",
                                   hint="pass the base model's directory (the one with model.safetensors)")
    raise WeightsNotFoundError(f"{p}: no *.safetensors weights found",
                               hint="pass a directory written by save_pretrained, or a .safetensors file")


__all__ = ["AmbiguousCheckpointError", "Checkpoint", "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME",
           "read_index", "resolve_checkpoint", "shard_files"]

"""What every export target shares: the target names, the base the generated files name
(fingerprinted where it is a local directory), the README that carries the pin, and the
small file helpers the layouts write with."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterHubError, IncompatibleAdapterError
from ..lora_options import unsupported_options
from ..manifest import Manifest

FORMATS: tuple[str, ...] = ("peft", "vllm", "lorax", "tgi", "ollama")
TARGETS = {"peft": "PEFT", "vllm": "vLLM", "lorax": "LoRAX", "tgi": "TGI", "ollama": "Ollama"}
MANIFEST_FILE = "adapterhub_manifest.json"
README = "README.md"
PEFT_README = "README.adapterhub.md"  # the PEFT layout keeps the adapter's own README.md as is
#: HF ``model_type`` values whose local directory Ollama converts to an architecture its
#: adapter converter (``convert.ConvertAdapter``) takes (``llama``, ``gemma2``); Gemma 1
#: converts as ``gemma`` and a ``MistralForCausalLM`` directory has no converter
OLLAMA_MODEL_TYPES: tuple[str, ...] = ("llama", "gemma2")


def adapter_rank(manifest: Manifest) -> int | None:
    """The largest LoRA rank in the adapter: ``r``, per-tensor ranks and ``rank_pattern``."""
    summary = manifest.method.get("summary") or {}
    config = manifest.method.get("config") or {}
    ranks = [summary.get("rank"), *(summary.get("ranks") or []), config.get("r"),
             *((config.get("rank_pattern") or {}).values())]
    ints = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    return max(ints) if ints else None



def _is_lora(manifest: Manifest) -> bool:
    return manifest.method.get("type") == "lora"



def _other_options(target: str, config: Mapping[str, Any], checked: frozenset[str]) -> list[str]:
    """Any other LoRA option that changes what PEFT computes (KaSA, Arrow, an option of a
    newer PEFT): a target that does not know it would serve the adapter as plain LoRA."""
    return [f"{target} cannot serve it as PEFT does: the adapter {why}"
            for why in unsupported_options({k: v for k, v in config.items() if k not in checked})]



def _check_format(fmt: str) -> str:
    f = str(fmt).lower()
    if f not in FORMATS:
        raise AdapterHubError(f"unknown export format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    return f


# --------------------------------------------------------------------------- helpers


def _dir_name(name: str) -> str:
    """``acme/sentiment`` -> ``acme--sentiment``: one safe path component (names never hold '--')."""
    return name.replace("/", "--")


def _write(path: Path, data: str | bytes, *, mode: int | None = None) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with open(path, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(path, mode)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"



def _files_under(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))



@dataclass
class _Base:
    ref: str | None  # what to name the base in commands (a path, a Hub id, an Ollama model)
    checked: bool
    config: dict[str, Any] | None
    warnings: list[str]
    #: what the registry recorded of the pinned base where ``ref`` is a path as a server sees it
    #: (``config`` stays None there: an Ollama model name's architecture is Ollama's, not the config's)
    pinned_config: dict[str, Any] | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None  # the base's tensor names and shapes, when known

    @property
    def layers_config(self) -> dict[str, Any] | None:
        """The config the base's layer count is read from."""
        return self.config or self.pinned_config


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _resolve_base(registry: Any, manifest: Manifest, base_path: str | os.PathLike[str] | None) -> _Base:
    pin = manifest.base.fingerprint
    ref = f"{manifest.name}@{manifest.version}"
    if base_path is None:
        warnings = []
        if not manifest.base.name:
            warnings.append("the adapter records no base model name; the generated files say BASE_MODEL: "
                            "replace it, or export again with --base-path")
        config, shapes = _pinned_base(registry, pin)
        return _Base(manifest.base.name, False, config, warnings, shapes=shapes)
    p = Path(base_path).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".safetensors"):
        from ..fingerprint import fingerprint

        fp = fingerprint(p)
        if pin and fp.digest != pin:
            raise IncompatibleAdapterError(
                f"{ref} is pinned to base {pin[:12]}, but the weights at {p} have fingerprint {fp.short}",
                reasons=[f"base fingerprint {fp.digest} != pinned {pin}"],
                hint="pass the base the adapter was trained on, or publish a version trained on this base")
        warnings = [] if pin else [f"{ref} was published without a base fingerprint, so {p} could not be "
                                   "checked against it"]
        config = fp.config or (_read_config(p) if p.is_dir() else None)
        return _Base(str(p.resolve()), bool(pin), config, warnings, shapes=fp.shapes)
    warnings = [f"{base_path} is not a local safetensors model, so its weights were not checked against the "
                f"pin {pin[:12] if pin else '(none)'}"]
    # a path as the server sees it: what the registry recorded of the pinned base still holds
    config, shapes = _pinned_base(registry, pin)
    return _Base(str(base_path), False, None, warnings, pinned_config=config, shapes=shapes)


def _pinned_base(registry: Any, pin: str | None) -> tuple[dict[str, Any] | None, Mapping[str, Any] | None]:
    """The config and tensor shapes the registry recorded of the pinned base (None where unknown)."""
    if not pin:
        return None, None
    try:
        base = registry.get_base(pin)
    except AdapterHubError:
        return None, None
    return base.config, base.shapes


def _model_type(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    mt = config.get("model_type")
    if isinstance(mt, str) and mt:
        return mt.lower()
    archs = config.get("architectures") or []
    if archs and isinstance(archs[0], str):
        a = archs[0].lower()
        for t in sorted(OLLAMA_MODEL_TYPES, key=len, reverse=True):
            if a.startswith(t):
                return t
        return a
    return None



def _readme(manifest: Manifest, fmt: str, *, adapter_dir: str, served_name: str, base: _Base,
            usage: Iterable[str], warnings: Iterable[str]) -> str:
    summary = manifest.method.get("summary") or {}
    pin = manifest.base.fingerprint
    method = manifest.method.get("type")
    variant = manifest.method.get("variant") or method
    targets = summary.get("targets")
    targets_s = ", ".join(targets) if isinstance(targets, list) else (str(targets) if targets else "-")
    rank = adapter_rank(manifest)
    lines = [
        f"# {manifest.name}@{manifest.version} for {TARGETS[fmt]}",
        "",
        f"Exported by `adapterhub export {manifest.name}@{manifest.version} --format {fmt}`. The adapter "
        f"files in `{adapter_dir}` were verified against their sha256 digests before they were written; "
        f"`{MANIFEST_FILE}` is the version's manifest.",
        "",
        "| | |",
        "|---|---|",
        f"| adapter | `{manifest.name}@{manifest.version}` |",
        f"| digest | `{manifest.digest}` |",
        f"| method | {method} ({variant})" + (f", rank {rank}" if rank is not None else "")
        + f", targets {targets_s} |",
        f"| served as | `{served_name}` |",
        f"| base model | `{base.ref or 'BASE_MODEL'}` |",
        f"| base fingerprint | `{pin or 'not pinned'}` |",
        f"| base arch signature | `{manifest.base.arch_signature or '-'}` |",
        "",
        "## Base pin",
        "",
    ]
    if pin:
        lines += [
            f"This adapter was trained on the base model whose weights have the fingerprint `{pin}`. "
            "Serve it only on those weights: `adapterhub fingerprint BASE_DIR` must print this fingerprint. "
            "A server given other weights loads the adapter anyway and answers wrongly.",
        ]
        if base.checked:
            lines += ["", f"The base at `{base.ref}` was fingerprinted at export time and matches."]
    else:
        lines += ["This adapter was published without a base fingerprint: nothing ties it to particular "
                  "base weights. Check by hand that the base below is the one it was trained on."]
    lines += ["", f"## Serving with {TARGETS[fmt]}", "", *usage]
    warns = list(warnings)
    if warns:
        lines += ["", "## Notes", "", *[f"- {w}" for w in warns]]
    return "\n".join(lines) + "\n"


def _fence(lang: str, body: str) -> list[str]:
    return [f"```{lang}", body.rstrip("\n"), "```"]


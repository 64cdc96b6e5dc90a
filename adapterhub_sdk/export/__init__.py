"""Export an adapter version in the layout another serving tool loads: PEFT, vLLM, LoRAX,
TGI or Ollama.

    from adapterhub_sdk import Registry
    from adapterhub_sdk.export import export

    with Registry.open() as reg:
        res = export(reg, "acme/sentiment@^1", "vllm", "out/sentiment-vllm")
        print(res.to_dict())

Every export pulls the version through :meth:`Registry.pull` (each file verified against
its sha256), writes what the target tool needs beside it, and puts the whole directory in
place at the end (:mod:`adapterhub_sdk.atomic_dir`, as pull does): ``out`` holds the old
tree or the new one, complete, whatever fails or dies when. Each export
carries ``adapterhub_manifest.json`` and a generated README that states the base
fingerprint, so the pin travels with the files.

What each tool accepts (checked against the projects' own source and documentation):

- vLLM: PEFT LoRA directories (``--lora-modules`` or ``LoRARequest``); no DoRA, no LoRA
  bias, ``modules_to_save`` only for classifier heads, rank <= ``--max-lora-rank``
  (one of 1, 8, 16, 32, 64, 128, 256, 320, 512).
- LoRAX: PEFT LoRA directories from a local path (``adapter_source: "local"``).
- TGI: PEFT LoRA directories named in ``LORA_ADAPTERS=name=/path`` at launch.
- Ollama: a safetensors PEFT LoRA directory in a Modelfile ``ADAPTER`` line, for bases its
  adapter converter takes (``llama``, ``gemma2``).

Exports are exact or refused (:mod:`adapterhub_sdk.export.folding`): where a server applies
one scale to every module (TGI, LoRAX; Ollama's one alpha over each module's rank), the
per-module scales of ``rank_pattern``/``alpha_pattern``/rsLoRA are folded into the
weights; what a server would drop without a word (DoRA, LoRA bias, ``modules_to_save``,
modules it does not map, ...) is refused with the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_dir import atomic_dir, check_destination
from ..errors import AdapterHubError, IncompatibleAdapterError, IntegrityError
from ..export_record import write_record
from ..manifest import Manifest
from . import folding
from .common import (
    FORMATS,
    MANIFEST_FILE,
    OLLAMA_MODEL_TYPES,
    PEFT_README,
    README,
    TARGETS,
    _check_format,
    _dir_name,
    _files_under,
    _is_lora,
    _model_type,
    _other_options,
    _resolve_base,
    adapter_rank,
)
from .lorax import _layout_lorax
from .ollama import _layout_ollama
from .peft import _layout_peft
from .tgi import _layout_tgi
from .vllm import (
    VLLM_INIT_OK,
    VLLM_MAX_LORA_RANKS,
    VLLM_MODULES_TO_SAVE_OK,
    _layout_vllm,
    vllm_config_limitations,
    vllm_limitations,
    vllm_max_lora_rank,
)

_PURPOSE = "to export to"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote."""

    name: str
    version: str
    digest: str
    format: str
    path: Path  # the export directory
    adapter_path: Path  # the PEFT directory inside it (``path`` itself for peft)
    files: tuple[str, ...]  # every file written, relative to ``path``
    served_name: str  # the name a server knows the adapter by
    base_name: str | None  # what the generated files name as the base
    base_fingerprint: str | None  # the adapter's pin
    base_checked: bool  # a local base was fingerprinted and matches the pin
    readme: str  # the generated notes, relative to ``path``
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "digest": self.digest, "format": self.format,
                "path": str(self.path), "adapter_path": str(self.adapter_path), "files": list(self.files),
                "served_name": self.served_name,
                "base": {"name": self.base_name, "fingerprint": self.base_fingerprint,
                         "checked": self.base_checked},
                "readme": self.readme, "warnings": list(self.warnings), **self.details}


def limitations(fmt: str, manifest: Manifest) -> list[str]:
    """Reasons ``fmt`` cannot take this adapter (empty: it can)."""
    fmt = _check_format(fmt)
    if fmt == "peft":
        return []
    if fmt == "vllm":
        return vllm_limitations(manifest)
    target = TARGETS[fmt]
    variant = manifest.method.get("variant") or manifest.method.get("type")
    if not _is_lora(manifest):
        return [f"{target} serves LoRA adapters only; this is a {variant} adapter"]
    config = manifest.method.get("config") or {}
    reasons = []
    if variant == "dora" or config.get("use_dora"):
        reasons.append(f"{target} does not support DoRA (use_dora=true); it ignores the magnitude vectors, so "
                       "its output would differ from the adapter's")
    return reasons + folding.config_refusals(target, config) + _other_options(target, config,
                                                                                   folding.CHECKED)



# --------------------------------------------------------------------------- export


def export(registry: Any, spec: str, fmt: str, out: str | os.PathLike[str], *, overwrite: bool = False,
           base_path: str | os.PathLike[str] | None = None) -> ExportResult:
    """Write the version ``spec`` designates (``ns/name[@spec]``) to ``out`` in the layout
    ``fmt`` (``peft``, ``vllm``, ``lorax``, ``tgi``, ``ollama``) loads.

    ``base_path`` names the base in the generated files (a local directory is fingerprinted
    and must match the adapter's pin; anything else, e.g. an Ollama model name, is written
    as is, unchecked); without it, the base name recorded in the manifest. ``out`` must be
    absent or empty unless ``overwrite``; it is written atomically. Raises
    :class:`IncompatibleAdapterError` when the target cannot serve the adapter."""
    fmt = _check_format(fmt)
    from ..remotes import is_remote_ref

    if is_remote_ref(str(spec)):
        raise AdapterHubError(f"export reads the local registry; {spec} is a remote registry's reference "
                              "(a Hub reference for hf://)", hint=f"pull it first: adapterhub pull {spec}")
    info = registry.show(spec)
    manifest: Manifest = info.manifest
    ref = f"{info.name}@{info.version}"
    reasons = limitations(fmt, manifest)
    if reasons:
        raise IncompatibleAdapterError(
            f"cannot export {ref} for {TARGETS[fmt]}: {reasons[0]}"
            + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""),
            reasons=reasons, hint="export it with fmt='peft', or serve it with the transformers runtime")
    out = Path(out).expanduser().absolute()
    check_destination(out, overwrite, _PURPOSE)
    base = _resolve_base(registry, manifest, base_path)
    if fmt == "ollama":
        mt = _model_type(base.config)
        if mt is not None and mt not in OLLAMA_MODEL_TYPES:
            raise IncompatibleAdapterError(
                f"cannot export {ref} for Ollama: Ollama's adapter converter takes only "
                f"{' and '.join(OLLAMA_MODEL_TYPES)} bases; this base is {mt!r}",
                reasons=[f"base model_type {mt!r} is not one of {', '.join(OLLAMA_MODEL_TYPES)}"],
                hint="convert the adapter to GGUF with llama.cpp's convert_lora_to_gguf.py, or serve it elsewhere")
    served = info.name
    adir = _dir_name(info.name)
    warnings = list(base.warnings)
    if fmt == "tgi" and any(c in str(out) for c in ",=@"):
        # TGI splits LORA_ADAPTERS on ',' and reads name=path@revision
        raise AdapterHubError(f"{out}: TGI cannot read a LORA_ADAPTERS path containing ',', '=' or '@'",
                              hint="export to a directory whose path has none of those characters")

    # 0755: servers in containers run as other users
    with atomic_dir(out, overwrite=overwrite, mode=0o755, purpose=_PURPOSE) as tmp:
        staged = tmp / adir
        registry.pull(ref, staged)  # every file verified against its sha256
        os.chmod(staged, 0o755)
        pulled = Manifest.from_json((staged / MANIFEST_FILE).read_bytes())
        if pulled.digest != info.digest:
            raise IntegrityError(f"pulled manifest of {ref} does not match its digest {info.digest}")
        if fmt == "peft":
            for p in list(staged.iterdir()):
                os.rename(p, tmp / p.name)
            staged.rmdir()
            adapter_path, readme, details = _layout_peft(tmp, manifest, base, served, out, warnings)
        else:
            exact = folding.conform(fmt, staged, base.layers_config, base.shapes)
            if exact.reasons:
                raise IncompatibleAdapterError(
                    f"cannot export {ref} for {TARGETS[fmt]}: {exact.reasons[0]}"
                    + (f" (and {len(exact.reasons) - 1} more)" if len(exact.reasons) > 1 else ""),
                    reasons=exact.reasons, hint=exact.hint or "export it with fmt='peft', or serve it with the "
                                                              "transformers runtime")
            warnings.extend(exact.notes)
            shutil.copyfile(staged / MANIFEST_FILE, tmp / MANIFEST_FILE)
            if exact.rewritten:  # its manifest no longer lists these files' digests
                write_record(staged, manifest, fmt)
            layout = {"vllm": _layout_vllm, "lorax": _layout_lorax, "tgi": _layout_tgi,
                      "ollama": _layout_ollama}[fmt]
            adapter_path, readme, details = layout(tmp, manifest, base, served, out, adir, warnings)
            if exact.details:
                details = {**details, "exact": exact.details}
        files = _files_under(tmp)
    if fmt == "ollama":
        served = served.lower()
    return ExportResult(info.name, info.version, info.digest, fmt, out, adapter_path, files, served,
                        base.ref, manifest.base.fingerprint, base.checked, readme, tuple(warnings), details)


__all__ = ["FORMATS", "MANIFEST_FILE", "OLLAMA_MODEL_TYPES", "PEFT_README", "README", "TARGETS",
           "VLLM_INIT_OK", "VLLM_MAX_LORA_RANKS", "VLLM_MODULES_TO_SAVE_OK", "ExportResult", "adapter_rank",
           "export", "limitations", "vllm_config_limitations", "vllm_limitations", "vllm_max_lora_rank"]

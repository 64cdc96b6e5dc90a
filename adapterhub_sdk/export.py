"""Export an adapter version in the layout another serving tool loads: PEFT, vLLM, LoRAX,
TGI or Ollama.

    from adapterhub_sdk import Registry
    from adapterhub_sdk.export import export

    with Registry.open() as reg:
        res = export(reg, "acme/sentiment@^1", "vllm", "out/sentiment-vllm")
        print(res.to_dict())

Every export pulls the version through :meth:`Registry.pull` (each file verified against
its sha256), writes what the target tool needs beside it, and renames the whole directory
into place at the end: ``out`` is complete or untouched, whatever fails when. Each export
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

Exports are exact or refused (:mod:`adapterhub_sdk.export_exact`): where a server applies
one scale to every module (TGI, LoRAX; Ollama's one alpha over each module's rank), the
per-module scales of ``rank_pattern``/``alpha_pattern``/rsLoRA are folded into the
weights; what a server would drop without a word (DoRA, LoRA bias, ``modules_to_save``,
modules it does not map, ...) is refused with the reason.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import export_exact
from .errors import AdapterHubError, DestinationError, IncompatibleAdapterError, IntegrityError
from .manifest import Manifest

FORMATS: tuple[str, ...] = ("peft", "vllm", "lorax", "tgi", "ollama")
TARGETS = {"peft": "PEFT", "vllm": "vLLM", "lorax": "LoRAX", "tgi": "TGI", "ollama": "Ollama"}
MANIFEST_FILE = "adapterhub_manifest.json"
README = "README.md"
PEFT_README = "README.adapterhub.md"  # the PEFT layout keeps the adapter's own README.md as is

#: ``--max-lora-rank`` values vLLM accepts (vllm/config/lora.py, ``MaxLoRARanks``)
VLLM_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: ``init_lora_weights`` strings vLLM accepts (the rest, e.g. PiSSA, rewrite base weights)
VLLM_INIT_OK = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
#: ``modules_to_save`` vLLM accepts (classification heads)
VLLM_MODULES_TO_SAVE_OK = ("classifier", "score")
#: Ollama's adapter converter (``convert.ConvertAdapter``) takes bases of these ``model_type``s
#: (a local Gemma 1 directory converts as ``gemma``, a Mistral one has no converter)
OLLAMA_MODEL_TYPES = export_exact.OLLAMA_ADAPTER_BASES


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


# --------------------------------------------------------------------------- what each tool runs


def adapter_rank(manifest: Manifest) -> int | None:
    """The largest LoRA rank in the adapter: ``r``, per-tensor ranks and ``rank_pattern``."""
    summary = manifest.method.get("summary") or {}
    config = manifest.method.get("config") or {}
    ranks = [summary.get("rank"), *(summary.get("ranks") or []), config.get("r"),
             *((config.get("rank_pattern") or {}).values())]
    ints = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    return max(ints) if ints else None


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")


def _is_lora(manifest: Manifest) -> bool:
    return manifest.method.get("type") == "lora"


def vllm_limitations(manifest: Manifest) -> list[str]:
    """Reasons vLLM cannot serve this adapter (empty: it can). Mirrors vLLM's own checks
    (``PEFTHelper._validate_features`` and ``validate_legal``)."""
    method = manifest.method.get("type")
    variant = manifest.method.get("variant") or method
    config = manifest.method.get("config") or {}
    if not _is_lora(manifest):
        return [f"vLLM serves LoRA adapters only; this is a {variant} adapter"]
    reasons = []
    if variant == "dora" or config.get("use_dora"):
        reasons.append("vLLM does not support DoRA (use_dora=true); its LoRA kernels have no magnitude "
                       "vector, so the adapter cannot be served as trained")
    rank = adapter_rank(manifest)
    if rank is not None and rank > VLLM_MAX_LORA_RANKS[-1]:
        reasons.append(f"vLLM supports LoRA rank <= {VLLM_MAX_LORA_RANKS[-1]}; the adapter has rank {rank}")
    extra = [m for m in (config.get("modules_to_save") or []) if m not in VLLM_MODULES_TO_SAVE_OK]
    if extra:
        reasons.append(f"vLLM supports modules_to_save only for classifier heads "
                       f"({', '.join(VLLM_MODULES_TO_SAVE_OK)}); the adapter saves {', '.join(map(str, extra))}")
    return reasons + vllm_config_limitations(config)


def vllm_config_limitations(config: Mapping[str, Any]) -> list[str]:
    """The part of :func:`vllm_limitations` that only a LoRA config shows: options vLLM
    does not implement (DoRA, rank and modules_to_save are checked by the caller)."""
    reasons = []
    if config.get("lora_bias"):
        reasons.append("vLLM does not support LoRA bias (lora_bias=true)")
    if config.get("bias") not in (None, "none"):
        reasons.append(f"vLLM does not support adapter bias (bias={config.get('bias')!r})")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() not in VLLM_INIT_OK:
        reasons.append(f"vLLM does not support init_lora_weights={init!r} (it changes the base weights); "
                       "convert the adapter to a plain LoRA with PEFT first")
    for key, what in (("alora_invocation_tokens", "Activated LoRA (aLoRA)"),
                      ("layer_replication", "layer_replication"), ("use_bdlora", "block-diagonal LoRA"),
                      ("use_qalora", "QALoRA"),
                      ("trainable_token_indices", "trainable tokens (trainable_token_indices)")):
        if config.get(key):
            reasons.append(f"vLLM does not support {what}")
    return reasons + _other_options("vLLM", config, _VLLM_CHECKED)


# the options vllm_limitations decides on itself; the rest (fan_in_fan_out, target_parameters,
# KaSA, ...) are refused until someone confirms that vLLM computes them as PEFT does
_VLLM_CHECKED = frozenset({"use_dora", "modules_to_save", "lora_bias", "bias", "init_lora_weights",
                           "alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora",
                           "trainable_token_indices"})


def _other_options(target: str, config: Mapping[str, Any], checked: frozenset[str]) -> list[str]:
    """Any other LoRA option that changes what PEFT computes (KaSA, Arrow, an option of a
    newer PEFT): a target that does not know it would serve the adapter as plain LoRA."""
    from .lora_options import unsupported_options

    return [f"{target} cannot serve it as PEFT does: the adapter {why}"
            for why in unsupported_options({k: v for k, v in config.items() if k not in checked})]


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
    return reasons + export_exact.config_refusals(target, config) + _other_options(target, config,
                                                                                   export_exact.CHECKED)


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


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_file() or out.is_symlink():
        raise FileExistsError(f"{out} is a file; pass a directory path to export to")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an old ``out`` (with ``overwrite``) is moved
    aside first and removed after, or put back if the rename fails."""
    parent = tmp.parent
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
        os.rename(out, old / "x")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old / "x", out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.is_dir():
        out.rmdir()
    os.rename(tmp, out)


def _files_under(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))


def _modelfile_value(value: str) -> str:
    """A Modelfile argument, quoted the way Ollama's parser reads it back."""
    if "\n" in value or "\r" in value:
        raise AdapterHubError(f"{value!r} cannot be written into a Modelfile (it spans lines)")
    if value != value.strip() or " " in value or "\t" in value:
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


@dataclass
class _Base:
    ref: str | None  # what to name the base in commands (a path, a Hub id, an Ollama model)
    checked: bool
    config: dict[str, Any] | None
    warnings: list[str]


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
        config = None
        if pin:
            try:
                config = registry.get_base(pin).config
            except AdapterHubError:
                config = None
        if not manifest.base.name:
            warnings.append("the adapter records no base model name; the generated files say BASE_MODEL: "
                            "replace it, or export again with --base-path")
        return _Base(manifest.base.name, False, config, warnings)
    p = Path(base_path).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".safetensors"):
        from .fingerprint import fingerprint

        fp = fingerprint(p)
        if pin and fp.digest != pin:
            raise IncompatibleAdapterError(
                f"{ref} is pinned to base {pin[:12]}, but the weights at {p} have fingerprint {fp.short}",
                reasons=[f"base fingerprint {fp.digest} != pinned {pin}"],
                hint="pass the base the adapter was trained on, or publish a version trained on this base")
        warnings = [] if pin else [f"{ref} was published without a base fingerprint, so {p} could not be "
                                   "checked against it"]
        config = fp.config or (_read_config(p) if p.is_dir() else None)
        return _Base(str(p.resolve()), bool(pin), config, warnings)
    warnings = [f"{base_path} is not a local safetensors model, so its weights were not checked against the "
                f"pin {pin[:12] if pin else '(none)'}"]
    return _Base(str(base_path), False, None, warnings)


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


# --------------------------------------------------------------------------- README


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


# --------------------------------------------------------------------------- formats


def _layout_peft(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path,
                 warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    usage = [
        "The directory is the adapter as PEFT saved it, byte for byte:",
        "",
        *_fence("python", "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                          f"base = AutoModelForCausalLM.from_pretrained({base.ref or 'BASE_MODEL'!r})\n"
                          f"model = PeftModel.from_pretrained(base, {str(out)!r})"),
    ]
    _write(tmp / PEFT_README, _readme(manifest, "peft", adapter_dir=".", served_name=served, base=base,
                                      usage=usage, warnings=warnings))
    return out, PEFT_README, {}


def _layout_vllm(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path, adir: str,
                 warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    rank = adapter_rank(manifest) or VLLM_MAX_LORA_RANKS[1]
    max_rank = vllm_max_lora_rank(rank)
    path = str(out / adir)
    module: dict[str, Any] = {"name": served, "path": path}
    if base.ref:
        module["base_model_name"] = base.ref
    modules = [module]
    _write(tmp / "lora-modules.json", _json(modules))
    base_arg = base.ref or "BASE_MODEL"
    argv = ["vllm", "serve", base_arg, "--enable-lora", "--max-lora-rank", str(max_rank),
            "--lora-modules", *[json.dumps(m, ensure_ascii=False) for m in modules]]
    lines = _vllm_command(base_arg, max_rank, modules)
    script = "\n".join([
        "#!/bin/sh",
        f"# Serve {manifest.name}@{manifest.version} on its base with vLLM (generated by adapterhub export).",
        f"# Base fingerprint: {manifest.base.fingerprint or 'not pinned'}",
        "# The base must be those exact weights: 'adapterhub fingerprint BASE_DIR' prints the fingerprint.",
        "# --lora-modules takes one JSON object per adapter (lora-modules.json lists them).",
        "# Extra arguments (--port, --dtype, ...) are passed on to vllm serve.",
        "set -e",
        "exec " + " \\\n  ".join(lines) + ' \\\n  "$@"',
        "",
    ])
    _write(tmp / "serve.sh", script, mode=0o755)
    request = {"model": served, "prompt": "Hello", "max_tokens": 32}
    usage = [
        "Start the server (`serve.sh` runs exactly this):",
        "",
        *_fence("sh", " \\\n  ".join(lines)),
        "",
        f"`--max-lora-rank {max_rank}` is the smallest value vLLM accepts (one of "
        f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))}) that holds the adapter's rank {rank}. "
        "`lora-modules.json` is the list of `--lora-modules` entries: vLLM takes each object as one "
        "argument (`--lora-modules '{...}' '{...}'`).",
        "",
        "Then select the adapter by name in any OpenAI-style request:",
        "",
        *_fence("sh", "curl http://localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
                      f"  -d {shlex.quote(json.dumps(request))}"),
        "",
        "Or load it into a running server (started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):",
        "",
        *_fence("sh", "curl http://localhost:8000/v1/load_lora_adapter -H 'Content-Type: application/json' \\\n"
                      f"  -d {shlex.quote(json.dumps({'lora_name': served, 'lora_path': path}))}"),
        "",
        "The paths are absolute, as written at export time; if you move this directory, export again.",
        "To resolve adapters by name from the registry instead, with the fingerprint checked on every "
        "load, use the adapterhub-vllm plugin (docs/serving.md, \"Moving to vLLM\").",
    ]
    _write(tmp / README, _readme(manifest, "vllm", adapter_dir=adir, served_name=served, base=base,
                                 usage=usage, warnings=warnings))
    return out / adir, README, {"max_lora_rank": max_rank, "lora_modules": modules, "command": argv}


def _vllm_command(base_arg: str, max_rank: int, modules: list[dict[str, Any]]) -> list[str]:
    """``vllm serve`` as shell lines: a flag and its values per line."""
    q = shlex.quote
    return [f"vllm serve {q(base_arg)}", "--enable-lora", f"--max-lora-rank {max_rank}",
            "--lora-modules " + " ".join(q(json.dumps(m, ensure_ascii=False)) for m in modules)]


def _layout_lorax(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path, adir: str,
                  warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    path = str(out / adir)
    request = {"inputs": "Hello", "parameters": {"max_new_tokens": 64, "adapter_id": path,
                                                 "adapter_source": "local"}}
    _write(tmp / "request.json", _json(request))
    docker_req = {"inputs": "Hello", "parameters": {"max_new_tokens": 64, "adapter_id": f"/data/{adir}",
                                                    "adapter_source": "local"}}
    base_arg = base.ref or "BASE_MODEL"
    base_in_docker = f"/base/{Path(base_arg).name}" if base.checked else base_arg
    docker = (f"docker run --gpus all --shm-size 1g -p 8080:80 -v {shlex.quote(str(out))}:/data"
              + (f" -v {shlex.quote(base_arg)}:{shlex.quote(base_in_docker)}" if base.checked else "")
              + f" \\\n  ghcr.io/predibase/lorax:main --model-id {shlex.quote(base_in_docker)}")
    usage = [
        "LoRAX loads PEFT LoRA adapters from a local directory per request. Start LoRAX on the base:",
        "",
        *_fence("sh", f"lorax-launcher --model-id {shlex.quote(base_arg)}"),
        "",
        "and name the adapter's directory in the request (`request.json` holds this body):",
        "",
        *_fence("sh", "curl http://127.0.0.1:8080/generate -X POST -H 'Content-Type: application/json' \\\n"
                      "  -d @request.json"),
        *_fence("json", json.dumps(request, indent=2)),
        "",
        "With the Docker image, mount this directory at `/data` and use the path inside the container:",
        "",
        *_fence("sh", docker),
        *_fence("json", json.dumps(docker_req, indent=2)),
    ]
    _write(tmp / README, _readme(manifest, "lorax", adapter_dir=adir, served_name=served, base=base,
                                 usage=usage, warnings=warnings))
    return out / adir, README, {"request": request}


def _layout_tgi(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path, adir: str,
                warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    path = str(out / adir)
    lora_adapters = f"{served}={path}"
    base_arg = base.ref or "BASE_MODEL"
    _write(tmp / "tgi.env", f"MODEL_ID={base_arg}\nLORA_ADAPTERS={lora_adapters}\n")
    launch = "\n".join([
        "#!/bin/sh",
        f"# Serve {manifest.name}@{manifest.version} with text-generation-inference (generated by adapterhub export).",
        f"# Base fingerprint: {manifest.base.fingerprint or 'not pinned'}",
        "# The base must be those exact weights: 'adapterhub fingerprint BASE_DIR' prints the fingerprint.",
        "set -e",
        f"LORA_ADAPTERS={shlex.quote(lora_adapters)} \\",
        f"  exec text-generation-launcher --model-id {shlex.quote(base_arg)} \"$@\"",
        "",
    ])
    _write(tmp / "launch.sh", launch, mode=0o755)
    request = {"inputs": "Hello", "parameters": {"max_new_tokens": 40, "adapter_id": served}}
    _write(tmp / "request.json", _json(request))
    usage = [
        "TGI loads LoRA adapters named at launch in `LORA_ADAPTERS` (`name=/path` for a local "
        "directory); `tgi.env` holds the variables and `launch.sh` runs:",
        "",
        *_fence("sh", f"LORA_ADAPTERS={shlex.quote(lora_adapters)} \\\n"
                      f"  text-generation-launcher --model-id {shlex.quote(base_arg)}"),
        "",
        "Requests select the adapter by that name (`request.json` holds this body):",
        "",
        *_fence("sh", "curl http://127.0.0.1:3000/generate -X POST -H 'Content-Type: application/json' \\\n"
                      "  -d @request.json"),
        *_fence("json", json.dumps(request, indent=2)),
        "",
        "With the Docker image, mount this directory and name the path inside the container: "
        f"`-v {shlex.quote(str(out))}:/data -e LORA_ADAPTERS={shlex.quote(f'{served}=/data/{adir}')}`. "
        "TGI serves LoRA adapters on its flash-attention model implementations (Llama, Mistral, Gemma, "
        "Qwen2 and others).",
    ]
    _write(tmp / README, _readme(manifest, "tgi", adapter_dir=adir, served_name=served, base=base,
                                 usage=usage, warnings=warnings))
    return out / adir, README, {"lora_adapters": lora_adapters, "request": request}


def _layout_ollama(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path, adir: str,
                   warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    base_arg = base.ref or "BASE_MODEL"
    model_type = _model_type(base.config)
    if model_type is None:
        warnings.append("the base's architecture is unknown here; Ollama's adapter converter takes only bases "
                        "whose GGUF architecture is llama or gemma2 (a Mistral from the Ollama library is llama)")
    if not base.checked:
        warnings.append(f"FROM names {base_arg!r}; Ollama needs an Ollama model or a local safetensors or GGUF "
                        "copy of exactly the weights the adapter was trained on (export again with --base-path "
                        "DIR to write and check a local base)")
    modelfile = "\n".join([
        f"# {manifest.name}@{manifest.version} on its base (generated by adapterhub export)",
        f"# Base fingerprint: {manifest.base.fingerprint or 'not pinned'}",
        "# FROM must be exactly the weights the adapter was trained on, or Ollama's output is erratic.",
        f"FROM {_modelfile_value(base_arg)}",
        f"ADAPTER {_modelfile_value('./' + adir)}",
        "",
    ])
    _write(tmp / "Modelfile", modelfile)
    ollama_name = served.lower()
    usage = [
        "Ollama reads the safetensors PEFT LoRA directory named by `ADAPTER` (relative paths are "
        "relative to the Modelfile) and applies it to the `FROM` base. Create and run the model from "
        "this directory:",
        "",
        *_fence("sh", f"ollama create {shlex.quote(ollama_name)} -f Modelfile\nollama run {shlex.quote(ollama_name)}"),
        "",
        "`Modelfile`:",
        "",
        *_fence("", modelfile),
        "Ollama's adapter converter takes bases whose architecture is llama (Llama 2, 3, 3.1, and Mistral "
        "models from the Ollama library) or gemma2; it advises non-quantized (non-QLoRA) adapters.",
    ]
    _write(tmp / README, _readme(manifest, "ollama", adapter_dir=adir, served_name=ollama_name, base=base,
                                 usage=usage, warnings=warnings))
    return out / adir, README, {"modelfile": modelfile, "model_type": model_type}


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
    if str(spec).startswith("hf://"):
        raise AdapterHubError(f"export reads the local registry; {spec} is a Hub reference",
                              hint=f"pull it first: adapterhub pull {spec}")
    info = registry.show(spec)
    manifest: Manifest = info.manifest
    ref = f"{info.name}@{info.version}"
    reasons = limitations(fmt, manifest)
    if reasons:
        raise IncompatibleAdapterError(
            f"cannot export {ref} for {TARGETS[fmt]}: {reasons[0]}"
            + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""),
            reasons=reasons, hint="export it with --format peft, or serve it with the transformers runtime")
    out = Path(out).expanduser().absolute()
    _check_out(out, overwrite)
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

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    except OSError as exc:
        raise DestinationError(f"cannot write into {out.parent}: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; servers in containers run as other users
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
            exact = export_exact.conform(fmt, staged, base.config)
            if exact.reasons:
                raise IncompatibleAdapterError(
                    f"cannot export {ref} for {TARGETS[fmt]}: {exact.reasons[0]}"
                    + (f" (and {len(exact.reasons) - 1} more)" if len(exact.reasons) > 1 else ""),
                    reasons=exact.reasons, hint="export it with --format peft, or serve it with the transformers "
                                                "runtime")
            warnings.extend(exact.notes)
            shutil.copyfile(staged / MANIFEST_FILE, tmp / MANIFEST_FILE)
            layout = {"vllm": _layout_vllm, "lorax": _layout_lorax, "tgi": _layout_tgi,
                      "ollama": _layout_ollama}[fmt]
            adapter_path, readme, details = layout(tmp, manifest, base, served, out, adir, warnings)
            if exact.details:
                details = {**details, "exact": exact.details}
        files = _files_under(tmp)
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if fmt == "ollama":
        served = served.lower()
    return ExportResult(info.name, info.version, info.digest, fmt, out, adapter_path, files, served,
                        base.ref, manifest.base.fingerprint, base.checked, readme, tuple(warnings), details)


__all__ = ["FORMATS", "ExportResult", "adapter_rank", "export", "limitations", "vllm_limitations",
           "vllm_max_lora_rank"]

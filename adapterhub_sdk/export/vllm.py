"""vLLM: a PEFT LoRA directory named in ``--lora-modules``, with the ``vllm serve`` command
that serves it, and what vLLM refuses (mirroring its own checks)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..manifest import Manifest
from .common import (
    README,
    _Base,
    _fence,
    _is_lora,
    _json,
    _other_options,
    _readme,
    _write,
    adapter_rank,
)

#: ``--max-lora-rank`` values vLLM accepts (vllm/config/lora.py, ``MaxLoRARanks``)
VLLM_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: ``init_lora_weights`` strings vLLM accepts (the rest, e.g. PiSSA, rewrite base weights)
VLLM_INIT_OK = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
#: ``modules_to_save`` vLLM accepts (classification heads)
VLLM_MODULES_TO_SAVE_OK = ("classifier", "score")


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")



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


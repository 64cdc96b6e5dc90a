"""From a registry spec to the arguments of vLLM's ``LoRARequest`` (``lora_name``,
``lora_int_id``, ``lora_path``), checked against the served model's fingerprint.

    from adapterhub_vllm import prepare_lora
    from vllm.lora.request import LoRARequest

    args = prepare_lora("acme/sentiment@^1", served_model="/models/llama-3.2-1b")
    llm.generate(prompts, lora_request=LoRARequest(**args.kwargs()))

The order matters: the version is looked up, its limits and its base fingerprint are
checked, and only then is it pulled (every file verified against its sha256) into a cache
directory named after the manifest digest, so a refused adapter is never written and a
cached one is never trusted without re-hashing.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub_sdk.errors import AdapterHubError, IncompatibleAdapterError
from adapterhub_sdk.export import adapter_rank, vllm_limitations
from adapterhub_sdk.manifest import Manifest

from .checks import running_vllm_reasons

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MANIFEST_FILE = "adapterhub_manifest.json"


@dataclass(frozen=True)
class LoRAArgs:
    """What vLLM's ``LoRARequest`` needs, and which version it is."""

    lora_name: str
    lora_int_id: int
    lora_path: str
    adapter: str  # name@version
    digest: str
    base_fingerprint: str

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.lora.request.LoRARequest``."""
        return {"lora_name": self.lora_name, "lora_int_id": self.lora_int_id, "lora_path": self.lora_path}

    def to_request(self) -> Any:
        """A ``vllm.lora.request.LoRARequest`` (needs vLLM)."""
        from vllm.lora.request import LoRARequest

        return LoRARequest(**self.kwargs())


def lora_int_id_for(digest: str) -> int:
    """A stable id in 1 .. 2**31-1 from a manifest digest (vLLM needs an int > 0)."""
    hexpart = digest.split(":", 1)[-1]
    return (int(hexpart[:8], 16) & 0x7FFFFFFF) or 1


def default_cache_dir() -> Path:
    env = os.environ.get("ADAPTERHUB_VLLM_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    from adapterhub_sdk.home import home_dir

    return home_dir() / "vllm-lora"


def check_fingerprint(value: str) -> str:
    fp = value.strip().lower()
    if not _HEX64.fullmatch(fp):
        raise AdapterHubError(f"{value!r} is not a base fingerprint (64 hex digits)",
                              hint="'adapterhub fingerprint BASE_DIR' prints the served model's fingerprint")
    return fp


def _local_model_path(model: str) -> Path | None:
    """The served model's directory: a local path, or the Hugging Face cache snapshot of a Hub
    id that is already downloaded (vLLM downloads there); None when neither."""
    p = Path(model).expanduser()
    if p.exists():
        return p
    if not _HUB_ID.fullmatch(model):
        return None
    try:
        from huggingface_hub import constants, snapshot_download

        found = Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, no huggingface_hub, offline: unknown
        return None
    # vLLM may serve another revision (--revision) than the one 'main' points at here: with
    # several snapshots cached, which weights it loaded cannot be told from the cache
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots"
    cached = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else [found.name]
    if len(cached) > 1:
        raise AdapterHubError(
            f"the served model {model!r} has {len(cached)} revisions in the Hugging Face cache "
            f"({', '.join(c[:12] for c in cached)}); which one vLLM serves cannot be told",
            hint="set ADAPTERHUB_VLLM_BASE_FINGERPRINT to 'adapterhub fingerprint' of the served snapshot")
    return found


def served_fingerprint(served_model: str | os.PathLike[str] | None = None, *,
                       fingerprint: str | None = None) -> str:
    """The fingerprint of the weights vLLM serves: ``fingerprint`` when given (configuration,
    e.g. ADAPTERHUB_VLLM_BASE_FINGERPRINT), else computed from the served model's directory
    (for a Hub id, its one snapshot in the Hugging Face cache: with several cached, refused).
    vLLM started with ``--download-dir`` elsewhere, or with ``--quantization``, serves other
    weights than the cache shows: set the fingerprint then."""
    if fingerprint:
        return check_fingerprint(fingerprint)
    if served_model is None:
        raise AdapterHubError("the served model's fingerprint is unknown: no model path and no fingerprint given",
                              hint="set ADAPTERHUB_VLLM_BASE_FINGERPRINT to 'adapterhub fingerprint BASE_DIR'")
    path = _local_model_path(str(served_model))
    if path is None:
        raise AdapterHubError(
            f"the served model's fingerprint is unknown: {str(served_model)!r} is not a local directory "
            "or a downloaded Hub model",
            hint="set ADAPTERHUB_VLLM_BASE_FINGERPRINT to the output of 'adapterhub fingerprint BASE_DIR'")
    from adapterhub_sdk.fingerprint import fingerprint as compute

    return compute(path).digest


def refusal_reasons(manifest: Manifest, served_fp: str, *, max_lora_rank: int | None = None) -> list[str]:
    """Why vLLM, serving the weights ``served_fp``, must not load this adapter (empty: it may)."""
    reasons = list(vllm_limitations(manifest))
    if manifest.method.get("type") == "lora":
        config = manifest.method.get("config") or {}
        reasons += running_vllm_reasons(config)  # what depends on the vLLM release installed here
    pin = manifest.base.fingerprint
    if not pin:
        reasons.append("it was published without a base fingerprint, so it cannot be checked against the "
                       "served model")
    elif pin != served_fp:
        reasons.append(f"it is pinned to base {pin[:12]}, but vLLM serves weights with fingerprint "
                       f"{served_fp[:12]}")
    rank = adapter_rank(manifest)
    if max_lora_rank is not None and rank is not None and rank > max_lora_rank:
        reasons.append(f"its rank {rank} is above the server's --max-lora-rank {max_lora_rank}")
    return reasons


def _intact(path: Path, manifest: Manifest) -> bool:
    """Every file of ``manifest`` is in ``path`` with its size and sha256."""
    try:
        if Manifest.from_json((path / MANIFEST_FILE).read_bytes()).digest != manifest.digest:
            return False
        for f in manifest.files:
            p = path / f.path
            if p.stat().st_size != f.size:
                return False
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != f.sha256:
                return False
    except (OSError, AdapterHubError):
        return False
    return True


def cached_pull(registry: Any, ref: str, manifest: Manifest, cache_dir: str | os.PathLike[str] | None = None
                ) -> Path:
    """``ref`` pulled (verified) into ``<cache>/<manifest digest>``; a copy already there is
    re-hashed first and replaced if anything differs. Safe across processes (a file lock).
    A signing policy in force refuses ``ref`` unless signed as it requires, cached or not."""
    from filelock import FileLock

    registry.check_signed(ref)

    root = Path(cache_dir).expanduser().absolute() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = manifest.digest.split(":", 1)[-1]
    dest = root / key
    with FileLock(str(root / f".{key}.lock")):
        if dest.is_dir() and any(dest.iterdir()):
            if _intact(dest, manifest):
                return dest
            registry.pull(ref, dest, overwrite=True)
        else:
            registry.pull(ref, dest)
    return dest


def registry_ref(registry: Any, spec: str) -> str:
    """``spec`` itself, or for a remote registry's URL (``oci://HOST/REPO:TAG``,
    ``oci://HOST/REPO@^1``, ``hf://ORG/REPO@SPEC``) the version it names, pulled first into
    ``registry`` (every layer verified against its digest, then recorded with its source),
    as ``name@version``."""
    from adapterhub_sdk.remotes import remote_for

    remote = remote_for(spec)
    if remote is None:
        return spec
    info = remote.pull(registry, spec, None)
    return f"{info.name}@{info.version}"


def prepare_lora(spec: str, *, registry: Any = None, served_model: str | os.PathLike[str] | None = None,
                 base_fingerprint: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 lora_name: str | None = None, lora_int_id: int | None = None,
                 max_lora_rank: int | None = None) -> LoRAArgs:
    """Resolve ``spec`` (``ns/name[@spec]``, or an ``oci://`` / ``hf://`` URL, pulled into the
    registry first: :func:`registry_ref`) in ``registry`` (default: the one the
    environment names), refuse it unless vLLM can serve it on the served weights, pull it
    (verified) into the cache and return the ``LoRARequest`` arguments.

    The served weights are ``base_fingerprint`` when given, else the fingerprint of
    ``served_model`` (its directory, or its Hub cache snapshot). ``lora_name`` defaults to
    ``spec``; ``lora_int_id`` to a stable id derived from the manifest digest.
    Raises :class:`IncompatibleAdapterError` (with every reason) on a refusal, and
    :class:`NotFoundError` when the registry has no such version."""
    own = registry is None
    if own:
        from adapterhub_sdk.registry import Registry

        registry = Registry.open()
    try:
        info = registry.show(registry_ref(registry, spec))
        manifest: Manifest = info.manifest
        ref = f"{info.name}@{info.version}"
        served = served_fingerprint(served_model, fingerprint=base_fingerprint)
        reasons = refusal_reasons(manifest, served, max_lora_rank=max_lora_rank)
        if reasons:
            raise IncompatibleAdapterError(
                f"{ref} refused for vLLM: {reasons[0]}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1
                                                          else ""),
                reasons=reasons,
                hint="'adapterhub resolve --fingerprint FP --runtime vllm' lists the versions that fit")
        path = cached_pull(registry, ref, manifest, cache_dir)
    finally:
        if own:
            registry.close()
    if lora_int_id is not None and lora_int_id < 1:
        raise ValueError(f"lora_int_id must be > 0, got {lora_int_id}")
    return LoRAArgs(lora_name or spec, lora_int_id or lora_int_id_for(info.digest), str(path), ref, info.digest,
                    served)

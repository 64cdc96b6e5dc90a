"""A vLLM LoRA resolver backed by the adapterhub registry.

vLLM (started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) asks
every registered ``LoRAResolver`` for a model name it does not know yet:
``await resolver.resolve_lora(base_model_name, lora_name)``, where ``base_model_name`` is
the model vLLM serves (the path or Hub id given to ``vllm serve``). This resolver reads
``lora_name`` as a registry spec (``acme/sentiment``, ``acme/sentiment@^1``,
``acme/sentiment@prod``; or a remote registry's URL, ``oci://HOST/REPO:TAG``, pulled and
verified into the registry first), refuses versions pinned to other weights than the served
model's (or that vLLM cannot run), pulls the rest, verified, into a cache, and returns a
``LoRARequest``. It returns None, as vLLM's contract asks, for a name that is not in the
registry (other resolvers may know it) and for a refused version, whose reason it logs
and keeps in :attr:`AdapterHubLoRAResolver.refusals`.

Configuration (environment of the vLLM server):

- ``ADAPTERHUB_REGISTRY_URL``, ``ADAPTERHUB_BLOBS``, ``ADAPTERHUB_HOME``: the registry,
  as for the ``adapterhub`` CLI;
- ``ADAPTERHUB_VLLM_BASE_FINGERPRINT``: the served model's fingerprint; without it, the
  fingerprint of the served model's directory (computed once, cached);
- ``ADAPTERHUB_VLLM_CACHE_DIR``: where adapters are pulled (default ``<home>/vllm-lora``);
- ``ADAPTERHUB_VLLM_MAX_LORA_RANK``: the server's ``--max-lora-rank``, to refuse larger
  adapters with a reason instead of a failed load;
- ``ADAPTERHUB_VLLM_FOLLOW_INTERVAL`` (default 2 s; 0: off), ``ADAPTERHUB_VLLM_SERVER_URL``
  (default ``http://127.0.0.1:8000``), ``VLLM_API_KEY``: a name that is an alias spec
  (``acme/sentiment@prod``) is followed, reloaded in place when the alias moves
  (:mod:`adapterhub_vllm.follow`).

The module imports without vLLM: :class:`AdapterHubLoRAResolver` then is a plain class with
the same ``resolve_lora`` coroutine, returning :class:`~adapterhub_vllm.lora.LoRAArgs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapterhub_sdk.errors import (
    AdapterHubError,
    InvalidNameError,
    InvalidVersionError,
    NotFoundError,
)
from adapterhub_sdk.names import parse_ref
from adapterhub_sdk.remotes import is_remote_ref

from .follow import DEFAULT_INTERVAL, DEFAULT_SERVER_URL, AliasFollower
from .lora import LoRAArgs, check_fingerprint, prepare_lora, served_fingerprint

logger = logging.getLogger("adapterhub_vllm")
RESOLVER_NAME = "adapterhub"

try:  # vLLM's own classes when vLLM is installed and importable
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    VLLM_IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - not installed, or installed without a usable CUDA/torch
    LoRAResolver = object  # type: ignore[assignment,misc]
    LoRARequest = None  # type: ignore[assignment,misc]
    LoRAResolverRegistry = None  # type: ignore[assignment]
    VLLM_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def vllm_available() -> bool:
    return VLLM_IMPORT_ERROR is None


class AdapterHubLoRAResolver(LoRAResolver):  # type: ignore[misc,valid-type]
    """Resolves vLLM LoRA names from an adapterhub registry, fingerprint-checked."""

    def __init__(self, *, registry_url: str | None = None, blobs: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, base_fingerprint: str | None = None,
                 max_lora_rank: int | None = None, registry: Any = None, follow_interval: float = DEFAULT_INTERVAL,
                 server_url: str = DEFAULT_SERVER_URL, api_key: str | None = None) -> None:
        self.registry_url = registry_url
        self.blobs = blobs
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir is not None else None
        self.base_fingerprint = check_fingerprint(base_fingerprint) if base_fingerprint else None
        self.max_lora_rank = max_lora_rank
        self._registry = registry
        self._lock = threading.Lock()
        self._served: dict[str, str] = {}  # served model -> fingerprint
        #: lora_name -> why it was refused (the latest refusal per name)
        self.refusals: dict[str, str] = {}
        #: alias names resolved here, reloaded in place in vLLM when their alias moves
        self.follower = AliasFollower(self, interval=follow_interval, server_url=server_url, api_key=api_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdapterHubLoRAResolver:
        env = os.environ if environ is None else environ
        rank = env.get("ADAPTERHUB_VLLM_MAX_LORA_RANK")
        try:
            max_rank = int(rank) if rank else None
        except ValueError:
            raise ValueError(f"ADAPTERHUB_VLLM_MAX_LORA_RANK={rank!r} is not an integer") from None
        interval = env.get("ADAPTERHUB_VLLM_FOLLOW_INTERVAL")
        try:
            follow = float(interval) if interval else DEFAULT_INTERVAL
            if follow < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"ADAPTERHUB_VLLM_FOLLOW_INTERVAL={interval!r} is not a number of seconds >= 0") from None
        fp = env.get("ADAPTERHUB_VLLM_BASE_FINGERPRINT") or None
        if fp:
            try:
                fp = check_fingerprint(fp)
            except AdapterHubError as exc:
                raise ValueError(f"ADAPTERHUB_VLLM_BASE_FINGERPRINT: {exc.message}") from None
        return cls(registry_url=env.get("ADAPTERHUB_REGISTRY_URL") or None, blobs=env.get("ADAPTERHUB_BLOBS") or None,
                   cache_dir=env.get("ADAPTERHUB_VLLM_CACHE_DIR") or None, base_fingerprint=fp,
                   max_lora_rank=max_rank, follow_interval=follow,
                   server_url=env.get("ADAPTERHUB_VLLM_SERVER_URL") or DEFAULT_SERVER_URL,
                   api_key=env.get("VLLM_API_KEY") or None)

    # ------------------------------------------------------------------ sync core

    def registry(self) -> Any:
        with self._lock:
            if self._registry is None:
                from adapterhub_sdk.registry import Registry

                self._registry = Registry.open(self.registry_url, blobs=self.blobs)
            return self._registry

    def served(self, base_model_name: str) -> str:
        """The served model's fingerprint (configured, or computed once per model)."""
        if self.base_fingerprint:
            return self.base_fingerprint
        with self._lock:
            fp = self._served.get(base_model_name)
        if fp is None:
            fp = served_fingerprint(base_model_name)
            with self._lock:
                self._served[base_model_name] = fp
        return fp

    def resolve_args(self, base_model_name: str, lora_name: str) -> LoRAArgs | None:
        """The LoRARequest arguments for ``lora_name``, or None (not ours, or refused)."""
        remote = is_remote_ref(lora_name)  # oci://HOST/REPO:TAG: pulled into the registry by prepare_lora
        try:
            if not remote:
                parse_ref(lora_name)
        except (InvalidNameError, InvalidVersionError):
            logger.debug("adapterhub: %r is not a registry name; leaving it to other resolvers", lora_name)
            return None
        try:
            reg = self.registry()
            if not remote:
                reg.show(lora_name)  # before any fingerprinting or pulling
        except NotFoundError as exc:  # not in this registry: other resolvers may know it
            logger.debug("adapterhub: %s", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - the registry cannot be opened or read: never fail vLLM's request
            self._refuse(lora_name, base_model_name, exc)
            return None
        try:
            served = self.served(base_model_name)
            args = prepare_lora(lora_name, registry=reg, base_fingerprint=served, cache_dir=self.cache_dir,
                                lora_name=lora_name, max_lora_rank=self.max_lora_rank)
        except Exception as exc:  # noqa: BLE001 - refused, or could not be pulled intact
            self._refuse(lora_name, base_model_name, exc)
            return None
        self.refusals.pop(lora_name, None)
        logger.info("adapterhub: LoRA %r is %s (%s), base %s checked", lora_name, args.adapter, args.lora_path,
                    args.base_fingerprint[:12])
        self.follower.follow(lora_name, base_model_name, args)  # an alias: reloaded in place when it moves
        return args

    def _refuse(self, lora_name: str, base_model_name: str, exc: BaseException) -> None:
        """Record and log why ``lora_name`` is not loaded."""
        reason = " ".join(str(exc.args[0] if exc.args else exc).split())
        hint = getattr(exc, "hint", None)
        self.refusals[lora_name] = reason + (f"; {hint}" if hint else "")
        logger.warning("adapterhub: LoRA %r not loaded on %s: %s", lora_name, base_model_name,
                       self.refusals[lora_name])

    # ------------------------------------------------------------------ vLLM's interface

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
        """vLLM's ``LoRAResolver.resolve_lora``: a ``LoRARequest`` (``LoRAArgs`` without
        vLLM), or None. Registry and file work run in a thread, off vLLM's event loop."""
        args = await asyncio.to_thread(self.resolve_args, base_model_name, lora_name)
        if args is None:
            return None
        if LoRARequest is None:
            return args
        return LoRARequest(**args.kwargs())


def register_resolver() -> None:
    """vLLM general-plugin entry point: register the resolver (configured from the
    environment) as ``adapterhub`` in ``LoRAResolverRegistry``. vLLM calls it in each of its
    processes; it only reads the environment, the registry is opened on first use."""
    if LoRAResolverRegistry is None:
        logger.warning("adapterhub: vLLM is not importable (%s); LoRA resolver not registered", VLLM_IMPORT_ERROR)
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, AdapterHubLoRAResolver.from_env())

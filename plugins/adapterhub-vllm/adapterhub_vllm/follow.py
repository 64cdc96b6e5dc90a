"""Following aliases in vLLM: an adapter resolved from ``acme/sentiment@prod`` is reloaded in
place, under the same name, when the alias moves in the registry.

vLLM asks a resolver about a name once; afterwards it serves the ``LoRARequest`` it got. To
follow an alias, a thread in the vLLM API server process (started by the resolver the first
time it answers for an alias name) reads where each such alias points every ``interval``
seconds (``Registry.alias_target``: one indexed query). When it has moved, the new version
goes through everything the resolver does (vLLM's limits, the served fingerprint, the
signing policy, a verified pull into the digest-keyed cache), and only then is vLLM asked to
reload it in place: ``POST {server}/v1/load_lora_adapter {"lora_name": NAME, "lora_path":
NEW_DIR, "load_inplace": true}`` (vLLM with ``load_inplace``: 0.8.5 and later; runtime
updates must be on, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, as for the resolver itself).
A version that is refused, or that vLLM will not load, leaves the old one serving; the
reason is logged and kept in ``refusals`` (and :attr:`AliasFollower.state`) until the alias
moves again. Moving the alias back is the rollback.

What vLLM does with requests running during an in-place reload is vLLM's: it swaps the
weights under the same adapter id, so a request running at that moment may finish on the
new weights (adapterhub's own server keeps each request on the version it started with).

Configuration (environment of the vLLM server): ``ADAPTERHUB_VLLM_FOLLOW_INTERVAL`` (seconds,
default 2; 0: do not follow), ``ADAPTERHUB_VLLM_SERVER_URL`` (default
``http://127.0.0.1:8000``: where this vLLM listens), ``VLLM_API_KEY`` (sent as the bearer
key, as vLLM's ``--api-key`` requires).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from adapterhub_sdk.names import parse_ref
from adapterhub_sdk.versions import VersionSpec

from .lora import LoRAArgs, prepare_lora

logger = logging.getLogger("adapterhub_vllm")
DEFAULT_INTERVAL = 2.0
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def is_alias(spec: str) -> bool:
    try:
        ref = parse_ref(spec)
        return ref.spec is not None and VersionSpec.parse(ref.spec).kind == "alias"
    except Exception:  # noqa: BLE001 - not a registry spec
        return False


@dataclass
class Followed:
    lora_name: str  # the name vLLM serves (the spec a client sent, e.g. acme/sentiment@prod)
    base_model_name: str
    adapter: str  # name@version serving now
    digest: str
    lora_path: str
    since: float = field(default_factory=time.time)
    refusal: dict[str, Any] | None = None
    tried: str | None = None  # a refused digest, not retried until the alias moves again


class AliasFollower:
    """Re-reads followed aliases and asks vLLM to reload moved ones in place."""

    def __init__(self, resolver: Any, *, interval: float = DEFAULT_INTERVAL, server_url: str = DEFAULT_SERVER_URL,
                 api_key: str | None = None, timeout: float = 120.0):
        if interval < 0:
            raise ValueError("the follow interval must be >= 0 (0: do not follow)")
        self.resolver = resolver
        self.interval = float(interval)
        self.server_url = server_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.followed: dict[str, Followed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """What each followed name serves, and its last refusal (for logs and tests)."""
        with self._lock:
            return {n: {"adapter": f.adapter, "digest": f.digest, "lora_path": f.lora_path, "refusal": f.refusal}
                    for n, f in self.followed.items()}

    def follow(self, lora_name: str, base_model_name: str, args: LoRAArgs) -> None:
        """Follow ``lora_name`` (an alias spec) from now on, serving ``args``."""
        if self.interval <= 0 or not is_alias(lora_name):
            return
        with self._lock:
            self.followed[lora_name] = Followed(lora_name, base_model_name, args.adapter, args.digest, args.lora_path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="adapterhub-vllm-follow", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - logged; the next poll tries again
                logger.exception("adapterhub: following aliases failed")

    def poll(self) -> None:
        """One round over every followed name."""
        with self._lock:
            names = list(self.followed.values())
        for f in names:
            self._check(f)

    def _refuse(self, f: Followed, version: str | None, digest: str | None, reason: str) -> None:
        f.refusal = {"version": version, "digest": digest, "reason": reason, "at": int(time.time())}
        self.resolver.refusals[f.lora_name] = reason
        logger.warning("adapterhub: %s moved to %s, which is not served: %s; %s keeps serving", f.lora_name,
                       version or "?", reason, f.adapter)

    def _check(self, f: Followed) -> None:
        try:
            name, version, digest, yanked = self.resolver.registry().alias_target(f.lora_name)
        except Exception as exc:  # noqa: BLE001 - alias deleted, registry unreachable: keep serving
            reason = " ".join(str(exc).split())
            if f.refusal is None or f.refusal["reason"] != reason:
                self._refuse(f, None, None, reason)
            return
        if digest == f.digest:
            if f.refusal is not None:
                logger.info("adapterhub: %s points at %s again, the version serving", f.lora_name, f.adapter)
                self.resolver.refusals.pop(f.lora_name, None)
            f.refusal, f.tried = None, None
            return
        if digest == f.tried:
            return
        f.tried = digest
        ref = f"{name}@{version}"
        if yanked:
            self._refuse(f, version, digest, f"{ref} is yanked")
            return
        started = time.monotonic()
        try:  # every check the resolver makes, and the verified pull, before vLLM hears of it
            args = prepare_lora(ref, registry=self.resolver.registry(),
                                base_fingerprint=self.resolver.served(f.base_model_name),
                                cache_dir=self.resolver.cache_dir, lora_name=f.lora_name,
                                max_lora_rank=self.resolver.max_lora_rank)
        except Exception as exc:  # noqa: BLE001 - refused: the old version keeps serving
            hint = getattr(exc, "hint", None)
            self._refuse(f, version, digest, " ".join(str(exc).split()) + (f"; {hint}" if hint else ""))
            return
        status, text = self._reload(f.lora_name, args.lora_path)
        if status != 200:
            self._refuse(f, version, digest, f"vLLM answered {status} to the in-place reload: {text[:500]}")
            return
        was = f.adapter
        with self._lock:
            f.adapter, f.digest, f.lora_path, f.since, f.refusal, f.tried = (args.adapter, args.digest,
                                                                            args.lora_path, time.time(), None, None)
        self.resolver.refusals.pop(f.lora_name, None)
        logger.info("adapterhub: %s moved from %s to %s; vLLM reloaded it in place (%s) after %.2f s", f.lora_name,
                    was, args.adapter, args.lora_path, time.monotonic() - started)

    def _reload(self, lora_name: str, lora_path: str) -> tuple[int, str]:
        """vLLM's in-place load: (HTTP status, body); a connection failure is status 0."""
        body = json.dumps({"lora_name": lora_name, "lora_path": lora_path, "load_inplace": True}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.server_url}/v1/load_lora_adapter", data=body, headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the configured server
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")
        except OSError as exc:
            return 0, f"{self.server_url} cannot be reached ({exc}); set ADAPTERHUB_VLLM_SERVER_URL"


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_SERVER_URL", "AliasFollower", "Followed", "is_alias"]

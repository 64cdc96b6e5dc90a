"""Aliases that move live, and the internal slots that let a switch be atomic.

An adapter served from an alias spec (``acme/sentiment@prod``) is attached to the deployment
under an internal slot name (``acme/sentiment#1``); its public name (``acme/sentiment``, what
requests send as ``model``) points at that slot. A background task re-reads where the alias
points every ``interval`` seconds (one indexed query, :meth:`Registry.alias_target`). When it
has moved, the new version is attached under a new slot at the next decode step boundary
(``Scheduler.call`` naming only the new slot, so it never waits for the requests running:
a switch takes the poll interval plus the attach, however long the running requests are),
with every check an attach makes (fingerprint, signing policy, non-finite weights,
loading); only then does the public name point at the new slot, in one
assignment on the event loop. A request holds the slot it was resolved to (a lease) until its
answer is complete, so requests in flight finish on the version they started with; the old
slot is detached once no lease holds it (at a later poll; the detach names the slot, so the
scheduler also runs it only once no row in a step uses it). A version that cannot be served
leaves the old one serving, and its refusal is shown in ``/v1/models`` until the alias moves
again. Moving the alias back is a rollback like any other move.

The same leases make admin replacements safe: an adapter replaced or unloaded over HTTP while
serving a followed name is retired the same way. A plain name unloaded while requests hold it
is hidden at once (:meth:`AliasFollower.unload`) and detached once the last has released it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..names import parse_ref
from ..versions import VersionSpec
from .errors import error_message

if TYPE_CHECKING:
    from .serving import Server

log = logging.getLogger("adapterhub_sdk.server")
DEFAULT_INTERVAL = 2.0  # seconds between polls (serve --follow-interval)


def is_alias(spec: str) -> bool:
    """Whether a registry spec names an alias (``ns/name@prod``)."""
    try:
        ref = parse_ref(spec)
        return ref.spec is not None and VersionSpec.parse(ref.spec).kind == "alias"
    except Exception:  # noqa: BLE001 - not a spec: a directory, a typo (the attach says why)
        return False


def slot_name(public: str, n: int) -> str:
    """An internal deployment name: '#' is never in a served name, so no client can pick it."""
    return f"{public}#{n}"


@dataclass
class Followed:
    """A public name following an alias: the slot serving it now, and the last refusal."""

    public: str
    spec: str  # ns/name@alias
    slot: str
    version: str
    digest: str
    since: int  # when this version started serving
    refusal: dict[str, Any] | None = None  # {"version", "digest", "reason", "at"}
    tried: str | None = None  # the refused digest, not retried until the alias moves again

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "version": self.version, "digest": self.digest, "since": self.since,
                "refusal": self.refusal}


class AliasFollower:
    """The public name -> slot table, the leases, and the poller (see the module's doc)."""

    def __init__(self, server: Server, interval: float = DEFAULT_INTERVAL):
        if interval < 0:
            raise ValueError("the follow interval must be >= 0 (0: do not follow)")
        self.server = server
        self.interval = float(interval)
        self.follows: dict[str, Followed] = {}
        self.leases: Counter[str] = Counter()
        self.retiring: dict[str, int] = {}  # slot -> polls it was seen idle
        self.unloading: dict[str, Any] = {}  # unloaded name -> its version, until no request holds it
        self.loading: set[str] = set()  # names load_lora_adapter is loading (not yet answered)
        self.unloads: Counter[str] = Counter()  # unload() calls per name (an attach running meanwhile yields)
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:  # made on the event loop that uses it
            self._lock = asyncio.Lock()
        return self._lock

    # ------------------------------------------------------------------ names and leases

    def hidden(self) -> set[str]:
        """Deployment names no client addresses: followed slots, retiring and unloading ones."""
        return {f.slot for f in self.follows.values()} | set(self.retiring) | set(self.unloading)

    def public_names(self, attached: list[str]) -> list[str]:
        hidden = self.hidden()
        names = [n for n in attached if n not in hidden and n not in self.follows]
        return names + [p for p in self.follows if self.follows[p].slot in attached]

    def slot_of(self, public: str) -> str | None:
        """The deployment name a request for ``public`` runs on (None: not served)."""
        f = self.follows.get(public)
        if f is not None:
            return f.slot
        if public in self.hidden():  # an internal slot, retiring or unloading: no client's name
            return None
        return public if public in self.server.dep.adapters else None

    def unload(self, name: str) -> None:
        """Serve ``name`` no more from now on, while the requests holding it (resolved to it,
        running or not yet submitted) finish on it; it is detached once the last of them has
        released it. vLLM's unload_lora_adapter does the same: the name goes at once,
        requests keep theirs. Call on the event loop."""
        self.unloading[name] = self.server.dep.adapters[name]
        self.unloads[name] += 1
        self._event_loop = asyncio.get_running_loop()
        if self.leases.get(name, 0) <= 0:
            self._detach_unloaded(name)

    def _detach_unloaded(self, name: str) -> None:
        """Detach ``name``'s unloaded version (through the scheduler: after any row on it), unless
        the name was attached again meanwhile."""
        victim = self.unloading.get(name)
        if victim is None:
            return
        dep = self.server.dep

        def detach() -> None:
            if dep.adapters.get(name) is victim:  # not what a later attach put there
                dep.detach(name)

        def done(fut: Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("detaching %s after its requests: %s", name, fut.exception())
            loop = self._event_loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone
                    loop.call_soon_threadsafe(self._unloaded, name, victim)

        try:
            self.server.worker.call(detach, names=[name]).add_done_callback(done)
        except Exception as exc:  # noqa: BLE001 - stopping: nothing is served any more
            log.debug("detaching %s: %s", name, exc)

    def _unloaded(self, name: str, victim: Any) -> None:
        if self.unloading.get(name) is victim:
            del self.unloading[name]

    def public_of(self, slot: str) -> str:
        for f in self.follows.values():
            if f.slot == slot:
                return f.public
        return slot

    def acquire(self, slot: str | None) -> Callable[[], None]:
        """Hold ``slot`` until the returned function is called (once; later calls do nothing)."""
        if slot is None:
            return lambda: None
        self.leases[slot] += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.leases[slot] -= 1
                if self.leases[slot] <= 0:
                    del self.leases[slot]
                    if slot in self.unloading:  # the last request on an unloaded name is done
                        self._detach_unloaded(slot)

        return release

    def retire(self, slot: str) -> None:
        """Detach ``slot`` once no request holds it (checked at the polls that follow)."""
        if slot in self.server.dep.adapters:
            self.retiring.setdefault(slot, 0)

    # ------------------------------------------------------------------ following

    def adopt(self, public: str, spec: str, attached: Any) -> Followed:
        """Follow ``spec`` for ``public``, now served by ``attached`` (attached under a slot name)."""
        version = attached.ref.rpartition("@")[2]
        f = Followed(public, spec, attached.name, version, attached.digest, int(time.time()))
        self.follows[public] = f
        return f

    def next_slot(self, public: str) -> str:
        existing = set(self.server.dep.adapters)
        while True:
            name = slot_name(public, next(self._seq))
            if name not in existing:
                return name

    async def follow(self, public: str, spec: str) -> Any:
        """Attach ``spec`` (an alias) as ``public`` and follow it; what was served as ``public``
        before is retired. Raises what the attach raises, leaving everything as it was."""
        async with self._guard():
            slot = self.next_slot(public)
            attached, notes = await self._attach(spec, slot)
            old = self.follows.get(public)
            self.adopt(public, spec, attached)
            if old is not None:
                self.retire(old.slot)
            elif public in self.server.dep.adapters:
                self.retire(public)
            log.info("serving %s as %s (%s, %s), following %s", attached.ref, public, attached.digest[:19],
                     attached.verdict, spec)
            return attached, notes

    async def unfollow(self, public: str) -> bool:
        """Stop following ``public`` and retire its slot; False when it was not followed."""
        async with self._guard():
            f = self.follows.pop(public, None)
            if f is None:
                return False
            self.retire(f.slot)
            log.info("no longer serving %s (%s, following %s)", public, f.version, f.spec)
            return True

    async def _attach(self, spec: str, slot: str) -> tuple[Any, list[str]]:
        from ..deploy import StructuralMatchWarning

        dep = self.server.dep

        def attach() -> tuple[Any, list[str]]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StructuralMatchWarning)
                attached = dep.attach(spec, name=slot)
            return attached, [str(w.message) for w in caught if issubclass(w.category, StructuralMatchWarning)]

        return await asyncio.wrap_future(self.server.worker.call(attach, names=[slot]))  # a new name: no wait

    # ------------------------------------------------------------------ the poller

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="adapterhub-alias-follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a failed poll is logged; the next one tries again
                log.exception("following aliases failed")

    async def poll(self) -> None:
        """One round: re-read every followed alias, switch what moved, detach idle slots."""
        async with self._guard():
            for f in list(self.follows.values()):
                await self._check(f)
            await self._reap()

    def _refuse(self, f: Followed, version: str | None, digest: str | None, reason: str) -> None:
        f.refusal = {"version": version, "digest": digest, "reason": reason, "at": int(time.time())}
        log.warning("%s: %s moved to %s, which is not served: %s; %s keeps serving", f.public, f.spec,
                    version or "?", reason, f.version)

    async def _check(self, f: Followed) -> None:
        registry = self.server.dep.registry
        try:
            name, version, digest, yanked = await run_in_threadpool(registry.alias_target, f.spec)
        except Exception as exc:  # noqa: BLE001 - alias deleted, registry down: keep serving, say why
            reason = error_message(exc)
            if f.refusal is None or f.refusal["reason"] != reason:
                self._refuse(f, None, None, reason)
            return
        if digest == f.digest:  # not moved, or moved back to what is serving
            if f.refusal is not None:
                log.info("%s: %s points at %s again, the version serving", f.public, f.spec, f.version)
            f.refusal, f.tried = None, None
            return
        if digest == f.tried:  # refused already; tried again only after another move
            return
        f.tried = digest
        if yanked:
            self._refuse(f, version, digest, f"{name}@{version} is yanked")
            return
        slot = self.next_slot(f.public)
        started = time.monotonic()
        try:
            attached, notes = await self._attach(f"{name}@{version}", slot)
        except Exception as exc:  # noqa: BLE001 - refused or failed: the old version keeps serving
            from ..errors import AdapterHubError, RegistryError

            reason = error_message(exc)
            if isinstance(exc, AdapterHubError) and not isinstance(exc, RegistryError):
                self._refuse(f, version, digest, reason)  # refused: tried again after another move
                return
            f.tried = None  # a failure of the moment (I/O, memory, the database): tried at the next poll
            if f.refusal is None or f.refusal["reason"] != reason or f.refusal["digest"] != digest:
                self._refuse(f, version, digest, reason)
            return
        if self.follows.get(f.public) is not f:  # unfollowed meanwhile
            self.retire(slot)
            return
        old, was = f.slot, f.version
        f.slot, f.version, f.digest, f.since, f.refusal, f.tried = slot, version, digest, int(time.time()), None, None
        self.server.loaded_at[f.public] = f.since
        self.retire(old)
        for note in notes:
            log.warning("%s: %s", f.public, note)
        log.info("%s: %s moved from %s to %s; switched to %s (%s, %s) after %.2f s to attach", f.public, f.spec,
                 was, version, attached.ref, attached.digest[:19], attached.verdict, time.monotonic() - started)

    async def _reap(self) -> None:
        """Detach retired slots no request holds (idle at two polls in a row; a cancelled row
        still in a scheduler step holds the detach back until it has left)."""
        dep = self.server.dep
        for slot in list(self.retiring):
            if slot not in dep.adapters:
                self.retiring.pop(slot, None)
                continue
            if self.leases.get(slot, 0) > 0:
                self.retiring[slot] = 0
                continue
            self.retiring[slot] += 1
            if self.retiring[slot] < 2:
                continue
            try:
                await asyncio.wrap_future(self.server.worker.call(  # after any row still on it
                    lambda s=slot: dep.detach(s), names=[slot]))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - gone already
                log.debug("detaching %s: %s", slot, exc)
            self.retiring.pop(slot, None)
            self.server.loaded_at.pop(slot, None)
            log.info("detached %s (no request uses it)", slot)


__all__ = ["DEFAULT_INTERVAL", "AliasFollower", "Followed", "is_alias", "slot_name"]

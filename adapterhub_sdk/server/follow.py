"""Binding at receipt: the public name -> deployment name table, the leases, and the alias
poller.

A request is bound when it is received (its body read and parsed): its ``model`` is resolved to the
deployment name serving it then (:meth:`AliasFollower.slot_of`), and the request holds that
name (a lease, :meth:`AliasFollower.acquire`) until its answer is complete. A deployment name
is never given another version while the server serves: a version that takes over a public
name that is served already (an alias that moved, ``load_inplace``, ``POST /v1/adapters``
over a served name, a load after an unload whose requests still run) is attached under a
new internal slot (``acme/sentiment#1``: '#' is in no served name, so no client can pick one),
and the public name points at it from then on, in one assignment on the event loop. What
served it before is hidden at once and detached once the last request holding it is
answered (the detach names it, so the scheduler also runs it only once no row in a step uses
it). So a request runs on the version served when it was received, whatever moves before it
is tokenized, queued or admitted; a request received after a move was reported runs on the
new version; and one for a name unloaded before it was received is a 404.

Aliases: an adapter served from an alias spec (``acme/sentiment@prod``) is followed. A
background task re-reads where the alias points every ``interval`` seconds (one indexed
query, :meth:`Registry.alias_target`). When it has moved, the new version is attached under a
new slot at the next decode step boundary (``Scheduler.call`` naming only the new slot, so it
never waits for the requests running: a switch takes the poll interval plus the attach,
however long the running requests are), with every check an attach makes (fingerprint,
signing policy, non-finite weights, loading); only then does the public name point at the new
slot. A version that cannot be served leaves the old one serving, and its refusal is shown in
``/v1/models`` until the alias moves again. Moving the alias back is a rollback like any other
move.
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
    """The public name -> deployment name table, the leases, and the poller (see the module's doc)."""

    def __init__(self, server: Server, interval: float = DEFAULT_INTERVAL):
        if interval < 0:
            raise ValueError("the follow interval must be >= 0 (0: do not follow)")
        self.server = server
        self.interval = float(interval)
        self.follows: dict[str, Followed] = {}
        self.routes: dict[str, str] = {}  # public name -> the internal slot of the fixed version serving it
        self.leases: Counter[str] = Counter()
        self.leaving: dict[str, Any] = {}  # deployment name served no more -> its version, until none holds it
        self.loading: set[str] = set()  # names load_lora_adapter is loading (not yet answered)
        self.unloads: Counter[str] = Counter()  # unloads per public name (an attach running meanwhile yields)
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
        """Deployment names no client addresses: internal slots and versions on their way out."""
        return {f.slot for f in self.follows.values()} | set(self.routes.values()) | set(self.leaving)

    def public_names(self, attached: list[str]) -> list[str]:
        hidden = self.hidden()
        names = [n for n in attached if n not in hidden and n not in self.follows and n not in self.routes
                 and "#" not in n]  # an internal slot still being attached is in none of those yet
        names += [p for p, f in self.follows.items() if f.slot in attached]
        return names + [p for p, slot in self.routes.items() if slot in attached and p not in self.follows]

    def slot_of(self, public: str) -> str | None:
        """The deployment name a request for ``public`` received now is bound to (None: not served)."""
        f = self.follows.get(public)
        if f is not None:
            return f.slot
        slot = self.routes.get(public)
        if slot is not None:
            return slot
        if "#" in public or public in self.hidden():  # an internal slot (attached, not yet switched to,
            return None  # or retired) or a version on its way out: no client's name
        return public if public in self.server.dep.adapters else None

    def target_for(self, public: str) -> str:
        """The deployment name to attach a version of ``public`` under: the name itself when
        nothing is attached as it, else a new internal slot (a name requests may hold never
        gets another version)."""
        return public if public not in self.server.dep.adapters else self.next_slot(public)

    def serve(self, public: str, name: str) -> None:
        """Serve ``public`` from the deployment name ``name`` (just attached) from now on; what
        served it before serves no new request and is detached once none holds it. Call on the
        event loop: the switch is one step there."""
        before = self.slot_of(public)
        self.follows.pop(public, None)  # a followed name given a fixed version is no longer followed
        if name == public:
            self.routes.pop(public, None)
        else:
            self.routes[public] = name
        if before is not None and before != name:
            self.retire(before)

    def retire(self, name: str) -> Future[Any] | None:
        """Serve the deployment name ``name`` to no new request; detach it once no request holds
        it (now, when none does: the detach's future, else None). Call on the event loop."""
        adapter = self.server.dep.adapters.get(name)
        if adapter is None:
            return None
        self.leaving[name] = adapter
        with contextlib.suppress(RuntimeError):  # (called off the loop: the detach cannot report back)
            self._event_loop = asyncio.get_running_loop()
        if self.leases.get(name, 0) <= 0:
            return self._detach_leaving(name)
        return None

    async def unload(self, public: str) -> Future[Any] | None:
        """Serve ``public`` no more from now on, while the requests bound to it (running, queued
        or still being tokenized) finish on its version, which is detached once the last of them
        is answered (vLLM's unload_lora_adapter does the same: the name goes at once, requests
        keep theirs). Returns the detach's future when it runs at once (no request held it)."""
        self.unloads[public] += 1
        if public in self.follows:
            async with self._guard():  # not while the poller switches it
                f = self.follows.pop(public, None)
                if f is not None:
                    log.info("no longer serving %s (%s, following %s)", public, f.version, f.spec)
                    return self.retire(f.slot)
        return self.retire(self.routes.pop(public, public))

    def _detach_leaving(self, name: str) -> Future[Any] | None:
        """Detach ``name``'s leaving version through the scheduler (after any row on it), unless
        another version was attached as ``name`` meanwhile."""
        victim = self.leaving.get(name)
        if victim is None:
            return None
        dep = self.server.dep

        def detach() -> None:
            if dep.adapters.get(name) is victim:  # not what a later attach put there
                dep.detach(name)
                log.info("detached %s (%s; no request holds it)", name, getattr(victim, "ref", "?"))

        def done(fut: Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("detaching %s after its requests: %s", name, fut.exception())
            loop = self._event_loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone
                    loop.call_soon_threadsafe(self._left, name, victim)

        try:
            fut = self.server.worker.call(detach, names=[name])
        except Exception as exc:  # noqa: BLE001 - stopping: nothing is served any more
            log.debug("detaching %s: %s", name, exc)
            return None
        fut.add_done_callback(done)
        return fut

    def _left(self, name: str, victim: Any) -> None:
        if self.leaving.get(name) is victim:
            del self.leaving[name]
            if "#" in name:
                self.server.loaded_at.pop(name, None)

    def public_of(self, slot: str) -> str:
        for f in self.follows.values():
            if f.slot == slot:
                return f.public
        for public, name in self.routes.items():
            if name == slot:
                return public
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
                    if slot in self.leaving:  # the last request bound to a retired version is done
                        self._detach_leaving(slot)

        return release

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
            before = self.slot_of(public)
            self.adopt(public, spec, attached)
            self.routes.pop(public, None)
            if before is not None:
                self.retire(before)
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
        """One round: re-read every followed alias and switch what moved."""
        async with self._guard():
            for f in list(self.follows.values()):
                await self._check(f)

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


__all__ = ["DEFAULT_INTERVAL", "AliasFollower", "Followed", "is_alias", "slot_name"]

"""What the routes share: the deployment, its scheduler and metrics, the model and adapter
objects, and turning a request's jobs into a JSON answer or a Server-Sent Event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..deploy import Deployment
from .errors import APIError, api_error
from .follow import AliasFollower
from .limits import MAX_BODY_BYTES
from .logprobs import chat_logprobs, completion_logprobs
from .metrics import Metrics, label_adapter
from .worker import DoneEvent, ErrorEvent, Event, Job, Scheduler, StartEvent, TokenEvent


def event_queue() -> tuple[asyncio.Queue[Event], Callable[[Event], None]]:
    """A queue on the running event loop, and the ``emit`` the scheduler's thread calls."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # from the scheduler's thread
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(q.put_nowait, event)

    return q, emit


def usage(rows: Sequence[DoneEvent]) -> dict[str, int]:
    p = sum(r.prompt_tokens for r in rows)
    c = sum(r.completion_tokens for r in rows)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class Server:
    """The state of one app (``app.state.server``)."""

    def __init__(self, deployment: Deployment, base_id: str, worker: Scheduler, metrics: Metrics, *,
                 max_body_bytes: int = MAX_BODY_BYTES, follow_interval: float = 0.0):
        self.dep = deployment
        self.max_body_bytes = max_body_bytes
        self.base_id = base_id
        self.worker = worker
        self.metrics = metrics
        self.created = int(time.time())
        self.loaded_at: dict[str, int] = {name: self.created for name in deployment.adapters}
        #: public names -> internal slots, leases, and the alias poller (see :mod:`.follow`)
        self.follower = AliasFollower(self, follow_interval)

    # -- models

    def served_names(self) -> list[str]:
        """The adapters' public names (what requests send as ``model``)."""
        return self.follower.public_names(list(self.dep.adapters))

    def _permission(self, created: int) -> dict[str, Any]:
        return {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False}

    def model_object(self, name: str) -> dict[str, Any]:
        """A model card with what vLLM's carry (``max_model_len``, ``root``, ``parent``,
        ``permission``), plus the base's fingerprint or the adapter's digest, served version
        and, when it follows an alias, the alias's state."""
        context = getattr(self.dep.model.config, "max_position_embeddings", None)
        context = int(context) if context else None
        if name == self.base_id:
            return {"id": self.base_id, "object": "model", "created": self.created, "owned_by": "adapterhub",
                    "root": self.base_id, "parent": None, "max_model_len": context,
                    "permission": [self._permission(self.created)], "fingerprint": self.dep.fingerprint.digest}
        slot = self.follower.slot_of(name)
        a = self.dep.adapters[slot or name]
        created = self.loaded_at.get(name, self.created)
        followed = self.follower.follows.get(name)
        version = a.ref.rpartition("@")[2] if a.path is None or a.pinned else None
        return {"id": name, "object": "model", "created": created,
                "owned_by": a.ref.split("/", 1)[0] if a.path is None else "adapterhub",
                "root": a.path or a.ref, "parent": self.base_id, "max_model_len": context,
                "permission": [self._permission(created)], "digest": a.digest, "version": version,
                "adapter": {**a.to_dict(), "name": name},
                "alias": followed.to_dict() if followed is not None else None}

    def adapter_object(self, name: str, attached: Any = None) -> dict[str, Any]:
        """``name``'s adapter card: of the version serving it, or of ``attached`` when given."""
        a = attached if attached is not None else self.dep.adapters[self.follower.slot_of(name) or name]
        return {"id": name, "object": "adapter", "parent": self.base_id, **a.to_dict(), "name": name}

    def resolve_model(self, model: str, request: Request) -> str | None:
        """The deployment slot a request's ``model`` runs on (None: the base); 404 when unknown.
        A caller running a request on it holds it with ``self.follower.acquire``."""
        if model == self.base_id:
            label_adapter(request.scope, self.base_id)
            return None
        slot = self.follower.slot_of(model)
        if slot is not None:
            label_adapter(request.scope, model)
            return slot
        label_adapter(request.scope, "unknown")
        served = ", ".join([self.base_id, *self.served_names()])
        raise APIError(404, f"the model '{model}' does not exist; this server serves: {served} "
                            "(load an adapter with POST /v1/adapters)", param="model", code="model_not_found")

    # -- generation

    async def run(self, jobs: list[Job], q: asyncio.Queue[Event], *, stream: bool, kind: str, model: str,
                  include_usage: bool, release: Callable[[], None] = lambda: None,
                  disconnected: Callable[[], Any] | None = None) -> Response:
        """Answer ``jobs``; ``release`` (the lease on their adapter slot) is called once the
        answer is complete, or the stream ends or is dropped. ``disconnected`` (the request's
        ``is_disconnected``): asked while no answer has been sent, so that the rows of a client
        that went away stop (queued ones are skipped, running ones end) instead of running on."""

        asked = [time.monotonic()]

        async def next_event() -> Event:
            """The next event; every _POLL_S, whether events flow or not, the client is asked
            for (a request's rows send events far more often than that)."""
            while True:
                if disconnected is None:
                    return await q.get()
                wait = asked[0] + _POLL_S - time.monotonic()
                if wait > 0:
                    try:
                        return await asyncio.wait_for(q.get(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
                asked[0] = time.monotonic()
                if await disconnected():
                    raise _ClientGone()

        try:
            for job in jobs:
                self.worker.submit(job)
        except BaseException:
            release()
            raise
        if not stream:
            done: dict[int, DoneEvent] = {}
            try:
                while len(done) < len(jobs):
                    try:
                        event = await next_event()
                    except _ClientGone:
                        return Response(status_code=499)  # nobody reads it; the finally stops the rows
                    if isinstance(event, ErrorEvent):
                        raise event.error
                    if isinstance(event, DoneEvent):
                        done[event.index] = event
            finally:
                for job in jobs:
                    job.cancelled = True
                release()
            return JSONResponse(self._response(kind, model, [done[i] for i in range(len(jobs))]))
        # stream: answer errors found before the first token with a status, the rest as events
        early: list[Event] = []
        started: set[int] = set()
        try:
            while len(started) < len(jobs):
                try:
                    event = await next_event()
                except _ClientGone:
                    for job in jobs:
                        job.cancelled = True
                    release()
                    return Response(status_code=499)
                if isinstance(event, ErrorEvent):
                    raise event.error
                if isinstance(event, StartEvent):
                    started.add(event.index)
                else:
                    early.append(event)
        except BaseException:
            for job in jobs:
                job.cancelled = True
            release()
            raise
        return _Stream(self._events(jobs, q, early, kind, model, include_usage), release=release,
                       media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _response(self, kind: str, model: str, rows: list[DoneEvent]) -> dict[str, Any]:
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                        "logprobs": chat_logprobs(r.logprobs),
                        "finish_reason": r.finish_reason} for i, r in enumerate(rows)]
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": choices, "usage": usage(rows)}
        choices = [{"index": i, "text": r.text, "logprobs": completion_logprobs(r.logprobs),
                    "finish_reason": r.finish_reason}
                   for i, r in enumerate(rows)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": choices, "usage": usage(rows)}

    async def _events(self, jobs: list[Job], q: asyncio.Queue[Event], early: list[Event], kind: str, model: str,
                      include_usage: bool) -> AsyncIterator[str]:
        chat = kind == "chat"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        def choice(index: int, text: str | None, finish: str | None, role: bool = False,
                   lps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                return {"index": index, "delta": delta, "logprobs": chat_logprobs(lps), "finish_reason": finish}
            return {"index": index, "text": text or "", "logprobs": completion_logprobs(lps), "finish_reason": finish}

        rows: list[DoneEvent] = []
        try:
            if chat:
                for job in jobs:
                    yield chunk([choice(job.index, "", None, role=True)])
            while len(rows) < len(jobs):
                event = early.pop(0) if early else await q.get()
                if isinstance(event, TokenEvent):
                    yield chunk([choice(event.index, event.text, None, lps=event.logprobs)])
                elif isinstance(event, DoneEvent):
                    rows.append(event)
                    yield chunk([choice(event.index, None if chat else "", event.finish_reason)])
                elif isinstance(event, ErrorEvent):
                    yield f"data: {json.dumps(api_error(event.error).body())}\n\n"
                    break
            if include_usage and len(rows) == len(jobs):
                yield chunk([], usage=usage(rows))
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancelled = True  # a client that went away stops its rows


_POLL_S = 0.25  # how often a request waiting for its rows asks whether its client is still there


class _ClientGone(Exception):
    """The client of a request went away before its answer was sent."""


class _Stream(StreamingResponse):
    """A stream that calls ``release`` when it ends, however it ends (even unstarted)."""

    def __init__(self, content: AsyncIterator[str], *, release: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


__all__ = ["Server", "event_queue", "usage"]

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
from .limits import MAX_BODY_BYTES
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
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.dep = deployment
        self.max_body_bytes = max_body_bytes
        self.base_id = base_id
        self.worker = worker
        self.metrics = metrics
        self.created = int(time.time())
        self.loaded_at: dict[str, int] = {name: self.created for name in deployment.adapters}

    # -- models

    def model_object(self, name: str) -> dict[str, Any]:
        if name == self.base_id:
            return {"id": self.base_id, "object": "model", "created": self.created, "owned_by": "adapterhub",
                    "root": self.base_id, "parent": None,
                    "fingerprint": self.dep.fingerprint.digest}
        a = self.dep.adapters[name]
        return {"id": a.name, "object": "model", "created": self.loaded_at.get(a.name, self.created),
                "owned_by": a.ref.split("/", 1)[0], "root": a.ref, "parent": self.base_id,
                "adapter": a.to_dict()}

    def adapter_object(self, name: str) -> dict[str, Any]:
        a = self.dep.adapters[name]
        return {"id": a.name, "object": "adapter", "parent": self.base_id, **a.to_dict()}

    def resolve_model(self, model: str, request: Request) -> str | None:
        """The adapter a request's ``model`` names (None: the base); 404 when unknown."""
        if model == self.base_id:
            label_adapter(request.scope, self.base_id)
            return None
        if model in self.dep.adapters:
            label_adapter(request.scope, model)
            return model
        label_adapter(request.scope, "unknown")
        served = ", ".join([self.base_id, *self.dep.adapters])
        raise APIError(404, f"the model '{model}' does not exist; this server serves: {served} "
                            "(load an adapter with POST /v1/adapters)", param="model", code="model_not_found")

    # -- generation

    async def run(self, jobs: list[Job], q: asyncio.Queue[Event], *, stream: bool, kind: str, model: str,
                  include_usage: bool) -> Response:
        for job in jobs:
            self.worker.submit(job)
        if not stream:
            done: dict[int, DoneEvent] = {}
            try:
                while len(done) < len(jobs):
                    event = await q.get()
                    if isinstance(event, ErrorEvent):
                        raise event.error
                    if isinstance(event, DoneEvent):
                        done[event.index] = event
            finally:
                for job in jobs:
                    job.cancelled = True
            return JSONResponse(self._response(kind, model, [done[i] for i in range(len(jobs))]))
        # stream: answer errors found before the first token with a status, the rest as events
        early: list[Event] = []
        started: set[int] = set()
        try:
            while len(started) < len(jobs):
                event = await q.get()
                if isinstance(event, ErrorEvent):
                    raise event.error
                if isinstance(event, StartEvent):
                    started.add(event.index)
                else:
                    early.append(event)
        except BaseException:
            for job in jobs:
                job.cancelled = True
            raise
        return StreamingResponse(self._events(jobs, q, early, kind, model, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _response(self, kind: str, model: str, rows: list[DoneEvent]) -> dict[str, Any]:
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                        "finish_reason": r.finish_reason} for i, r in enumerate(rows)]
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": choices, "usage": usage(rows)}
        choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
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

        def choice(index: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

        rows: list[DoneEvent] = []
        try:
            if chat:
                for job in jobs:
                    yield chunk([choice(job.index, "", None, role=True)])
            while len(rows) < len(jobs):
                event = early.pop(0) if early else await q.get()
                if isinstance(event, TokenEvent):
                    yield chunk([choice(event.index, event.text, None)])
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


__all__ = ["Server", "event_queue", "usage"]

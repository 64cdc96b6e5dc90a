"""An OpenAI-compatible HTTP server for a :class:`~adapterhub_sdk.deploy.Deployment`.

``create_app(deployment)`` returns a FastAPI app:

* ``GET /v1/models`` (the base and its adapters), ``POST /v1/completions`` and
  ``POST /v1/chat/completions`` with ``model`` naming an adapter (or the base), streaming
  as Server-Sent Events in OpenAI's chunk format;
* ``GET|POST /v1/adapters`` and ``DELETE /v1/adapters/{name}`` to load and unload adapters
  by registry spec while serving;
* ``GET /health`` and ``GET /metrics`` (Prometheus).

One worker thread owns the deployment. Requests are queued; the worker takes up to
``max_batch`` of them (waiting up to ``batch_wait_ms`` for more), runs one
``Deployment.generate`` over their rows, each row with its own adapter, sampling settings
and random generator, and hands tokens back to each request's event loop as they are
produced. A row that fails (non-finite logits) is answered with its own error; the rows
beside it complete as they would alone. Every error is an OpenAI-style object
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .deploy import Deployment, StructuralMatchWarning
from .errors import (
    AdapterHubError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidNameError,
    InvalidVersionError,
    NotFoundError,
    RegistryError,
)
from .generation import GenerationError, NonFiniteLogitsError, RowError

log = logging.getLogger("adapterhub_sdk.server")

MAX_NEW_TOKENS = 4096  # generation.generate_rows refuses more
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256  # chat: this, or what the context has left, whichever is less
MAX_STOP = 16
_LABELS = "adapterhub.labels"  # scope key: labels the metrics middleware records


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _message(exc: BaseException) -> str:
    msg = " ".join(str(exc.args[0] if exc.args else exc).split())
    hint = getattr(exc, "hint", None)
    return msg + (f"; {hint}" if hint else "")


def api_error(exc: BaseException, *, param: str | None = None) -> APIError:
    """The HTTP error for an exception raised by the SDK (unexpected ones: 500, logged)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NotFoundError):
        return APIError(404, _message(exc), param=param, code="not_found")
    if isinstance(exc, IncompatibleAdapterError):
        reasons = [r for r in exc.reasons if r not in str(exc)]
        text = _message(exc) + ("" if not reasons else " (" + "; ".join(reasons) + ")")
        return APIError(400, text, param=param, code="incompatible_adapter")
    if isinstance(exc, (InvalidNameError, InvalidVersionError)):
        return APIError(400, _message(exc), param=param, code="invalid_spec")
    if isinstance(exc, NonFiniteLogitsError):  # the adapter is broken: retrying will not help (not 5xx)
        return APIError(422, _message(exc), type="model_error", param=param, code=exc.code)
    if isinstance(exc, GenerationError):
        code = "context_length_exceeded" if "context" in str(exc) else "invalid_value"
        return APIError(400, _message(exc), param=param, code=code)
    if isinstance(exc, (IntegrityError, RegistryError)):
        log.error("registry failure: %s", _message(exc))
        return APIError(500, _message(exc), code=type(exc).__name__)
    if isinstance(exc, AdapterHubError) and isinstance(exc, ValueError):
        return APIError(400, _message(exc), param=param, code="invalid_adapter")
    log.error("internal error", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}: {exc})", code="internal_error")


def _validation_error(errors: Sequence[Any]) -> APIError:
    """One 400 error object for pydantic/FastAPI validation errors (instead of FastAPI's 422)."""
    if not errors:
        return APIError(400, "invalid request", code="invalid_request")
    first = errors[0]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, "malformed JSON in the request body" + (f": {detail}" if detail else ""),
                        code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # a union's branch names (str, list[int], ...) are not part of the field's name
    loc = [p for p in loc if not any(c in p for c in "[]|") and p not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    if kind == "missing":
        return APIError(400, f"missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    msg = str(first.get("msg", "invalid value"))
    return APIError(400, f"'{param}': {msg}" if param else msg, param=param,
                    code="invalid_type" if kind.endswith("_type") or "parsing" in kind else "invalid_value")


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str
    max_tokens: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: StrictInt | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(min_length=1)
    name: str | None = None


async def _parse(request: Request, model: type[Any]) -> Any:
    """The JSON body as ``model``; malformed JSON and bad fields are 400 error objects.
    Any content type is read as JSON (``curl -d`` without a header works)."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors(include_url=False)) from None


# --------------------------------------------------------------------------- prompts


def chat_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, bool]:
    """The prompt for chat ``messages`` ({"role", "content"}) and whether the tokenizer should
    add its special tokens: the tokenizer's chat template when it has one (which adds them
    itself), else ``"role: content\\n"`` per message followed by ``"assistant:"``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return str(text), False
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:", True


def _cut(text: str, stop: Sequence[str]) -> str:
    """Text cut at stop sequences, exactly as ``Deployment.generate`` cuts it."""
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters may still become a stop sequence or a whole character."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":  # an unfinished UTF-8 sequence
        hold += 1
    return hold


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adapterhub_requests", "HTTP requests by endpoint, adapter and status",
                                ["endpoint", "adapter", "status"], registry=r)
        self.latency = Histogram("adapterhub_request_latency_seconds",
                                 "Request latency (streams: until the last event)", ["endpoint"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("adapterhub_generated_tokens", "Completion tokens generated", ["adapter"], registry=r)
        self.prompt_tokens = Counter("adapterhub_prompt_tokens", "Prompt tokens processed", ["adapter"], registry=r)
        self.batch_size = Histogram("adapterhub_batch_size", "Rows in one Deployment.generate call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_wait = Histogram("adapterhub_queue_wait_seconds", "Time a request waited for its batch",
                                    registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                         5, 10, 30))
        self.adapters = Gauge("adapterhub_adapters_loaded", "Adapters attached", registry=r)
        self.queue_depth = Gauge("adapterhub_queue_depth", "Requests waiting for the worker", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _MetricsMiddleware:
    """Counts every HTTP request by route, adapter and status, and times it to its last byte."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        labels = {"adapter": ""}
        scope[_LABELS] = labels
        status = 500
        start = time.perf_counter()

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, labels["adapter"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------- the worker


@dataclass(eq=False)
class _Job:
    """One prompt of one request, on its way through the worker."""

    source: tuple[str, Any]  # ("text", str) | ("ids", [int]) | ("chat", [{"role", "content"}])
    adapter: str | None  # None: the base
    label: str  # the model name, for metrics
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    index: int
    emit: Callable[[tuple[Any, ...]], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    ids: list[int] = field(default_factory=list)
    limit: int = 0  # max_tokens after defaults
    produced: list[int] = field(default_factory=list)
    sent: str = ""  # text streamed so far
    finish: str | None = None



@dataclass(eq=False)
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


_STOP = object()


class BatchWorker:
    """The thread that owns the deployment: runs batches of queued requests and control calls
    (attach, detach) in arrival order."""

    def __init__(self, deployment: Deployment, *, max_batch: int = 16, batch_wait_ms: float = 5.0,
                 metrics: Metrics | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.dep = deployment
        self.max_batch = max_batch
        self.batch_wait = max(0.0, batch_wait_ms) / 1000
        self.metrics = metrics or Metrics()
        self.q: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False

    # -- control

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="adapterhub-batch-worker", daemon=True)
                self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        if self._thread is not None:
            self.q.put(_STOP)
            self._thread.join(timeout)

    def submit(self, job: _Job) -> None:
        if self._stopping:
            raise APIError(503, "the server is shutting down", code="unavailable")
        self.start()
        self.q.put(job)
        self.metrics.queue_depth.set(self.q.qsize())

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the worker thread, between batches."""
        if self._stopping:
            raise APIError(503, "the server is shutting down", code="unavailable")
        self.start()
        fut: Future[Any] = Future()
        self.q.put(_Call(fn, fut))
        return fut

    # -- the loop

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is _STOP:
                break
            try:
                if isinstance(item, _Call):
                    self._run_call(item)
                    continue
                batch, after = self._collect(item)
                self.metrics.queue_depth.set(self.q.qsize())
                self._run_batch(batch)
                for other in after:
                    if other is _STOP:
                        self._drain()
                        return
                    self._run_call(other)
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batch worker error")
        self._drain()

    def _collect(self, first: _Job) -> tuple[list[_Job], list[Any]]:
        """``first`` and the jobs queued behind it, up to max_batch, waiting up to batch_wait;
        a control call or stop ends the batch (it runs after, in order)."""
        batch = [first]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self.q.get(timeout=left) if left > 0 else self.q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                batch.append(item)
            else:
                return batch, [item]
        return batch, []

    def _drain(self) -> None:
        while True:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return
            err = APIError(503, "the server is shutting down", code="unavailable")
            if isinstance(item, _Job):
                item.emit(("error", item.index, err))
            elif isinstance(item, _Call):
                item.future.set_exception(err)

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            call.future.set_exception(exc)

    # -- batches

    def _decode(self, ids: list[int]) -> str:
        tok = self.dep.tokenizer
        return "" if tok is None else str(tok.decode(ids, skip_special_tokens=True))

    def _prepare(self, job: _Job) -> None:
        """Tokenize and check one job, so that a bad row fails alone, not its whole batch."""
        dep = self.dep
        if job.adapter is not None and job.adapter not in dep.adapters:
            raise APIError(404, f"the model '{job.adapter}' does not exist (it was unloaded)", param="model",
                           code="model_not_found")
        kind, value = job.source
        tok = dep.tokenizer
        if kind == "ids":
            ids = [int(t) for t in value]
        else:
            if tok is None:
                raise APIError(400, "this base has no tokenizer: send the prompt as a list of token ids",
                               param="prompt" if kind == "text" else "messages", code="no_tokenizer")
            if kind == "chat":
                try:
                    text, special = chat_prompt(tok, value)
                except Exception as exc:  # noqa: BLE001 - a template refusing the conversation
                    raise APIError(400, f"the chat template refused these messages: {exc}", param="messages",
                                   code="invalid_messages") from None
            else:
                text, special = value, True
            ids = list(tok(text, add_special_tokens=special)["input_ids"])
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        vocab = int(dep.model.get_input_embeddings().num_embeddings)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt", code="invalid_value")
        context = getattr(dep.model.config, "max_position_embeddings", None)
        limit = job.max_tokens
        if limit is None:
            limit = DEFAULT_COMPLETION_TOKENS if kind != "chat" else DEFAULT_CHAT_TOKENS
            if context:
                limit = max(1, min(limit, int(context) - len(ids)))
        if context and len(ids) + limit > context:
            raise APIError(400, f"this model's context is {context} tokens; the prompt has {len(ids)} and "
                                f"max_tokens is {limit}: shorten the prompt or lower max_tokens",
                           param="prompt" if len(ids) >= context or job.max_tokens is None else "max_tokens",
                           code="context_length_exceeded")
        job.ids = ids
        job.limit = limit

    def _run_batch(self, jobs: list[_Job]) -> None:
        ready: list[_Job] = []
        for job in jobs:
            if job.cancelled:
                continue
            try:
                self._prepare(job)
            except Exception as exc:  # noqa: BLE001 - answered to its request
                job.emit(("error", job.index, api_error(exc, param="prompt")))
                continue
            ready.append(job)
        if ready:  # one batch: every row samples with its own settings and generator
            self._generate(ready)

    def _on_token(self, group: list[_Job]) -> Callable[[int, int], bool]:
        def on_token(row: int, token: int) -> bool:
            job = group[row]
            if job.cancelled:
                return False
            job.produced.append(token)
            text = self._decode(job.produced) if job.stream or job.stop else ""
            if job.stop and any(s in text for s in job.stop):
                job.finish = "stop"
            elif len(job.produced) >= job.limit:
                job.finish = "length"
            if job.stream:
                self._stream(job, text)
            return job.finish is None

        return on_token

    def _stream(self, job: _Job, text: str) -> None:
        safe = _cut(text, job.stop)
        if job.finish is None:
            safe = safe[: len(safe) - _held_back(safe, job.stop)]
        if len(safe) > len(job.sent) and safe.startswith(job.sent):
            job.emit(("delta", job.index, safe[len(job.sent):]))
            job.sent = safe

    def _generate(self, group: list[_Job]) -> None:
        now = time.monotonic()
        for job in group:
            self.metrics.queue_wait.observe(now - job.enqueued)
            job.emit(("start", job.index))
        self.metrics.batch_size.observe(len(group))
        try:
            results = self.dep.generate(
                [job.ids for job in group], [job.adapter for job in group],
                max_new_tokens=max(job.limit for job in group),
                temperature=[job.temperature for job in group], top_p=[job.top_p for job in group], stop=(),
                on_token=self._on_token(group), seed=[job.seed for job in group])
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, RowError) and exc.results is not None:  # every row failed, each on its own
                results = exc.results
            else:  # the batch itself failed: answered to every request
                err = api_error(exc)
                for job in group:
                    job.emit(("error", job.index, err))
                return
        for job, res in zip(group, results):
            if job.cancelled:
                continue
            if res["finish_reason"] == "error":  # this row's failure, answered to its request only
                job.emit(("error", job.index, _row_error(res)))
                continue
            ids = list(res["token_ids"])
            text = _cut(self._decode(ids), job.stop)
            finish = job.finish or res["finish_reason"]
            if job.stream:
                if len(text) > len(job.sent) and text.startswith(job.sent):
                    job.emit(("delta", job.index, text[len(job.sent):]))
                job.sent = text
            self.metrics.tokens.labels(job.label).inc(len(ids))
            self.metrics.prompt_tokens.labels(job.label).inc(len(job.ids))
            job.emit(("done", job.index, {"text": text, "finish_reason": finish, "prompt_tokens": len(job.ids),
                                          "completion_tokens": len(ids)}))


def _row_error(res: dict[str, Any]) -> APIError:
    """The error answered to a request whose row failed (see Deployment.generate)."""
    message = str(res.get("error") or "generation failed")
    if res.get("error_code") == NonFiniteLogitsError.code:
        return APIError(422, message, type="model_error", code=NonFiniteLogitsError.code)
    log.error("a row failed while generating: %s", message)
    return APIError(500, message, code=str(res.get("error_code") or "generation_failed"))


# --------------------------------------------------------------------------- the app


class _Server:
    """What the endpoints share: the deployment, its worker and metrics."""

    def __init__(self, deployment: Deployment, base_id: str, worker: BatchWorker, metrics: Metrics):
        self.dep = deployment
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
            request.scope[_LABELS]["adapter"] = self.base_id
            return None
        if model in self.dep.adapters:
            request.scope[_LABELS]["adapter"] = model
            return model
        request.scope[_LABELS]["adapter"] = "unknown"
        served = ", ".join([self.base_id, *self.dep.adapters])
        raise APIError(404, f"the model '{model}' does not exist; this server serves: {served} "
                            "(load an adapter with POST /v1/adapters)", param="model", code="model_not_found")

    # -- generation

    async def run(self, jobs: list[_Job], q: asyncio.Queue[Any], *, stream: bool, kind: str, model: str,
                  include_usage: bool) -> Response:
        for job in jobs:
            self.worker.submit(job)
        if not stream:
            done: dict[int, dict[str, Any]] = {}
            try:
                while len(done) < len(jobs):
                    event = await q.get()
                    if event[0] == "error":
                        raise event[2]
                    if event[0] == "done":
                        done[event[1]] = event[2]
            finally:
                for job in jobs:
                    job.cancelled = True
            return JSONResponse(self._response(kind, model, [done[i] for i in range(len(jobs))]))
        # stream: answer errors found before the first token with a status, the rest as events
        early: list[Any] = []
        started: set[int] = set()
        try:
            while len(started) < len(jobs):
                event = await q.get()
                if event[0] == "error":
                    raise event[2]
                if event[0] == "start":
                    started.add(event[1])
                else:
                    early.append(event)
        except BaseException:
            for job in jobs:
                job.cancelled = True
            raise
        return StreamingResponse(self._events(jobs, q, early, kind, model, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _response(self, kind: str, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        usage = _usage(rows)
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": r["text"]}, "logprobs": None,
                        "finish_reason": r["finish_reason"]} for i, r in enumerate(rows)]
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": choices, "usage": usage}
        choices = [{"index": i, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"]}
                   for i, r in enumerate(rows)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": choices, "usage": usage}

    async def _events(self, jobs: list[_Job], q: asyncio.Queue[Any], early: list[Any], kind: str, model: str,
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

        rows: list[dict[str, Any]] = []
        try:
            if chat:
                for job in jobs:
                    yield chunk([choice(job.index, "", None, role=True)])
            finished = 0
            while finished < len(jobs):
                event = early.pop(0) if early else await q.get()
                if event[0] == "delta":
                    yield chunk([choice(event[1], event[2], None)])
                elif event[0] == "done":
                    finished += 1
                    rows.append(event[2])
                    yield chunk([choice(event[1], None if chat else "", event[2]["finish_reason"])])
                elif event[0] == "error":
                    yield f"data: {json.dumps(api_error(event[2]).body())}\n\n"
                    break
            if include_usage and finished == len(jobs):
                yield chunk([], usage=_usage(rows))
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancelled = True  # a client that went away stops its rows


def _usage(rows: list[dict[str, Any]]) -> dict[str, int]:
    p = sum(r["prompt_tokens"] for r in rows)
    c = sum(r["completion_tokens"] for r in rows)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sampling(body: _Sampling, max_tokens: int | None) -> dict[str, Any]:
    """Checked sampling settings of a request (400 for what this server does not do)."""
    if body.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise APIError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    if not math.isfinite(temperature) or not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be between 0 and 2, not {body.temperature}", param="temperature",
                       code="invalid_value")
    top_p = 1.0 if body.top_p is None else float(body.top_p)
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], not {body.top_p}", param="top_p", code="invalid_value")
    if max_tokens is not None and not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise APIError(400, f"max_tokens must be between 1 and {MAX_NEW_TOKENS}, not {max_tokens}",
                       param="max_tokens", code="invalid_value")
    if body.seed is not None and not 0 <= body.seed < 2**63:
        raise APIError(400, "seed must be between 0 and 2**63 - 1", param="seed", code="invalid_value")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop takes up to {MAX_STOP} non-empty strings", param="stop", code="invalid_value")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true", param="stream_options", code="invalid_value")
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": body.seed,
            "stop": stop, "stream": bool(body.stream)}


def _completion_prompts(prompt: Any) -> list[tuple[str, Any]]:
    if isinstance(prompt, str):
        return [("text", prompt)]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt", code="invalid_value")
    if all(isinstance(p, int) for p in prompt):
        return [("ids", list(prompt))]
    return [("ids", list(p)) if isinstance(p, list) else ("text", p) for p in prompt]


def _chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"content parts of type {part.type!r} are not supported (text only)",
                                   param=f"messages.{i}.content", code="unsupported_parameter")
            content = "\n".join(p.text or "" for p in m.content)
        else:
            content = m.content or ""
        out.append({"role": m.role, "content": content})
    return out


def create_app(deployment: Deployment, *, base_id: str | None = None, max_batch: int = 16,
               batch_wait_ms: float = 5.0) -> FastAPI:
    """The HTTP app serving ``deployment``. ``base_id``: the base's model id (default: the
    base directory's name, else ``"base"``). ``max_batch``/``batch_wait_ms``: the most
    requests run in one batch, and how long the worker waits for more before running one."""
    metrics = Metrics()
    worker = BatchWorker(deployment, max_batch=max_batch, batch_wait_ms=batch_wait_ms, metrics=metrics)
    if base_id is None:
        path = deployment.base_path
        base_id = (Path(path).resolve().name if path is not None else "") or "base"
    if base_id in deployment.adapters:
        raise AdapterHubError(f"an adapter is attached under the base model's id {base_id!r}",
                              hint="attach it under another name (NAME=SPEC)")
    server = _Server(deployment, base_id, worker, metrics)
    metrics.adapters.set_function(lambda: len(deployment.adapters))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="adapterhub", version="1", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()

    def new_queue() -> tuple[asyncio.Queue[Any], Callable[[tuple[Any, ...]], None]]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()

        def emit(event: tuple[Any, ...]) -> None:  # from the worker thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(q.put_nowait, event)

        return q, emit

    async def generate(request: Request, body: _Sampling, kind: str, sources: list[tuple[str, Any]],
                       max_tokens: int | None) -> Response:
        adapter = server.resolve_model(body.model, request)
        params = _sampling(body, max_tokens)
        q, emit = new_queue()
        jobs = [_Job(source=src, adapter=adapter, label=body.model, max_tokens=params["max_tokens"],
                     temperature=params["temperature"], top_p=params["top_p"], seed=params["seed"],
                     stop=params["stop"], stream=params["stream"], index=i, emit=emit)
                for i, src in enumerate(sources)]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await server.run(jobs, q, stream=params["stream"], kind=kind, model=body.model,
                                include_usage=include_usage)

    # ---------------------------------------------------------------- OpenAI API

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_object(n) for n in [base_id, *deployment.adapters]]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        server.resolve_model(model, request)
        return server.model_object(model)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        for name in ("suffix",):
            if getattr(body, name) is not None:
                raise APIError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
        if body.best_of not in (None, 1):
            raise APIError(400, "only best_of=1 is supported", param="best_of", code="unsupported_parameter")
        sources = _completion_prompts(body.prompt)
        return await generate(request, body, "completion", sources, body.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, ChatRequest)
        if body.logprobs or body.top_logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools", code="unsupported_parameter")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise APIError(400, "only the text response_format is supported", param="response_format",
                           code="unsupported_parameter")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        sources = [("chat", _chat_messages(body.messages))]
        return await generate(request, body, "chat", sources, max_tokens)

    # ---------------------------------------------------------------- adapters

    @app.get("/v1/adapters")
    async def list_adapters() -> dict[str, Any]:
        return {"object": "list", "data": [server.adapter_object(n) for n in deployment.adapters],
                "merged": deployment.merged}

    @app.post("/v1/adapters")
    async def load_adapter(request: Request) -> JSONResponse:
        body = await _parse(request, AdapterLoad)
        name = body.name
        if name is not None and (not name.strip() or name != name.strip() or name in (base_id, "base")):
            raise APIError(400, f"'{name}' cannot name an adapter (empty, padded, or the base's id)", param="name",
                           code="invalid_value")
        request.scope[_LABELS]["adapter"] = name or ""

        def attach() -> tuple[Any, bool, list[str]]:
            before = set(deployment.adapters)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StructuralMatchWarning)
                attached = deployment.attach(body.spec, name=name)
            notes = [str(w.message) for w in caught if issubclass(w.category, StructuralMatchWarning)]
            return attached, attached.name in before, notes

        try:
            attached, replaced, notes = await asyncio.wrap_future(worker.call(attach))
        except Exception as exc:  # noqa: BLE001 - every failure is an error object
            raise api_error(exc, param="spec") from None
        if attached.name == base_id:  # named after the base by its registry name: refuse to shadow it
            await asyncio.wrap_future(worker.call(lambda: deployment.detach(attached.name)))
            raise APIError(400, f"'{attached.name}' is the base's id; pass another name", param="name",
                           code="invalid_value")
        server.loaded_at[attached.name] = int(time.time())
        request.scope[_LABELS]["adapter"] = attached.name
        return JSONResponse({**server.adapter_object(attached.name), "replaced": replaced, "warnings": notes},
                            status_code=200 if replaced else 201)

    @app.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str, request: Request) -> dict[str, Any]:
        if name == base_id:
            raise APIError(400, "the base cannot be unloaded", param="name", code="invalid_value")
        if name not in deployment.adapters:
            raise APIError(404, f"no adapter '{name}' is loaded", param="name", code="model_not_found")
        request.scope[_LABELS]["adapter"] = name
        try:
            await asyncio.wrap_future(worker.call(lambda: deployment.detach(name)))
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, param="name") from None
        server.loaded_at.pop(name, None)
        return {"id": name, "object": "adapter", "deleted": True}

    # ---------------------------------------------------------------- operations

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = worker.alive or worker._thread is None
        body = {"status": "ok" if ok else "unavailable", "base": base_id, "adapters": len(deployment.adapters),
                "queue": worker.q.qsize(), "device": str(deployment.device)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["APIError", "BatchWorker", "Metrics", "chat_prompt", "create_app"]

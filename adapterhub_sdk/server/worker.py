"""The scheduler the routes submit to, and the batch worker behind it.

Routes build one :class:`Job` per prompt and :meth:`Scheduler.submit` it; the scheduler
answers through the job's ``emit`` callback with typed events (:class:`StartEvent`,
:class:`TokenEvent`, :class:`DoneEvent`, :class:`ErrorEvent`), from its own thread. Control
calls (attach, detach) go through :meth:`Scheduler.call`: between batches here, at a decode
step boundary on the continuous scheduler (see there for the names a call declares).

:class:`BatchWorker` is today's scheduler: one thread that owns the deployment, takes up
to ``max_batch`` queued jobs (waiting up to ``batch_wait_ms`` for more) and runs one
``Deployment.generate`` over their rows, each row with its own adapter and sampling.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from ..deploy import Deployment
from ..generation import NonFiniteLogitsError, RowError
from ..generation_inputs import check_context, check_prompt_ids, no_tokenizer
from .errors import APIError, api_error, unavailable
from .limits import check_prompt_chars
from .metrics import Metrics
from .text import chat_prompt, cut, held_back

log = logging.getLogger("adapterhub_sdk.server")

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256  # chat: this, or what the context has left, whichever is less

T = TypeVar("T")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class StartEvent:
    """The job's row entered a batch: errors from here on arrive on a started stream."""

    index: int


@dataclass(frozen=True)
class TokenEvent:
    """New text of a streaming job (never past a stop sequence)."""

    index: int
    text: str
    logprobs: list[dict[str, Any]] | None = None  # the tokens this text completes, when the job asked


@dataclass(frozen=True)
class DoneEvent:
    """The job finished: its whole text, why it ended, and its token counts."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None  # per token, when the job asked (see Job.logprobs)


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed: its request is answered with ``error`` (the jobs beside it run on)."""

    index: int
    error: APIError


Event = StartEvent | TokenEvent | DoneEvent | ErrorEvent


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Prompt:
    """What one job generates from: text, token ids, or chat messages ({"role", "content"})."""

    kind: Literal["text", "ids", "chat"]
    value: Any


@dataclass(eq=False)
class Job:
    """One prompt of one request, on its way through the scheduler."""

    prompt: Prompt
    adapter: str | None  # None: the base
    label: str  # the model name, for metrics
    max_tokens: int | None  # None: the endpoint's default
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    index: int
    emit: Callable[[Event], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the request side: its client went away or it is answered
    tokens: list[int] | None = None  # the prompt's ids when the request side tokenized it (see prompt_ids)
    ids: list[int] = field(default_factory=list)
    limit: int = 0  # max_tokens after defaults
    produced: list[int] = field(default_factory=list)
    sent: str = ""  # text streamed so far
    finish: str | None = None
    logprobs: int | None = None  # report each token's log-probability and this many top alternatives


@runtime_checkable
class Scheduler(Protocol):
    """What the routes need from whatever runs their jobs."""

    def start(self) -> None:
        """Start running (idempotent; ``submit`` and ``call`` start it too)."""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; what is still queued is answered 503."""

    def submit(self, job: Job) -> None:
        """Queue ``job``; it is answered through ``job.emit``. Raises :class:`APIError` (503) when stopping."""

    def call(self, fn: Callable[[], T], names: Collection[str] | None = None) -> Future[T]:
        """Run ``fn`` where the deployment may be changed (between batches or decode steps).
        ``names``: the deployment names ``fn`` attaches, replaces or detaches; a call never runs
        while a request in flight uses one of them, so requests finish on the version they
        started with. None (unknown): it runs once no request runs at all."""

    @property
    def healthy(self) -> bool:
        """Not started yet, or running."""

    def pending(self) -> int:
        """Jobs and calls waiting to run."""


# --------------------------------------------------------------------------- the worker


@dataclass(eq=False)
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]
    names: frozenset[str] | None = None  # what it changes (None: it may change anything)


_STOP = object()


class BatchWorker:
    """The thread that owns the deployment: runs batches of queued requests and control calls
    (attach, detach) in arrival order. Implements :class:`Scheduler`."""

    logprobs = False  # whether it reports per-token log-probabilities

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

    @property
    def healthy(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def pending(self) -> int:
        return self.q.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        if self._thread is not None:
            self.q.put(_STOP)
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if self._stopping:
            raise unavailable()
        self.start()
        self.q.put(job)
        self.metrics.queue_depth.set(self.q.qsize())

    def call(self, fn: Callable[[], T], names: Collection[str] | None = None) -> Future[T]:
        """Run ``fn`` on the worker thread, between batches (``names``: see :meth:`Scheduler.call`)."""
        if self._stopping:
            raise unavailable()
        self.start()
        fut: Future[T] = Future()
        self.q.put(_Call(fn, fut, None if names is None else frozenset(names)))
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

    def _collect(self, first: Job) -> tuple[list[Job], list[Any]]:
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
            if isinstance(item, Job):
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
            if isinstance(item, Job):
                item.emit(ErrorEvent(item.index, unavailable()))
            elif isinstance(item, _Call):
                item.future.set_exception(unavailable())

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

    def _prepare(self, job: Job) -> None:
        """Tokenize and check one job, so that a bad row fails alone, not its whole batch.
        The checks are ``Deployment.generate``'s own (:mod:`adapterhub_sdk.generation_inputs`)."""
        dep = self.dep
        if job.logprobs is not None and not self.logprobs:
            raise APIError(400, "logprobs are computed by the continuous scheduler; this server runs "
                                "--scheduler static", param="logprobs", code="unsupported_parameter")
        if job.adapter is not None and job.adapter not in dep.adapters:
            raise APIError(404, f"the model '{job.adapter}' does not exist (it was unloaded)", param="model",
                           code="model_not_found")
        kind = job.prompt.kind
        context = context_of(dep)
        ids = job.tokens if job.tokens is not None else prompt_ids(dep.tokenizer, job.prompt, context)
        ids = check_prompt_ids(ids, int(dep.model.get_input_embeddings().num_embeddings))
        limit = job.max_tokens
        if limit is None:
            limit = DEFAULT_COMPLETION_TOKENS if kind != "chat" else DEFAULT_CHAT_TOKENS
            if context:
                limit = max(1, min(limit, int(context) - len(ids)))
        check_context(len(ids), limit, context, defaulted=job.max_tokens is None)
        job.ids = ids
        job.limit = limit

    def _prepared(self, job: Job) -> bool:
        """:meth:`_prepare` ``job``; a failure is answered to its request alone (False)."""
        try:
            self._prepare(job)
        except Exception as exc:  # noqa: BLE001 - answered to its request
            job.emit(ErrorEvent(job.index, api_error(exc, param="prompt")))
            return False
        return True

    def _run_batch(self, jobs: list[Job]) -> None:
        ready = [job for job in jobs if not job.cancelled and self._prepared(job)]
        if ready:  # one batch: every row samples with its own settings and generator
            self._generate(ready)

    def _on_token(self, group: list[Job]) -> Callable[[int, int], bool]:
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

    def _stream(self, job: Job, text: str) -> None:
        safe = cut(text, job.stop)
        if job.finish is None:
            safe = safe[: len(safe) - held_back(safe, job.stop)]
        if len(safe) > len(job.sent) and safe.startswith(job.sent):
            job.emit(TokenEvent(job.index, safe[len(job.sent):]))
            job.sent = safe

    def _generate(self, group: list[Job]) -> None:
        now = time.monotonic()
        for job in group:
            self.metrics.queue_wait.observe(now - job.enqueued)
            job.emit(StartEvent(job.index))
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
                    job.emit(ErrorEvent(job.index, err))
                return
        for job, res in zip(group, results):
            if job.cancelled:
                continue
            if res["finish_reason"] == "error":  # this row's failure, answered to its request only
                job.emit(ErrorEvent(job.index, _row_error(res)))
                continue
            ids = list(res["token_ids"])
            text = cut(self._decode(ids), job.stop)
            finish = job.finish or res["finish_reason"]
            if job.stream:
                if len(text) > len(job.sent) and text.startswith(job.sent):
                    job.emit(TokenEvent(job.index, text[len(job.sent):]))
                job.sent = text
            self.metrics.tokens.labels(job.label).inc(len(ids))
            self.metrics.prompt_tokens.labels(job.label).inc(len(job.ids))
            job.emit(DoneEvent(job.index, text, finish, prompt_tokens=len(job.ids), completion_tokens=len(ids)))


def context_of(dep: Deployment) -> int | None:
    """The base's context in tokens (None: the config does not say)."""
    context = getattr(dep.model.config, "max_position_embeddings", None)
    return int(context) if context else None


def prompt_ids(tokenizer: Any, prompt: Prompt, context: int | None) -> list[int]:
    """A prompt's token ids. Text longer than ``context`` tokens could ever be is refused
    before the tokenizer sees it. Thread-safe: routes call it in the request's thread pool,
    away from the worker."""
    kind, value = prompt.kind, prompt.value
    if kind == "ids":
        return list(value)
    param = "prompt" if kind == "text" else "messages"
    check_prompt_chars(len(value) if kind == "text" else sum(len(m["content"]) for m in value), context, param)
    if tokenizer is None:
        raise no_tokenizer(param)
    if kind == "chat":
        try:
            text, special = chat_prompt(tokenizer, value)
        except Exception as exc:  # noqa: BLE001 - a template refusing the conversation
            raise APIError(400, f"the chat template refused these messages: {exc}", param="messages",
                           code="invalid_messages") from None
    else:
        text, special = value, True
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _row_error(res: dict[str, Any]) -> APIError:
    """The error answered to a request whose row failed (see Deployment.generate)."""
    message = str(res.get("error") or "generation failed")
    if res.get("error_code") == NonFiniteLogitsError.code:
        return APIError(422, message, type="model_error", code=NonFiniteLogitsError.code)
    log.error("a row failed while generating: %s", message)
    return APIError(500, message, code=str(res.get("error_code") or "generation_failed"))


__all__ = ["BatchWorker", "DoneEvent", "ErrorEvent", "Event", "Job", "Prompt", "Scheduler", "StartEvent",
           "TokenEvent", "context_of", "prompt_ids"]

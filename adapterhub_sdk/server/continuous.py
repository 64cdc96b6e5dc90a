"""Iteration-level scheduling: requests join the running batch at the next decode step and
leave it the step they finish.

:class:`ContinuousWorker` implements :class:`~.worker.Scheduler` with the same events as
:class:`~.worker.BatchWorker`. One thread owns the deployment and loops:

1. take what was queued (without waiting while rows run);
2. admit queued jobs in arrival order while fewer than ``max_batch`` rows are running or
   prefilling, and run control calls here, at the step boundary, while rows keep running. A
   call declares the deployment names it attaches, replaces or detaches
   (``Scheduler.call(fn, names)``): it runs at once unless a row in flight, or a job queued
   before it, uses one of them; then it waits for those rows (so they finish on the version
   they started with) and the jobs queued after it for those names wait behind it. The
   HTTP side never replaces a name in place (a served name's new version gets a new internal
   slot, :mod:`.follow`), so its attaches never wait, and its detaches come once the last
   request bound to the version is answered. A call that declares nothing waits until no
   row runs, and everything queued behind it waits for it;
3. prefill newcomers alone, at most ``max_prefill_tokens`` prompt tokens per step (long
   prompts in chunks), so running decodes are never held up by more than that; a newcomer
   whose prompt is in its cache samples its first token and joins the shared cache
   (:class:`~adapterhub_sdk.kv_batch.KVBatch`);
4. one decode forward over every running row, row i with its own adapter
   (``Deployment.use``); each row picks its token with its own temperature, top_p and
   ``torch.Generator`` (:func:`~adapterhub_sdk.generation.next_token`, the step
   ``Deployment.generate`` uses too); rows that hit end-of-sequence, a stop sequence,
   ``max_tokens``, their client going away, or a failure of their own (non-finite logits:
   422 to that request alone) leave the batch at once.

Streams are detokenized incrementally (:class:`IncrementalText`); the final text is the
whole completion decoded once, cut at the first stop sequence, as the batch worker gives.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..deploy import Deployment
from ..generation import (
    RowError,
    _generators,
    _nonfinite,
    next_token,
    special_ids,
    token_logprobs,
)
from ..kv_batch import KVBatch, Prefill, UnsupportedCacheError, check_cache
from .errors import APIError, api_error, unavailable
from .metrics import Metrics
from .text import cut, held_back
from .worker import (
    _STOP,
    BatchWorker,
    DoneEvent,
    ErrorEvent,
    Job,
    StartEvent,
    TokenEvent,
    _Call,
    _row_error,
)

log = logging.getLogger("adapterhub_sdk.server")

DEFAULT_PREFILL_TOKENS = 512


class IncrementalText:
    """A completion's text, decoded token by token without re-decoding what came before: the
    new text is the decode of a short window (``prefix`` .. end) minus the decode of its first
    part (``prefix`` .. ``read``), so a token that merges with the one before it (a space, a
    multi-byte character) comes out right; an unfinished UTF-8 sequence waits for its end."""

    def __init__(self, decode: Any):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.text = ""

    def add(self, token: int) -> str:
        """Append ``token``; returns the text it completes ('' while a character is unfinished)."""
        self.ids.append(token)
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        delta = now[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += delta
        return delta

    def peek(self, token: int) -> str:
        """The text ``token`` would add here (as :meth:`add` would return it, without adding it;
        for a token that leaves a character unfinished: its own decode)."""
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode([*self.ids[self.prefix:], token])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return str(self.decode([token]))
        return str(now[len(before):])


@dataclass(eq=False)
class _Row:
    job: Job
    generator: Any
    text: IncrementalText
    prefill: Prefill
    next: int = 0  # the token its next decode step feeds
    lps: list[dict[str, Any]] = field(default_factory=list)
    sent_lps: int = 0  # entries of lps already streamed


class ContinuousWorker(BatchWorker):
    """The deployment's thread, scheduling per decode step. Implements :class:`~.worker.Scheduler`.

    ``max_batch``: most rows running (or prefilling) at once. ``max_prefill_tokens``: most
    prompt tokens prefilled between two decode steps."""

    logprobs = True

    def __init__(self, deployment: Deployment, *, max_batch: int = 16,
                 max_prefill_tokens: int = DEFAULT_PREFILL_TOKENS, metrics: Metrics | None = None):
        super().__init__(deployment, max_batch=max_batch, batch_wait_ms=0, metrics=metrics)
        if max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be at least 1")
        self.max_prefill_tokens = max_prefill_tokens
        self.backlog: deque[Any] = deque()  # jobs and calls taken off the queue, in arrival order
        self.prefilling: list[_Row] = []
        self.running: list[_Row] = []  # row i is batch row i of self.batch
        self.batch = KVBatch(deployment.model, deployment.device)
        self._ending = False
        self._pad, self._eos = special_ids(deployment)

    def pending(self) -> int:
        return self.q.qsize() + len(self.backlog)

    # -- the loop

    def _run(self) -> None:
        while True:
            try:
                self._take()
                if self._ending and not (self.running or self.prefilling):
                    break
                self._admit()
                self._prefill()
                if self.running:
                    self._decode_step()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one step
                log.exception("continuous worker error")
                self._fail_all(exc)
        for item in self.backlog:
            self.q.put(item)
        self.backlog.clear()
        self._drain()

    def _fail_all(self, exc: Exception) -> None:
        """Answer every running and prefilling request with ``exc`` and start from an empty batch."""
        err = api_error(exc)
        for row in [*self.running, *self.prefilling]:
            row.job.emit(ErrorEvent(row.job.index, err))
        self.running, self.prefilling = [], []
        self.batch.keep([])

    def _busy(self) -> bool:
        return bool(self.running or self.prefilling)

    def _take(self) -> None:
        """Move what was queued to the backlog; wait for something only when nothing runs."""
        wait = not self._busy() and not self.backlog and not self._ending
        if not wait and self.q.empty():  # the common case while rows decode: nothing new
            return
        while True:
            try:
                item = self.q.get() if wait else self.q.get_nowait()
            except queue.Empty:
                break
            wait = False
            if item is _STOP:
                self._ending = True
                for left in self.backlog:  # not started: answered as the batch worker answers them
                    if isinstance(left, Job):
                        left.emit(ErrorEvent(left.index, unavailable()))
                    elif isinstance(left, _Call):
                        left.future.set_exception(unavailable())
                self.backlog.clear()
                continue
            if self._ending:
                self.q.put(item)  # answered 503 by _drain
                break
            self.backlog.append(item)
        self.metrics.queue_depth.set(self.pending())

    def _admit(self) -> None:
        """Run control calls and admit jobs, in arrival order, at this step boundary (see the
        module's doc for what waits for what)."""
        if not self.backlog or self._ending:
            return
        before = len(self.backlog)
        in_use = {row.job.adapter for row in (*self.running, *self.prefilling)}
        held: set[str | None] = set()  # names items still waiting ahead use or change
        kept: deque[Any] = deque()
        try:
            while self.backlog:
                item = self.backlog.popleft()
                if isinstance(item, _Call):
                    if item.names is None:  # it may change anything: once nothing runs or waits ahead
                        if kept or self._busy():
                            kept.append(item)
                            break
                        self._run_call(item)
                    elif item.names & (in_use | held):  # after the rows and jobs that use its names
                        kept.append(item)
                        held |= item.names
                    else:
                        self._run_call(item)
                    continue
                if item.cancelled:
                    continue
                if item.adapter in held or len(self.running) + len(self.prefilling) >= self.max_batch:
                    kept.append(item)
                    held.add(item.adapter)
                    continue
                if not self._prepared(item):
                    continue
                generator = _generators([item.seed], [item.temperature], self.dep.device)[0]
                self.prefilling.append(_Row(item, generator, IncrementalText(self._decode), Prefill(item.ids)))
                in_use.add(item.adapter)
                self.metrics.queue_wait.observe(time.monotonic() - item.enqueued)
                item.emit(StartEvent(item.index))
        finally:  # whatever happened, nothing taken off the queue is lost
            kept.extend(self.backlog)
            self.backlog = kept
        if len(kept) != before:
            self.metrics.queue_depth.set(self.pending())

    def _prefill(self) -> None:
        import torch

        budget = self.max_prefill_tokens
        while self.prefilling and budget > 0:
            row = self.prefilling[0]
            if row.job.cancelled:
                self.prefilling.pop(0)
                continue
            group = self._group(budget)
            if len(group) > 1:  # short fresh prompts: one left-padded forward for all of them
                budget -= len(group) * max(len(r.job.ids) for r in group)
                self._prefill_group(group)
                continue
            try:
                with torch.no_grad(), self.dep.use([row.job.adapter]):
                    budget -= row.prefill.run(self.batch, budget)
            except Exception as exc:  # noqa: BLE001 - this request's failure
                self.prefilling.pop(0)
                row.job.emit(ErrorEvent(row.job.index, api_error(exc)))
                continue
            if not row.prefill.finished:
                return  # the rest next step: the budget is spent
            self.prefilling.pop(0)
            try:
                check_cache(row.prefill.cache)
            except UnsupportedCacheError as exc:  # this model cannot be batched per step
                log.error("%s; %s", exc.message, exc.hint)
                row.job.emit(ErrorEvent(row.job.index, APIError(500, f"{exc.message}; {exc.hint}",
                                                                code="unsupported_model")))
                continue
            logits = row.prefill.logits[None]
            if self._accept(row, logits[0], _nonfinite(logits)[0], int(logits[0].argmax())):
                self.batch.add(row.prefill)
                self.running.append(row)
            row.prefill.cache = row.prefill.logits = None

    def _group(self, budget: int) -> list[_Row]:
        """The fresh newcomers at the front whose prompts, padded to the longest, fit ``budget``."""
        group: list[_Row] = []
        width = 0
        for row in self.prefilling:
            if row.prefill.done or row.job.cancelled:
                break
            w = max(width, len(row.job.ids))
            if w * (len(group) + 1) > budget:
                break
            group.append(row)
            width = w
        return group

    def _prefill_group(self, group: list[_Row]) -> None:
        import torch

        del self.prefilling[:len(group)]
        part = KVBatch(self.dep.model, self.dep.device)
        try:
            with torch.no_grad(), self.dep.use([row.job.adapter for row in group]):
                logits = part.prefill([row.job.ids for row in group], self._pad)
            check_cache(part.cache)
        except Exception as exc:  # noqa: BLE001 - these requests' failure
            err = (APIError(500, f"{exc.message}; {exc.hint}", code="unsupported_model")
                   if isinstance(exc, UnsupportedCacheError) else api_error(exc))
            for row in group:
                row.job.emit(ErrorEvent(row.job.index, err))
            return
        broken = _nonfinite(logits)
        greedy = logits.argmax(-1).tolist()
        keep = [i for i, row in enumerate(group) if self._accept(row, logits[i], broken[i], greedy[i])]
        part.keep(keep)
        self.batch.merge(part)
        self.running.extend(group[i] for i in keep)

    def _decode_step(self) -> None:
        import torch

        live = [i for i, row in enumerate(self.running) if not row.job.cancelled]
        if len(live) < len(self.running):
            self._keep(live)
            if not self.running:
                return
        rows = self.running
        self.metrics.batch_size.observe(len(rows))
        try:
            with torch.no_grad(), self.dep.use([row.job.adapter for row in rows]):
                logits = self.batch.step([row.next for row in rows])
        except Exception as exc:  # noqa: BLE001 - the step itself failed: every running request is told
            err = api_error(exc)
            for row in rows:
                row.job.emit(ErrorEvent(row.job.index, err))
            self._keep([])
            return
        broken = _nonfinite(logits)
        greedy = logits.argmax(-1).tolist()
        keep = [i for i, row in enumerate(rows) if self._accept(row, logits[i], broken[i], greedy[i])]
        if len(keep) < len(rows):
            self._keep(keep)

    def _keep(self, rows: list[int]) -> None:
        self.batch.keep(rows)
        self.running = [self.running[i] for i in rows]

    # -- one row's token

    def _accept(self, row: _Row, logits: Any, broken: bool, greedy: int) -> bool:
        """Pick ``row``'s next token from its ``logits``; False when the row is done (answered)."""
        job = row.job
        if job.cancelled:
            return False
        try:
            token = next_token(logits, greedy, broken, job.temperature, job.top_p, row.generator,
                               who=job.adapter, step=len(job.produced) + 1, row=0)
        except RowError as err:  # this request's failure alone
            message = err.message + (f"; {err.hint}" if err.hint else "")
            job.emit(ErrorEvent(job.index, _row_error({"error": message, "error_code": err.code})))
            return False
        if token in self._eos:
            self._done(row, "stop")
            return False
        job.produced.append(token)
        delta = ""
        if job.stream or job.stop or job.logprobs is not None:  # else: decoded once, at the end
            try:
                if job.logprobs is not None:
                    row.lps.append(self._logprob(row.text, logits, token, job.logprobs))
                delta = row.text.add(token)
            except Exception as exc:  # noqa: BLE001 - a tokenizer failing on this row's tokens
                job.emit(ErrorEvent(job.index, api_error(exc)))
                return False
        if job.stop and delta:
            text = row.text.text  # a stop sequence can only end in the new text
            window = text[max(0, len(text) - len(delta) - max(len(s) for s in job.stop) + 1):]
            if any(s in window for s in job.stop):
                job.finish = "stop"
        if job.finish is None and len(job.produced) >= job.limit:
            job.finish = "length"
        if job.finish is not None:
            self._done(row, job.finish)
            return False
        if job.stream:
            self._stream_row(row, row.text.text, final=False)
        row.next = token
        return True

    def _stream_row(self, row: _Row, text: str, *, final: bool) -> None:
        """Send the text that can no longer change (never past a stop sequence), with the
        log-probabilities of the tokens produced since the last event, when asked."""
        job = row.job
        safe = text if final else cut(text, job.stop)
        if not final:
            safe = safe[: len(safe) - held_back(safe, job.stop)]
        lps = None
        if job.logprobs is not None and row.sent_lps < len(row.lps) and (final or len(safe) > len(job.sent)):
            lps, row.sent_lps = row.lps[row.sent_lps:], len(row.lps)
        if len(safe) > len(job.sent) and safe.startswith(job.sent):
            job.emit(TokenEvent(job.index, safe[len(job.sent):], logprobs=lps))
            job.sent = safe
        elif lps:
            job.emit(TokenEvent(job.index, "", logprobs=lps))
        if final:
            job.sent = safe

    @staticmethod
    def _logprob(text: IncrementalText, logits: Any, token: int, top: int) -> dict[str, Any]:
        """One token's log-probability entry; each token's text is what it adds in context (so a
        choice's token texts add up to its text, as OpenAI's do)."""
        lp, best = token_logprobs(logits, token, top)

        def finite(v: float) -> float:  # a token the model excludes (-inf): JSON has no infinity
            return v if math.isfinite(v) else -9999.0

        return {"id": token, "token": text.peek(token), "logprob": finite(lp), "offset": len(text.text),
                "top": [{"id": t, "token": text.peek(t), "logprob": finite(v)} for t, v in best]}

    def _done(self, row: _Row, finish: str) -> None:
        job = row.job
        ids = job.produced
        text = cut(self._decode(ids), job.stop)
        if job.stream:
            self._stream_row(row, text, final=True)
        lps = row.lps if job.logprobs is not None else None  # every token counted in completion_tokens
        self.metrics.tokens.labels(job.label).inc(len(ids))
        self.metrics.prompt_tokens.labels(job.label).inc(len(job.ids))
        job.emit(DoneEvent(job.index, text, finish, prompt_tokens=len(job.ids), completion_tokens=len(ids),
                           logprobs=lps))


__all__ = ["DEFAULT_PREFILL_TOKENS", "ContinuousWorker", "IncrementalText"]

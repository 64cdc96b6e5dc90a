"""An OpenAI-compatible HTTP server for a :class:`~adapterhub_sdk.deploy.Deployment`.

``create_app(deployment)`` returns a FastAPI app:

* ``GET /v1/models`` (the base and its adapters), ``POST /v1/completions`` and
  ``POST /v1/chat/completions`` with ``model`` naming an adapter (or the base), streaming
  as Server-Sent Events in OpenAI's chunk format;
* ``GET|POST /v1/adapters`` and ``DELETE /v1/adapters/{name}`` (and vLLM's
  ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``) to load and unload adapters by
  registry spec while serving, off unless ``allow_adapter_updates`` and an ``admin_key``;
* ``GET /health`` and ``GET /metrics`` (Prometheus).

``api_key`` puts the API behind ``Authorization: Bearer KEY`` (:mod:`.security`); bodies,
JSON nesting, adapter names and prompts are bounded before the work they cause (:mod:`.limits`).

One worker thread owns the deployment. Requests are queued; the worker takes up to
``max_batch`` of them (waiting up to ``batch_wait_ms`` for more), runs one
``Deployment.generate`` over their rows, each row with its own adapter, sampling settings
and random generator, and hands tokens back to each request's event loop as they are
produced. A row that fails (non-finite logits) is answered with its own error; the rows
beside it complete as they would alone. Every error is an OpenAI-style object
``{"error": {"message", "type", "param", "code"}}``.

Where things live: ``protocol`` (request and response bodies), ``routes`` (the endpoints),
``serving`` (what the routes share: model objects, answers and streams), ``worker`` (the
:class:`Scheduler` interface the routes submit jobs to, its typed events, and
:class:`BatchWorker`), ``metrics``, ``errors`` (error objects), ``text`` (chat prompts, stop
sequences), ``app`` (``create_app``). Generation inputs are checked by
:mod:`adapterhub_sdk.generation_inputs`, the checks ``Deployment.generate`` makes.
"""

from __future__ import annotations

from ..generation_inputs import MAX_NEW_TOKENS, MAX_STOP
from .app import create_app
from .errors import APIError, api_error
from .limits import MAX_BODY_BYTES, MAX_JSON_DEPTH
from .metrics import Metrics
from .protocol import (
    AdapterLoad,
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    ContentPart,
    StreamOptions,
)
from .security import Access, ServerConfigError
from .serving import Server
from .text import chat_prompt
from .worker import (
    DEFAULT_CHAT_TOKENS,
    DEFAULT_COMPLETION_TOKENS,
    BatchWorker,
    DoneEvent,
    ErrorEvent,
    Event,
    Job,
    Prompt,
    Scheduler,
    StartEvent,
    TokenEvent,
)

__all__ = [
    "DEFAULT_CHAT_TOKENS", "DEFAULT_COMPLETION_TOKENS", "MAX_BODY_BYTES", "MAX_JSON_DEPTH", "MAX_NEW_TOKENS",
    "MAX_STOP", "APIError", "Access", "AdapterLoad", "BatchWorker", "ChatMessage", "ChatRequest", "CompletionRequest", "ContentPart", "DoneEvent", "ErrorEvent",
    "Event", "Job", "Metrics", "Prompt", "Scheduler", "Server", "ServerConfigError", "StartEvent", "StreamOptions", "TokenEvent",
    "api_error", "chat_prompt", "create_app",
]

"""``create_app``: the FastAPI app serving a deployment (routes, error handlers, the worker's
lifespan, metrics, and an OpenAPI document that describes every body)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..deploy import Deployment
from ..errors import AdapterHubError
from ..generation_inputs import GenerationError
from ..kv_batch import check_model
from . import protocol, security
from .continuous import DEFAULT_PREFILL_TOKENS, ContinuousWorker
from .errors import APIError, api_error, validation_error
from .follow import DEFAULT_INTERVAL
from .limits import MAX_BODY_BYTES
from .metrics import Metrics, MetricsMiddleware
from .routes import router
from .security import Access, AuthMiddleware, ServerConfigError
from .serving import Server
from .worker import BatchWorker, Scheduler

log = logging.getLogger("adapterhub_sdk.server")

# bodies the routes parse themselves (declared with openapi_extra), and the stream's chunks
_DOCUMENTED: tuple[type[BaseModel], ...] = (*protocol.REQUEST_MODELS, protocol.CompletionChunk,
                                            protocol.ChatCompletionChunk)


def _openapi(app: FastAPI, access: Access) -> dict[str, Any]:
    """FastAPI's document plus the schemas it cannot see (request bodies parsed by the routes,
    stream chunks), without FastAPI's 422 validation answer (this app answers 400 instead),
    with the bearer scheme and the 401/403 answers of what needs a key."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    _, extra = models_json_schema([(m, "validation") for m in _DOCUMENTED], ref_template="#/components/schemas/{model}")
    for name, schema in extra.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for path in doc.get("paths", {}).values():
        for op in path.values():
            answer = op.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(answer):
                del op["responses"]["422"]
    if "HTTPValidationError" not in str(doc["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            if path.startswith("/v1/") and "requestBody" in op:  # every body is read under the size limit
                op["responses"].setdefault("413", {"description": "the body is over the size limit",
                                                   "content": {"application/json": {"schema": {
                                                       "$ref": "#/components/schemas/ErrorResponse"}}}})
    security.document(doc, access)
    app.openapi_schema = doc
    return doc


def create_app(deployment: Deployment, *, base_id: str | None = None, max_batch: int = 16,
               batch_wait_ms: float = 5.0, api_key: str | None = None, admin_key: str | None = None,
               allow_adapter_updates: bool = False, metrics_auth: bool = False, follow_interval: float = DEFAULT_INTERVAL,
               max_body_bytes: int = MAX_BODY_BYTES, scheduler: str = "continuous",
               max_prefill_tokens: int = DEFAULT_PREFILL_TOKENS) -> FastAPI:
    """The HTTP app serving ``deployment``. ``base_id``: the base's model id (default: the
    base directory's name, else ``"base"``). ``scheduler``: ``"continuous"`` (requests join
    and leave the running batch at every decode step, :class:`~.continuous.ContinuousWorker`)
    or ``"static"`` (:class:`~.worker.BatchWorker`: batches run to their end).
    ``max_batch``: the most requests running together. ``batch_wait_ms`` (static): how long
    the worker waits for more before running a batch. ``max_prefill_tokens`` (continuous):
    the most prompt tokens prefilled between two decode steps.

    ``api_key``: the bearer key every route but ``/health``, ``/metrics`` and the docs needs
    (None: open). ``allow_adapter_updates``: serve the adapter load/unload endpoints (off:
    403), which then need ``admin_key`` (required with it). ``metrics_auth``: ``/metrics``
    needs a key too. ``max_body_bytes``: bodies over it are a 413. ``follow_interval``: seconds
    between re-reads of the aliases adapters were attached by (``NS/NAME@prod``; default 2;
    0: do not follow them; see :mod:`.follow`). A configuration that
    cannot be safe raises :class:`~.security.ServerConfigError` (see :mod:`.security`)."""
    access = Access(api_key=api_key, admin_key=admin_key, allow_adapter_updates=allow_adapter_updates,
                    metrics_auth=metrics_auth)
    if max_body_bytes < 1:
        raise ServerConfigError("max_body_bytes must be at least 1")
    metrics = Metrics()
    worker: Scheduler
    if scheduler == "continuous":
        check_model(deployment.model, deployment.device)  # a cache it cannot merge: refused before serving
        worker = ContinuousWorker(deployment, max_batch=max_batch, max_prefill_tokens=max_prefill_tokens,
                                  metrics=metrics)
    elif scheduler == "static":
        worker = BatchWorker(deployment, max_batch=max_batch, batch_wait_ms=batch_wait_ms, metrics=metrics)
    else:
        raise ServerConfigError(f"unknown scheduler {scheduler!r}", hint="use 'continuous' or 'static'")
    if base_id is None:
        path = deployment.base_path
        base_id = (Path(path).resolve().name if path is not None else "") or "base"
    if base_id in deployment.adapters:
        raise AdapterHubError(f"an adapter is attached under the base model's id {base_id!r}",
                              hint="attach it under another name (NAME=SPEC)")
    server = Server(deployment, base_id, worker, metrics, max_body_bytes=max_body_bytes,
                    follow_interval=follow_interval)
    metrics.adapters.set_function(lambda: len(server.served_names()))  # as clients see them, not slots

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        server.follower.start()
        try:
            yield
        finally:
            await server.follower.stop()
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="adapterhub", version="1", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(AuthMiddleware, access=access)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 401s too
    app.include_router(router)
    app.openapi = lambda: _openapi(app, access)  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(GenerationError)
    async def _bad_input(request: Request, exc: GenerationError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, f"internal error ({type(exc).__name__})", code="internal_error").response()

    return app


__all__ = ["create_app"]

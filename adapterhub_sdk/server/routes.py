"""The HTTP routes: OpenAI's models, completions and chat completions, adapter load/unload,
health and metrics. Each route reads the app's :class:`~.serving.Server` from
``request.app.state.server``; its request and response bodies are in :mod:`.protocol`."""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from ..deploy import StructuralMatchWarning
from ..generation_inputs import (
    check_max_tokens,
    check_seed,
    check_stop,
    check_temperature,
    check_top_p,
    no_prompts,
)
from . import protocol as p
from .errors import APIError, api_error, validation_error
from .limits import check_served_name, parse_json, read_body
from .metrics import label_adapter
from .serving import Server, event_queue
from .worker import Job, Prompt, context_of, prompt_ids

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
_INLINE_PARSE = 64 * 1024  # bodies smaller than this are parsed on the event loop


def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a route's JSON body (the route parses it itself, see ``_parse``)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; a body over the size limit is a 413, malformed or too deeply
    nested JSON and bad fields are 400 error objects. Any content type is read as JSON (``curl
    -d`` without a header works). A large body is parsed in the thread pool, not the event loop."""
    raw = await read_body(request, _server(request).max_body_bytes)
    data = parse_json(raw) if len(raw) < _INLINE_PARSE else await run_in_threadpool(parse_json, raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


def _unsupported(name: str, message: str | None = None) -> APIError:
    return APIError(400, message or f"{name} is not supported", param=name, code="unsupported_parameter")


def _sampling(body: p._Sampling, max_tokens: int | None) -> dict[str, Any]:
    """Checked sampling settings of a request: the checks ``Deployment.generate`` makes (a
    :class:`~adapterhub_sdk.generation_inputs.GenerationError` is a 400 naming the field),
    and 400 for what this server does not do."""
    if body.n not in (None, 1):
        raise _unsupported("n", "only n=1 is supported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise _unsupported(name)
    if body.logit_bias:
        raise _unsupported("logit_bias")
    checked = {"temperature": 1.0 if body.temperature is None else check_temperature(body.temperature),
               "top_p": 1.0 if body.top_p is None else check_top_p(body.top_p),
               "max_tokens": None if max_tokens is None else check_max_tokens(max_tokens),
               "seed": check_seed(body.seed), "stop": check_stop(body.stop), "stream": bool(body.stream)}
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true", param="stream_options", code="invalid_value")
    return checked


def _completion_prompts(prompt: Any) -> list[Prompt]:
    if isinstance(prompt, str):
        return [Prompt("text", prompt)]
    if not prompt:
        raise no_prompts()
    if all(isinstance(t, int) for t in prompt):
        return [Prompt("ids", list(prompt))]
    return [Prompt("ids", list(x)) if isinstance(x, list) else Prompt("text", x) for x in prompt]


def _chat_messages(messages: list[p.ChatMessage]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise _unsupported(f"messages.{i}.content",
                                       f"content parts of type {part.type!r} are not supported (text only)")
            content = "\n".join(part.text or "" for part in m.content)
        else:
            content = m.content or ""
        out.append({"role": m.role, "content": content})
    return out


async def _generate(request: Request, body: p._Sampling, kind: str, prompts: list[Prompt],
                    max_tokens: int | None) -> Response:
    server = _server(request)
    adapter = server.resolve_model(body.model, request)
    params = _sampling(body, max_tokens)
    q, emit = event_queue()
    jobs = [Job(prompt=prompt, adapter=adapter, label=body.model, max_tokens=params["max_tokens"],
                temperature=params["temperature"], top_p=params["top_p"], seed=params["seed"],
                stop=params["stop"], stream=params["stream"], index=i, emit=emit)
            for i, prompt in enumerate(prompts)]
    if any(prompt.kind != "ids" for prompt in prompts):  # bounded, and tokenized here: never on the worker
        tokenizer, context = server.dep.tokenizer, context_of(server.dep)

        def encode() -> None:
            for job in jobs:
                job.tokens = prompt_ids(tokenizer, job.prompt, context)

        await run_in_threadpool(encode)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await server.run(jobs, q, stream=params["stream"], kind=kind, model=body.model,
                            include_usage=include_usage)


# --------------------------------------------------------------------------- OpenAI API

_GENERATION_ERRORS = p.errors(400, 404, 422, 500, 503)


@router.get("/v1/models", response_model=p.ModelList)
async def list_models(request: Request) -> JSONResponse:
    server = _server(request)
    names = [server.base_id, *server.dep.adapters]
    return JSONResponse({"object": "list", "data": [server.model_object(n) for n in names]})


@router.get("/v1/models/{model:path}", response_model=p.ModelObject, responses=p.errors(404))
async def get_model(model: str, request: Request) -> JSONResponse:
    server = _server(request)
    server.resolve_model(model, request)
    return JSONResponse(server.model_object(model))


@router.post("/v1/completions", response_model=p.CompletionResponse, openapi_extra=request_body(p.CompletionRequest),
             responses={200: {"content": p.streamed(p.CompletionChunk)}, **_GENERATION_ERRORS})
async def completions(request: Request) -> Response:
    body = await _parse(request, p.CompletionRequest)
    if body.suffix is not None:
        raise _unsupported("suffix")
    if body.echo:
        raise _unsupported("echo")
    if body.logprobs:
        raise _unsupported("logprobs", "logprobs are not supported")
    if body.best_of not in (None, 1):
        raise _unsupported("best_of", "only best_of=1 is supported")
    return await _generate(request, body, "completion", _completion_prompts(body.prompt), body.max_tokens)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse,
             openapi_extra=request_body(p.ChatRequest),
             responses={200: {"content": p.streamed(p.ChatCompletionChunk)}, **_GENERATION_ERRORS})
async def chat_completions(request: Request) -> Response:
    body = await _parse(request, p.ChatRequest)
    if body.logprobs or body.top_logprobs:
        raise _unsupported("logprobs", "logprobs are not supported")
    if body.tools:
        raise _unsupported("tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise _unsupported("response_format", "only the text response_format is supported")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    prompts = [Prompt("chat", _chat_messages(body.messages))]
    return await _generate(request, body, "chat", prompts, max_tokens)


# --------------------------------------------------------------------------- adapters


@router.get("/v1/adapters", response_model=p.AdapterList)
async def list_adapters(request: Request) -> JSONResponse:
    server = _server(request)
    dep = server.dep
    return JSONResponse({"object": "list", "data": [server.adapter_object(n) for n in dep.adapters],
                         "merged": dep.merged})


@router.post("/v1/adapters", response_model=p.AdapterLoaded, status_code=201,
             openapi_extra=request_body(p.AdapterLoad),
             responses={200: {"model": p.AdapterLoaded, "description": "an adapter of that name was replaced"},
                        **p.errors(400, 404, 500, 503)})
async def load_adapter(request: Request) -> JSONResponse:
    server = _server(request)
    body = await _parse(request, p.AdapterLoad)
    attached, replaced, notes = await _attach(request, body.spec, body.name, "spec", "name")
    return JSONResponse({**server.adapter_object(attached.name), "replaced": replaced, "warnings": notes},
                        status_code=200 if replaced else 201)


@router.delete("/v1/adapters/{name:path}", response_model=p.AdapterDeleted, responses=p.errors(400, 404, 500, 503))
async def unload_adapter(name: str, request: Request) -> JSONResponse:
    await _detach(request, name, "name")
    return JSONResponse({"id": name, "object": "adapter", "deleted": True})


# vLLM answers in plain text, and errors in JSON (declared apart: a ``model`` would be text/plain here)
_VLLM_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "vLLM's answer", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **{status: {"description": "an error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorResponse"}}}} for status in (400, 404, 500, 503)}}


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             openapi_extra=request_body(p.LoraLoad),
             responses=_VLLM_ANSWERS)
async def load_lora_adapter(request: Request) -> PlainTextResponse:
    """vLLM's endpoint: ``lora_path`` is a registry spec here; a name already served is a 400."""
    body = await _parse(request, p.LoraLoad)
    name = check_served_name(body.lora_name, "lora_name")
    if name in _server(request).dep.adapters:
        raise APIError(400, f"the adapter '{name}' is already loaded (unload it first, or POST /v1/adapters to "
                            "replace it)", param="lora_name", code="invalid_value")
    if body.lora_path.startswith(("/", "./", "../", "~", "file:")) or "\\" in body.lora_path:
        raise APIError(400, f"lora_path {body.lora_path[:200]!r} is a directory; this server loads adapters from its "
                            "registry: publish the directory, then pass its spec (NS/NAME@VERSION)",
                       param="lora_path", code="unsupported_lora_path")
    await _attach(request, body.lora_path, name, "lora_path", "lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             openapi_extra=request_body(p.LoraUnload),
             responses=_VLLM_ANSWERS)
async def unload_lora_adapter(request: Request) -> PlainTextResponse:
    """vLLM's endpoint: detach the adapter served as ``lora_name``."""
    body = await _parse(request, p.LoraUnload)
    await _detach(request, body.lora_name, "lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def _attach(request: Request, spec: str, name: str | None, spec_param: str,
                  name_param: str) -> tuple[Any, bool, list[str]]:
    """Attach ``spec`` as ``name`` on the worker: (the adapter, whether it replaced one, warnings)."""
    server = _server(request)
    dep, base_id = server.dep, server.base_id
    if name is not None:
        check_served_name(name, name_param)
        if name in (base_id, "base"):
            raise APIError(400, f"'{name}' is the base's id; pass another name", param=name_param,
                           code="invalid_value")
    label_adapter(request.scope, name or "")

    def attach() -> tuple[Any, bool, list[str]]:
        before = set(dep.adapters)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StructuralMatchWarning)
            attached = dep.attach(spec, name=name)
        notes = [str(w.message) for w in caught if issubclass(w.category, StructuralMatchWarning)]
        return attached, attached.name in before, notes

    try:
        attached, replaced, notes = await asyncio.wrap_future(server.worker.call(attach))
    except Exception as exc:  # noqa: BLE001 - every failure is an error object
        raise api_error(exc, param=spec_param) from None
    if attached.name == base_id:  # named after the base by its registry name: refuse to shadow it
        await asyncio.wrap_future(server.worker.call(lambda: dep.detach(attached.name)))
        raise APIError(400, f"'{attached.name}' is the base's id; pass another name", param=name_param,
                       code="invalid_value")
    server.loaded_at[attached.name] = int(time.time())
    label_adapter(request.scope, attached.name)
    return attached, replaced, notes


async def _detach(request: Request, name: str, param: str) -> None:
    server = _server(request)
    dep = server.dep
    if name == server.base_id:
        raise APIError(400, "the base cannot be unloaded", param=param, code="invalid_value")
    check_served_name(name, param)
    if name not in dep.adapters:
        raise APIError(404, f"no adapter '{name}' is loaded", param=param, code="model_not_found")
    label_adapter(request.scope, name)
    try:
        await asyncio.wrap_future(server.worker.call(lambda: dep.detach(name)))
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, param=param) from None
    server.loaded_at.pop(name, None)


# --------------------------------------------------------------------------- operations


@router.get("/health", response_model=p.Health, responses={503: {"model": p.Health, "description": "the worker is gone"}})
async def health(request: Request) -> JSONResponse:
    server = _server(request)
    ok = server.worker.healthy
    body = {"status": "ok" if ok else "unavailable", "base": server.base_id, "adapters": len(server.dep.adapters),
            "queue": server.worker.pending(), "device": str(server.dep.device)}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus_metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_server(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["request_body", "router"]

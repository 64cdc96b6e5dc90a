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
from ..deploy_dir import attach_directory
from ..errors import IntegrityError
from ..generation_inputs import (
    check_max_tokens,
    check_seed,
    check_stop,
    check_temperature,
    check_top_p,
    no_prompts,
)
from . import logprobs as lp
from . import protocol as p
from .errors import APIError, api_error, error_message, validation_error
from .follow import is_alias
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


#: completions one request may ask for (prompts x n): more is split into several requests
MAX_REQUEST_ROWS = 256


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
    release = server.follower.acquire(adapter)  # the request runs on this slot, whatever moves meanwhile
    try:
        return await _run_jobs(request, body, kind, prompts, max_tokens, adapter, release)
    except BaseException:
        release()
        raise


async def _run_jobs(request: Request, body: p._Sampling, kind: str, prompts: list[Prompt], max_tokens: int | None,
                    adapter: str | None, release: Any) -> Response:
    server = _server(request)
    params = _sampling(body, max_tokens)
    n, logprobs = lp.choices(body), lp.requested(body, kind)
    if len(prompts) * n > MAX_REQUEST_ROWS:  # one request is not to hold the server for everyone else
        raise APIError(400, f"this request asks for {len(prompts)} prompts x {n} choices = {len(prompts) * n} "
                            f"completions; at most {MAX_REQUEST_ROWS} per request", code="invalid_value",
                       param="prompt")
    seed = params["seed"]
    q, emit = event_queue()
    # n choices per prompt (choice index i * n + j); a seeded choice j draws from seed + j
    jobs = [Job(prompt=prompt, adapter=adapter, label=body.model, max_tokens=params["max_tokens"],
                temperature=params["temperature"], top_p=params["top_p"],
                seed=None if seed is None else (seed + j) % 2**63, stop=params["stop"], stream=params["stream"],
                index=i * n + j, emit=emit, logprobs=logprobs)
            for i, prompt in enumerate(prompts) for j in range(n)]
    if any(prompt.kind != "ids" for prompt in prompts):  # bounded, and tokenized here: never on the worker
        tokenizer, context = server.dep.tokenizer, context_of(server.dep)

        def encode() -> None:
            for job in jobs:
                job.tokens = prompt_ids(tokenizer, job.prompt, context)

        await run_in_threadpool(encode)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await server.run(jobs, q, stream=params["stream"], kind=kind, model=body.model,
                            disconnected=request.is_disconnected,
                            include_usage=include_usage, release=release)


# --------------------------------------------------------------------------- OpenAI API

_GENERATION_ERRORS = p.errors(400, 404, 422, 500, 503)


@router.get("/v1/models", response_model=p.ModelList)
async def list_models(request: Request) -> JSONResponse:
    server = _server(request)
    names = [server.base_id, *server.served_names()]
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
    if body.best_of not in (None, 1, body.n):
        raise _unsupported("best_of", "best_of is supported only equal to n")
    return await _generate(request, body, "completion", _completion_prompts(body.prompt), body.max_tokens)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse,
             openapi_extra=request_body(p.ChatRequest),
             responses={200: {"content": p.streamed(p.ChatCompletionChunk)}, **_GENERATION_ERRORS})
async def chat_completions(request: Request) -> Response:
    body = await _parse(request, p.ChatRequest)
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
    return JSONResponse({"object": "list", "data": [server.adapter_object(n) for n in server.served_names()],
                         "merged": dep.merged})


@router.post("/v1/adapters", response_model=p.AdapterLoaded, status_code=201,
             openapi_extra=request_body(p.AdapterLoad),
             responses={200: {"model": p.AdapterLoaded, "description": "an adapter of that name was replaced"},
                        **p.errors(400, 403, 404, 500, 503)})
async def load_adapter(request: Request) -> JSONResponse:
    server = _server(request)
    body = await _parse(request, p.AdapterLoad)
    public, replaced, notes, attached = await _attach(request, body.spec, body.name, "spec", "name")
    return JSONResponse({**server.adapter_object(public, attached), "replaced": replaced, "warnings": notes},
                        status_code=200 if replaced else 201)


@router.delete("/v1/adapters/{name:path}", response_model=p.AdapterDeleted, responses=p.errors(400, 404, 500, 503))
async def unload_adapter(name: str, request: Request) -> JSONResponse:
    await _detach(request, name, "name")
    return JSONResponse({"id": name, "object": "adapter", "deleted": True})


# vLLM answers in plain text, and errors in JSON (declared apart: a ``model`` would be text/plain here)
_VLLM_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "vLLM's answer", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **{status: {"description": "an error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorResponse"}}}} for status in (400, 403, 404, 500, 503)}}


def _directory(lora_path: str) -> str | None:
    """The server directory ``lora_path`` names (absolute, ``./``, ``../``, ``~``, ``file://``);
    None: it is a registry spec."""
    if lora_path.startswith("file://"):
        return lora_path[len("file://"):] or "/"
    if lora_path.startswith(("/", "./", "../", "~")) or "\\" in lora_path:
        return lora_path
    return None


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             openapi_extra=request_body(p.LoraLoad),
             responses=_VLLM_ANSWERS)
async def load_lora_adapter(request: Request) -> PlainTextResponse:
    """vLLM's endpoint: ``lora_path`` is a registry spec or a PEFT directory on the server,
    checked against the base either way; a name already served is a 400 unless ``load_inplace``.
    Lines after the first say what a structural or unpinned fit means; the
    ``X-AdapterHub-Verdict``/``-Pinned``/``-Digest`` headers say what was loaded."""
    server = _server(request)
    body = await _parse(request, p.LoraLoad)
    name = check_served_name(body.lora_name, "lora_name")
    loading = server.follower.loading  # a name being loaded counts as loaded until its load answers
    if (server.follower.slot_of(name) is not None or name in loading) and not body.load_inplace:
        raise APIError(400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                            "in place, set 'load_inplace' to True.", param="lora_name", code="invalid_value")
    fresh = name not in loading
    loading.add(name)
    try:
        _, _, notes, a = await _attach(request, body.lora_path, name, "lora_path", "lora_name",
                                       directory=_directory(body.lora_path))
    finally:
        if fresh:
            loading.discard(name)
    text = f"Success: LoRA adapter '{name}' added successfully." + "".join(f"\nwarning: {n}" for n in notes)
    return PlainTextResponse(text, headers={"X-AdapterHub-Verdict": a.verdict, "X-AdapterHub-Digest": a.digest,
                                            "X-AdapterHub-Pinned": "true" if a.pinned else "false"})


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             openapi_extra=request_body(p.LoraUnload),
             responses=_VLLM_ANSWERS)
async def unload_lora_adapter(request: Request) -> PlainTextResponse:
    """vLLM's endpoint: detach the adapter served as ``lora_name`` (404 when there is none)."""
    body = await _parse(request, p.LoraUnload)
    await _detach(request, body.lora_name, "lora_name",
                  missing=f"The lora adapter '{body.lora_name[:200]}' cannot be found.")
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def _attach(request: Request, spec: str, name: str | None, spec_param: str, name_param: str, *,
                  directory: str | None = None) -> tuple[str, bool, list[str], Any]:
    """Attach ``spec`` (or ``directory``) as ``name`` between scheduler steps: (the public name,
    whether it replaced one, warnings, the attached version). A served name gets its new
    version under a new internal slot (see :mod:`.follow`): requests received before the
    switch finish on the old one. An alias spec is followed when the server follows aliases."""
    server = _server(request)
    dep, base_id, follower = server.dep, server.base_id, server.follower
    if name is not None:
        check_served_name(name, name_param)
        if name in (base_id, "base"):
            raise APIError(400, f"'{name}' is the base's id; pass another name", param=name_param,
                           code="invalid_value")
    label_adapter(request.scope, name or "")
    before = set(server.served_names())
    if directory is None and follower.enabled and is_alias(spec):
        return await _follow(request, spec, name, before, spec_param, name_param)

    def attach(key: str, target: str) -> tuple[Any, list[str]]:
        if target in dep.adapters:  # attached meanwhile: a new slot, never a name requests may hold
            target = follower.next_slot(key)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StructuralMatchWarning)
            if directory is not None:
                attached = attach_directory(dep, directory, name=target)
            else:
                attached = dep.attach(spec, name=target)
        return attached, [str(w.message) for w in caught if issubclass(w.category, StructuralMatchWarning)]

    try:
        key = name if name is not None else await _registry_name(dep, spec)
        if key is None:  # the registry does not know it: the attach says why
            key = str((await run_in_threadpool(dep.registry.show, spec)).name)
        if key == base_id:  # named after the base by its registry name: refuse to shadow it
            raise APIError(400, f"'{key}' is the base's id; pass another name", param=name_param,
                           code="invalid_value")
        mark = follower.unloads[key]  # unloads of the name before this call
        target = follower.target_for(key)
        attached, notes = await asyncio.wrap_future(server.worker.call(lambda: attach(key, target), names=[target]))
    except APIError:
        raise
    except IntegrityError as exc:  # a directory's files differ from its manifest: the request's input
        if directory is None:
            raise api_error(exc, param=spec_param) from None
        raise APIError(400, error_message(exc), param=spec_param, code="integrity_error") from None
    except Exception as exc:  # noqa: BLE001 - every failure is an error object
        raise api_error(exc, param=spec_param) from None
    label_adapter(request.scope, key)
    if follower.unloads[key] != mark:  # unloaded while this ran: the later call wins; what this
        follower.retire(attached.name)  # attached is hidden now, detached once unheld
        server.loaded_at.pop(key, None)
        raise APIError(409, f"the load of '{key}' was superseded by an unload of it received while it was "
                            f"attaching (the later call wins); nothing is served as '{key}': load it again to "
                            "serve it", param=name_param, code="superseded")
    follower.serve(key, attached.name)  # from now on requests for it are bound to this version
    server.loaded_at[key] = int(time.time())
    return key, key in before, notes, attached


async def _follow(request: Request, spec: str, name: str | None, before: set[str], spec_param: str,
                  name_param: str) -> tuple[str, bool, list[str], Any]:
    """Attach the alias ``spec`` under an internal slot and serve it as ``name`` (default: the
    adapter's name), following the alias from now on."""
    server = _server(request)
    try:
        public = name or (await run_in_threadpool(server.dep.registry.alias_target, spec))[0]
        if public == server.base_id:
            raise APIError(400, f"'{public}' is the base's id; pass another name", param=name_param,
                           code="invalid_value")
        attached, notes = await server.follower.follow(public, spec)
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, param=spec_param) from None
    server.loaded_at[public] = int(time.time())
    label_adapter(request.scope, public)
    return public, public in before, notes, attached


async def _detach(request: Request, name: str, param: str, *, missing: str | None = None) -> None:
    server = _server(request)
    if name == server.base_id:
        raise APIError(400, "the base cannot be unloaded", param=param, code="invalid_value")
    check_served_name(name, param)
    if server.follower.slot_of(name) is None:
        raise APIError(404, missing or f"no adapter '{name}' is loaded", param=param, code="model_not_found")
    label_adapter(request.scope, name)
    detach = await server.follower.unload(name)  # the name goes now; requests bound to it finish on it
    server.loaded_at.pop(name, None)
    if detach is not None:  # no request held it: detached before this answers
        try:
            await asyncio.wrap_future(detach)
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, param=param) from None


async def _registry_name(dep: Any, spec: str) -> str | None:
    """The name ``dep.attach(spec)`` serves the adapter as (None: unknown; the attach says why)."""
    try:
        return str((await run_in_threadpool(dep.registry.show, spec)).name)
    except Exception:  # noqa: BLE001 - the attach raises the same error, answered there
        return None


# --------------------------------------------------------------------------- operations


@router.get("/health", response_model=p.Health, responses={503: {"model": p.Health, "description": "the worker is gone"}})
async def health(request: Request) -> JSONResponse:
    server = _server(request)
    ok = server.worker.healthy
    body = {"status": "ok" if ok else "unavailable", "base": server.base_id, "adapters": len(server.served_names()),
            "queue": server.worker.pending(), "device": str(server.dep.device)}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus_metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_server(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["request_body", "router"]

"""The server's structure as a client and a maintainer see it: ``/openapi.json`` describes
every request and response body, every answer has its documented shape, the worker speaks
in typed events, and the Python API and the HTTP API refuse the same generation inputs
with the same message (one validation, :mod:`adapterhub_sdk.generation_inputs`).

A real uvicorn server on a loopback socket serves a real deployment (a tiny Llama with a
tokenizer and a PEFT-saved LoRA) from a real SQLite registry."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah

from conftest import save_lora

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from test_row_isolation import _save_base, _Serving  # noqa: E402 - the same tiny base and loopback server

BASE_ID = "tiny"
ADMIN = {"Authorization": "Bearer admin-key"}  # adapter updates need the admin key (tests/test_server_auth.py)


@pytest.fixture(scope="module")
def dep(tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("serverapi")
    base = _save_base(tmp / "base")
    lora = save_lora(base, tmp / "lora", seed=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(tmp / "home"))
        for k in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS"):
            mp.delenv(k, raising=False)
        reg = ah.Registry.open(f"sqlite:///{tmp / 'registry.db'}")
        reg.publish(lora, name="acme/a", version="1.0.0", base=base)
        reg.publish(lora, name="acme/b", version="1.0.0", base=base)
        d = ah.Deployment(str(base), registry=reg)
        d.attach("acme/a@1.0.0")
        yield d
        reg.close()


@pytest.fixture(scope="module")
def app(dep) -> Any:
    from adapterhub_sdk.server import create_app

    return create_app(dep, base_id=BASE_ID, batch_wait_ms=0, allow_adapter_updates=True, admin_key="admin-key")


@pytest.fixture(scope="module")
def url(app) -> Any:
    with _Serving(app) as serving:
        yield serving.url


# --------------------------------------------------------------------------- OpenAPI


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/"), ref
    name = ref.rsplit("/", 1)[1]
    assert name in doc["components"]["schemas"], f"{ref} does not resolve"
    return doc["components"]["schemas"][name]


def _all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _all_refs(v)]
    return []


def test_openapi_describes_every_request_and_response_body(url):
    doc = httpx.get(url + "/openapi.json").json()
    for ref in _all_refs(doc):
        _resolve(doc, {"$ref": ref})  # every reference resolves
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert {p for p, _ in ops} == {"/v1/models", "/v1/models/{model}", "/v1/completions", "/v1/chat/completions",
                                   "/v1/adapters", "/v1/adapters/{name}", "/v1/load_lora_adapter",
                                   "/v1/unload_lora_adapter", "/health", "/metrics"}
    bodies = {}
    for (path, method), op in ops.items():
        if method == "post":  # every body a route takes is described, with its fields
            schema = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
            assert schema.get("properties"), (path, schema)
            bodies[path] = schema
        answers = op["responses"]
        assert "422" not in answers or "ErrorResponse" in str(answers["422"]), (path, answers["422"])
        ok = [s for s in answers if s.startswith("2")]
        assert ok, (path, method)
        for status, answer in answers.items():
            content = answer.get("content")
            assert content, (path, method, status, answer)
            for media, body in content.items():
                alternatives = body["schema"].get("oneOf", [body["schema"]])
                schema = _resolve(doc, alternatives[0])
                assert schema and schema != {}, (path, method, status, media)
                if media == "application/json":
                    assert schema.get("properties"), (path, method, status, schema)
                if not status.startswith("2"):  # errors are OpenAI error objects (/health: its own body)
                    name = "Health" if path == "/health" else "ErrorResponse"
                    assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}, (path, status)
    assert {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "stream"} <= set(
        bodies["/v1/completions"]["properties"])
    assert {"model", "messages", "max_completion_tokens"} <= set(bodies["/v1/chat/completions"]["properties"])
    assert set(bodies["/v1/adapters"]["properties"]) == {"spec", "name"}
    for path, chunk in (("/v1/completions", "CompletionChunk"), ("/v1/chat/completions", "ChatCompletionChunk")):
        stream = ops[(path, "post")]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert stream == {"oneOf": [{"$ref": f"#/components/schemas/{chunk}"},
                                    {"$ref": "#/components/schemas/ErrorResponse"}]}, stream
        assert _resolve(doc, stream["oneOf"][0])["properties"]["choices"]
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}


def _declared(path: str, method: str, status: int) -> Any:
    """The pydantic model a route declares for ``status`` (an undeclared status fails)."""
    from adapterhub_sdk.server.routes import router

    for route in router.routes:
        if getattr(route, "path", None) == path and method.upper() in getattr(route, "methods", ()):
            extra = route.responses.get(status, {})
            if "model" in extra:
                return extra["model"]
            assert status == (route.status_code or 200), f"{method} {path} answered {status}, which it does not declare"
            return route.response_model
    raise AssertionError(f"no route {method} {path}")


def test_every_answer_has_its_documented_shape(url):
    """Each route's real answers (success and error) validate against the models it declares;
    the models forbid undeclared fields, so an answer cannot grow past its documentation."""
    calls = [
        ("GET", "/v1/models", "/v1/models", None),
        ("GET", "/v1/models/{model:path}", "/v1/models/acme/a", None),
        ("GET", "/v1/models/{model:path}", f"/v1/models/{BASE_ID}", None),
        ("GET", "/v1/models/{model:path}", "/v1/models/acme/nope", None),
        ("POST", "/v1/completions", "/v1/completions", {"model": "acme/a", "prompt": "w3 w4", "max_tokens": 3}),
        ("POST", "/v1/completions", "/v1/completions", {"model": BASE_ID, "prompt": [[2, 3], [4]], "max_tokens": 2}),
        ("POST", "/v1/completions", "/v1/completions", {"model": "acme/a", "prompt": "w3", "max_tokens": 0}),
        ("POST", "/v1/chat/completions", "/v1/chat/completions",
         {"model": "acme/a", "messages": [{"role": "user", "content": "w5 w6"}], "max_tokens": 3}),
        ("POST", "/v1/adapters", "/v1/adapters", {"spec": "acme/b@1.0.0"}),
        ("POST", "/v1/adapters", "/v1/adapters", {"spec": "acme/b@1.0.0"}),  # replaced: 200
        ("POST", "/v1/adapters", "/v1/adapters", {"spec": "acme/nope@1.0.0"}),
        ("GET", "/v1/adapters", "/v1/adapters", None),
        ("DELETE", "/v1/adapters/{name:path}", "/v1/adapters/acme/b", None),
        ("DELETE", "/v1/adapters/{name:path}", "/v1/adapters/acme/b", None),
        ("GET", "/health", "/health", None),
    ]
    seen = set()
    with httpx.Client(base_url=url, timeout=60, headers=ADMIN) as client:
        for method, route, path, body in calls:
            r = client.request(method, path, json=body)
            model = _declared(route, method, r.status_code)
            model.model_validate(r.json())
            seen.add((route, r.status_code))
        assert r.status_code == 200
        with client.stream("POST", "/v1/completions", json={"model": "acme/a", "prompt": "w3 w4", "max_tokens": 3,
                                                             "stream": True,
                                                             "stream_options": {"include_usage": True}}) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        with client.stream("POST", "/v1/chat/completions", json={"model": "acme/a", "stream": True, "max_tokens": 3,
                                                                  "messages": [{"role": "user", "content": "w5"}]}) as s:
            chat_events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        metrics = client.get("/metrics")
    from adapterhub_sdk.server.protocol import ChatCompletionChunk, CompletionChunk

    assert events[-1] == chat_events[-1] == "[DONE]" and len(events) > 2
    for e in events[:-1]:
        CompletionChunk.model_validate_json(e)
    for e in chat_events[:-1]:
        ChatCompletionChunk.model_validate_json(e)
    assert metrics.status_code == 200 and "adapterhub_requests_total" in metrics.text
    assert {("/v1/adapters", 201), ("/v1/adapters", 200), ("/v1/adapters", 404), ("/v1/completions", 400),
            ("/v1/adapters/{name:path}", 404), ("/v1/models/{model:path}", 404)} <= seen


# --------------------------------------------------------------------------- typed events


def test_the_worker_answers_with_typed_events(dep):
    from adapterhub_sdk.server import (
        APIError,
        BatchWorker,
        DoneEvent,
        ErrorEvent,
        Job,
        Prompt,
        Scheduler,
        StartEvent,
        TokenEvent,
    )

    worker = BatchWorker(dep, max_batch=8, batch_wait_ms=0)
    assert isinstance(worker, Scheduler)
    events: dict[int, list[Any]] = {i: [] for i in range(4)}
    lock = threading.Lock()

    def emit(event: Any) -> None:
        with lock:
            events[event.index].append(event)

    def job(i: int, prompt: Prompt, **kw: Any) -> Job:
        fields = {"adapter": "acme/a", "label": "acme/a", "max_tokens": 5, "temperature": 0.0, "top_p": 1.0,
                  "seed": None, "stop": [], "stream": False, **kw}
        return Job(prompt=prompt, index=i, emit=emit, **fields)

    gate = threading.Event()
    worker.call(gate.wait)  # hold the worker: the four jobs share one batch
    try:
        worker.submit(job(0, Prompt("text", "w3 w4 w5")))
        worker.submit(job(1, Prompt("ids", [3, 4, 5]), stream=True))
        worker.submit(job(2, Prompt("ids", [3, 999])))  # outside the vocabulary: its own error
        worker.submit(job(3, Prompt("ids", [3]), adapter="acme/unloaded"))
        gate.set()
        deadline = time.monotonic() + 60
        while not all(evs and isinstance(evs[-1], (DoneEvent, ErrorEvent)) for evs in events.values()):
            assert time.monotonic() < deadline, events
            time.sleep(0.01)
    finally:
        gate.set()
        worker.stop()
    want = dep.generate([[3, 4, 5]], "acme/a", max_new_tokens=5)[0]
    done0, done1 = events[0][-1], events[1][-1]
    assert isinstance(events[0][0], StartEvent) and len(events[0]) == 2, events[0]
    assert isinstance(done0, DoneEvent) and isinstance(done1, DoneEvent)
    assert done1.text == want["text"] and done1.finish_reason == want["finish_reason"]
    assert done1.completion_tokens == want["completion_tokens"] and done1.prompt_tokens == 3
    tokens = [e for e in events[1] if isinstance(e, TokenEvent)]
    assert isinstance(events[1][0], StartEvent) and tokens and "".join(e.text for e in tokens) == done1.text
    bad, gone = events[2], events[3]
    assert len(bad) == 1 and isinstance(bad[0], ErrorEvent) and isinstance(bad[0].error, APIError)
    assert (bad[0].error.status, bad[0].error.param) == (400, "prompt")
    assert "outside the model's vocabulary" in bad[0].error.message
    assert len(gone) == 1 and (gone[0].error.status, gone[0].error.code) == (404, "model_not_found")


# --------------------------------------------------------------------------- one validation

CONTEXT = 128  # the tiny base's max_position_embeddings
# (server body fields, Deployment.generate keyword arguments, the field both name)
BAD_INPUTS = [
    ({"max_tokens": 5000}, {"max_new_tokens": 5000}, "max_tokens"),
    ({"max_tokens": 0}, {"max_new_tokens": 0}, "max_tokens"),
    ({"temperature": 2.5}, {"temperature": 2.5}, "temperature"),  # Python accepted it
    ({"temperature": -0.5}, {"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, {"top_p": 1.5}, "top_p"),
    ({"top_p": 0.0}, {"top_p": 0.0}, "top_p"),
    ({"seed": -3}, {"seed": -3}, "seed"),  # Python accepted it for a greedy row
    ({"seed": 2**63}, {"seed": 2**63}, "seed"),
    ({"stop": [""]}, {"stop": [""]}, "stop"),  # Python stopped every row after one token
    ({"stop": [f"s{i}" for i in range(17)]}, {"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"prompt": []}, {"prompts": []}, "prompt"),
    ({"prompt": [[]]}, {"prompts": [[]]}, "prompt"),
    ({"prompt": [3, 999]}, {"prompts": [[3, 999]]}, "prompt"),
    ({"prompt": [3] * CONTEXT, "max_tokens": 4}, {"prompts": [[3] * CONTEXT], "max_new_tokens": 4}, "prompt"),
    ({"prompt": [3] * (CONTEXT - 2), "max_tokens": 4}, {"prompts": [[3] * (CONTEXT - 2)], "max_new_tokens": 4},
     "max_tokens"),
]


@pytest.mark.parametrize(("body", "kwargs", "param"), BAD_INPUTS, ids=[str(c[0])[:40] for c in BAD_INPUTS])
def test_python_and_http_refuse_the_same_inputs_with_the_same_message(dep, url, body, kwargs, param):
    from adapterhub_sdk.generation import GenerationError

    kwargs = {"prompts": [[3, 4]], "max_new_tokens": 4, "temperature": 0.0, **kwargs}
    with pytest.raises(GenerationError) as caught:
        dep.generate(kwargs.pop("prompts"), "acme/a", **kwargs)
    exc = caught.value
    expected = " ".join(exc.message.split()) + (f"; {exc.hint}" if exc.hint else "")
    r = httpx.post(url + "/v1/completions", timeout=60,
                   json={"model": "acme/a", "prompt": [3, 4], "max_tokens": 4, "temperature": 0, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] == expected
    assert err["param"] == exc.param == param
    assert err["code"] == exc.code


def test_a_text_prompt_without_a_tokenizer_is_refused_alike(tmp_path):
    """The base of conftest has no tokenizer: text is refused the same way by both APIs."""
    from adapterhub_sdk.generation import GenerationError
    from adapterhub_sdk.server import create_app

    from conftest import save_base

    bare = ah.Deployment(str(save_base(Path(tmp_path) / "bare")))
    assert bare.tokenizer is None
    with pytest.raises(GenerationError) as caught:
        bare.generate(["hello"], max_new_tokens=2)
    with _Serving(create_app(bare, base_id="bare")) as serving:
        r = httpx.post(serving.url + "/v1/completions", json={"model": "bare", "prompt": "hello", "max_tokens": 2})
    err = r.json()["error"]
    assert r.status_code == 400 and err["message"] == caught.value.message
    assert err["code"] == caught.value.code == "no_tokenizer" and err["param"] == "prompt"

"""Inputs that cannot hurt the server: bodies over the size limit (413, however they are sent),
JSON nested deeper than the limit (400, checked before the recursive parser runs; depth
5,000 was a 500), hostile adapter names (400; a newline or 10,000 characters were
accepted), and prompts longer than the context could hold, refused before the tokenizer
sees them, which runs in the request's thread pool and never on the model's worker.

A real uvicorn server on a loopback socket serves test_server_api's deployment."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from test_row_isolation import _Serving  # noqa: E402 - the loopback server
from test_server_api import BASE_ID  # noqa: E402
from test_server_api import dep as tiny_dep  # noqa: E402, F401 - a fixture

ADMIN = "admin-key"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def dep(tiny_dep: Any) -> Any:  # noqa: F811 - the imported fixture, by name
    """test_server_api's deployment: a tiny Llama with a tokenizer, acme/a attached, acme/b published."""
    return tiny_dep


class SeenTokenizer:
    """The deployment's real tokenizer, recording the thread and the length of each text it is
    given (everything else passes through)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.calls: list[tuple[str, int]] = []

    def __call__(self, text: str, **kw: Any) -> Any:
        self.calls.append((threading.current_thread().name, len(text)))
        return self._tokenizer(text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def served(dep: Any) -> Any:
    from adapterhub_sdk.server import create_app

    real = dep.tokenizer
    seen = SeenTokenizer(real)
    dep.tokenizer = seen
    try:
        app = create_app(dep, base_id=BASE_ID, batch_wait_ms=0, allow_adapter_updates=True, admin_key=ADMIN,
                         max_body_bytes=LIMIT)
        with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=60,
                                              headers={"Authorization": f"Bearer {ADMIN}"}) as client:
            yield client, seen
    finally:
        dep.tokenizer = real


def _error(r: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    assert err["param"] == param, err
    return err


def _completion(prompt: Any, **kw: Any) -> dict[str, Any]:
    return {"model": BASE_ID, "prompt": prompt, "max_tokens": 2, "temperature": 0, **kw}


def test_a_body_over_the_limit_is_a_413_with_or_without_a_length(served):
    client, _ = served
    big = json.dumps(_completion("w3 " * (LIMIT // 3 + 10))).encode()
    assert len(big) > LIMIT
    err = _error(client.post("/v1/completions", content=big), 413, "request_too_large")
    assert str(LIMIT) in err["message"]

    def chunks() -> Any:  # chunked transfer: no Content-Length to refuse it by
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    _error(client.post("/v1/completions", content=chunks()), 413, "request_too_large")
    _error(client.post("/v1/adapters", content=json.dumps({"spec": "acme/b@1.0.0", "pad": "x" * LIMIT})), 413,
           "request_too_large")
    assert client.post("/v1/completions", json=_completion("w3 w4")).status_code == 200


@pytest.mark.parametrize("depth", [65, 5000])
def test_deeply_nested_json_is_a_400_not_a_500(served, depth):
    client, _ = served
    for deep in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        body = f'{{"model": "{BASE_ID}", "prompt": "w3", "max_tokens": 1, "user_data": {deep}}}'
        err = _error(client.post("/v1/completions", content=body), 400, "invalid_json")
        assert "deeper than 64" in err["message"]
    unclosed = '{"model": "x", "prompt": ' + "[" * depth  # malformed and deep: still one 400
    _error(client.post("/v1/completions", content=unclosed), 400, "invalid_json")


def test_nesting_is_counted_outside_strings_only(served):
    from adapterhub_sdk.server.limits import json_depth

    client, _ = served
    assert json_depth(b'{"a": [1, {"b": "[[[[{{"}], "c": "\\"]]]"}') == 3
    assert json_depth(b'"' + b'\\"' * 1000 + b"[[") == 0  # an unterminated string runs to the end
    brackets = "[{" * 200
    r = client.post("/v1/completions", json=_completion(f"w3 {brackets}", user=brackets))
    assert r.status_code == 200, r.text
    nested: Any = 1
    for _ in range(60):
        nested = [nested]
    assert client.post("/v1/completions", json=_completion("w3", user_data=nested)).status_code == 200


HOSTILE = ["line\nbreak", "a" * 10_000, "../etc", "acme/../x", "acme/a/b", "tab\tname", "acme/caf\u00e9", "a b",
           "-lead", "acme/x--y", " acme/a", "", "/", "acme/"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_adapter_names_are_refused(served, dep, name):
    client, _ = served
    before = set(dep.adapters)
    err = _error(client.post("/v1/adapters", json={"spec": "acme/b@1.0.0", "name": name}), 400, "invalid_value",
                 "name")
    assert len(err["message"]) < 400
    _error(client.post("/v1/load_lora_adapter", json={"lora_name": name or "-", "lora_path": "acme/b@1.0.0"}), 400,
           "invalid_value", "lora_name")
    if name.strip("/") and "\n" not in name and "\t" not in name and " " not in name and "." not in name:
        _error(client.delete(f"/v1/adapters/{name}"), 400, "invalid_value", "name")
    assert set(dep.adapters) == before
    labels = set(re.findall(r'adapter="((?:[^"\\]|\\.)*)"', client.get("/metrics").text))
    assert not labels & {name, name.replace("\n", "\\n")} - {""}, labels  # no label of its own in the metrics


def test_served_names_that_are_fine(served, dep):
    client, _ = served
    for name in ("summ", "team/c-prod", "v1.2_x", "A" * 96):
        r = client.post("/v1/adapters", json={"spec": "acme/b@1.0.0", "name": name})
        assert r.status_code == 201, r.text
        assert client.delete(f"/v1/adapters/{name}").status_code == 200
    assert set(dep.adapters) == {"acme/a"}


def test_a_prompt_too_long_for_any_context_is_refused_before_tokenization(served, dep):
    from adapterhub_sdk.server.limits import CHARS_PER_TOKEN

    client, seen = served
    context = dep.model.config.max_position_embeddings
    long_text = "w3 " * (context * CHARS_PER_TOKEN // 3 + 1)
    seen.calls.clear()
    err = _error(client.post("/v1/completions", json=_completion(long_text)), 400, "context_length_exceeded",
                 "prompt")
    assert f"context is {context} tokens" in err["message"]
    err = _error(client.post("/v1/chat/completions", json={"model": BASE_ID, "max_tokens": 2, "messages": [
        {"role": "user", "content": long_text[: len(long_text) // 2]},
        {"role": "user", "content": long_text[: len(long_text) // 2 + 3]}]}), 400, "context_length_exceeded",
        "messages")
    _error(client.post("/v1/completions", json=_completion([long_text, "w3"])), 400, "context_length_exceeded",
           "prompt")
    assert seen.calls == []  # the tokenizer never saw them
    # under the bound but over the context: tokenized (off the worker), then refused with the token count
    err = _error(client.post("/v1/completions", json=_completion("w3 " * (context + 1))), 400,
                 "context_length_exceeded", "prompt")
    assert f"the prompt has {context + 1}" in err["message"]


def test_tokenization_runs_off_the_models_worker(served):
    client, seen = served
    seen.calls.clear()
    assert client.post("/v1/completions", json=_completion("w3 w4 w5")).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": BASE_ID, "max_tokens": 2, "messages": [
        {"role": "user", "content": "w6"}]}).status_code == 200
    threads = {name for name, _ in seen.calls}
    assert len(seen.calls) >= 2 and "adapterhub-batch-worker" not in threads, seen.calls

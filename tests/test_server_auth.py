"""Who may call the server: bearer keys on the API, adapter updates off unless opted into and
then only with the admin key, ``/metrics`` behind the key on request, configurations that
cannot be safe refused at start, and an OpenAPI document that says all of it.

Real uvicorn servers on loopback sockets serve a real deployment (the tiny Llama of
tests/test_server_api.py, from a real SQLite registry)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from conftest import ADAPTERHUB

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from test_row_isolation import _Serving  # noqa: E402 - the loopback server
from test_server_api import BASE_ID  # noqa: E402
from test_server_api import dep as tiny_dep  # noqa: E402, F401 - a fixture

API, ADMIN = "client-key", "admin-key"


@pytest.fixture(scope="module")
def dep(tiny_dep: Any) -> Any:  # noqa: F811 - the imported fixture, by name
    """test_server_api's deployment: a tiny Llama with a tokenizer, acme/a attached, acme/b published."""
    return tiny_dep


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _serve(dep: Any, **kw: Any) -> _Serving:
    from adapterhub_sdk.server import create_app

    return _Serving(create_app(dep, base_id=BASE_ID, batch_wait_ms=0, **kw))


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return err


CLIENT_CALLS = [("GET", "/v1/models", None), ("GET", f"/v1/models/{BASE_ID}", None), ("GET", "/v1/adapters", None),
                ("POST", "/v1/completions", {"model": BASE_ID, "prompt": "w3 w4", "max_tokens": 2}),
                ("POST", "/v1/chat/completions",
                 {"model": BASE_ID, "messages": [{"role": "user", "content": "w5"}], "max_tokens": 2}),
                ("GET", "/v1/no-such-route", None)]


def test_api_key_guards_every_v1_route_and_leaves_health_and_metrics_open(dep):
    with _serve(dep, api_key=API) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        for method, path, body in CLIENT_CALLS:
            for headers in ({}, bearer("wrong"), {"Authorization": API}, {"Authorization": "Basic " + API},
                            bearer(API + "x")):
                r = c.request(method, path, json=body, headers=headers)
                err = _error(r, 401, "invalid_api_key")
                assert r.headers["www-authenticate"] == "Bearer" and "Authorization: Bearer" in err["message"]
            ok = c.request(method, path, json=body, headers=bearer(API))
            assert ok.status_code == (404 if path == "/v1/no-such-route" else 200), (path, ok.text)
        for path in ("/health", "/metrics", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        assert 'status="401"' in c.get("/metrics").text  # refusals are counted


def test_metrics_auth_puts_metrics_behind_the_key(dep):
    with _serve(dep, api_key=API, metrics_auth=True) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        _error(c.get("/metrics"), 401, "invalid_api_key")
        assert "adapterhub_requests_total" in c.get("/metrics", headers=bearer(API)).text
        assert c.get("/health").status_code == 200


ADMIN_CALLS = [("POST", "/v1/adapters", {"spec": "acme/b@1.0.0"}), ("POST", "/v1/adapters/", {"spec": "acme/b@1.0.0"}),
               ("DELETE", "/v1/adapters/acme/a", None),
               ("POST", "/v1/load_lora_adapter", {"lora_name": "b2", "lora_path": "acme/b@1.0.0"}),
               ("POST", "/v1/unload_lora_adapter", {"lora_name": "acme/a"})]


@pytest.mark.parametrize("api_key", [None, API])
def test_adapter_updates_are_off_by_default(dep, api_key):
    before = set(dep.adapters)
    with _serve(dep, api_key=api_key, admin_key=ADMIN) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        for method, path, body in ADMIN_CALLS:
            for key in (API, ADMIN):  # not even the admin key opens them
                err = _error(c.request(method, path, json=body, headers=bearer(key)), 403,
                             "adapter_updates_disabled")
                assert "--allow-adapter-updates" in err["message"]
            if api_key is not None:  # without a key: 401 first, saying nothing about updates
                _error(c.request(method, path, json=body), 401, "invalid_api_key")
                _error(c.request(method, path, json=body, headers=bearer("wrong")), 401, "invalid_api_key")
    assert set(dep.adapters) == before


@pytest.mark.parametrize("api_key", [None, API])
def test_adapter_updates_need_the_admin_key(dep, api_key):
    with _serve(dep, api_key=api_key, admin_key=ADMIN, allow_adapter_updates=True) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        for method, path, body in ADMIN_CALLS:
            _error(c.request(method, path, json=body), 401, "invalid_api_key")
            _error(c.request(method, path, json=body, headers=bearer("wrong")), 401, "invalid_api_key")
            if api_key is not None:
                _error(c.request(method, path, json=body, headers=bearer(API)), 403, "admin_key_required")
        assert set(dep.adapters) == {"acme/a"}
        admin = bearer(ADMIN)
        assert c.post("/v1/adapters", json={"spec": "acme/b@1.0.0"}, headers=admin).status_code == 201
        assert c.delete("/v1/adapters/acme/b", headers=admin).status_code == 200
        # vLLM's endpoints: plain-text answers, a registry spec as lora_path
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "b2", "lora_path": "acme/b@1.0.0"}, headers=admin)
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'b2' added successfully.", r.text
        assert "b2" in {m["id"] for m in c.get("/v1/models", headers=admin).json()["data"]}
        err = _error(c.post("/v1/load_lora_adapter", json={"lora_name": "b2", "lora_path": "acme/b@1.0.0"},
                            headers=admin), 400, "invalid_value")
        assert "has already been loaded" in err["message"] and "load_inplace" in err["message"]
        assert err["param"] == "lora_name"
        for path in ("/nonexistent/peft-dir", "./no-such-peft-dir", "~/no-such-peft", "file:///nonexistent/x"):
            err = _error(c.post("/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": path}, headers=admin),
                         404, "not_found")
            assert err["param"] == "lora_path" and "no such adapter directory" in err["message"]
        r = c.post("/v1/unload_lora_adapter", json={"lora_name": "b2"}, headers=admin)
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'b2' removed successfully."
        _error(c.post("/v1/unload_lora_adapter", json={"lora_name": "b2"}, headers=admin), 404, "model_not_found")
        if api_key is None:  # no API key: the admin key is what guards updates; the rest is open
            assert c.get("/v1/models").status_code == 200
        else:  # the admin key opens the client routes too
            assert c.get("/v1/models", headers=admin).status_code == 200
    assert set(dep.adapters) == {"acme/a"}


@pytest.mark.parametrize(("kw", "message"), [
    ({"allow_adapter_updates": True}, "no admin key is set"),
    ({"allow_adapter_updates": True, "api_key": API}, "no admin key is set"),
    ({"api_key": "same", "admin_key": "same"}, "the admin key is the API key"),
    ({"metrics_auth": True}, "no API key is set"),
    ({"api_key": ""}, "api key must be non-empty"),
    ({"admin_key": " padded"}, "admin key must be non-empty"),
    ({"max_body_bytes": 0}, "max_body_bytes"),
])
def test_unsafe_configurations_are_refused(dep, kw, message):
    from adapterhub_sdk.server import ServerConfigError, create_app

    with pytest.raises(ServerConfigError, match=message):
        create_app(dep, base_id=BASE_ID, **kw)


def test_serve_refuses_updates_without_an_admin_key_before_loading(tmp_path):
    """The CLI's usage error (exit 2, one line) comes before the base loads: an empty
    directory as --base would fail later."""
    env_args = {"ADAPTERHUB_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    import os

    env = {**os.environ, **env_args, "ADAPTERHUB_HOME": str(tmp_path / "home"), "ADAPTERHUB_LOAD_PLUGINS": ""}
    env.pop("ADAPTERHUB_ADMIN_KEY", None)
    (tmp_path / "base").mkdir()
    for args in (["--allow-adapter-updates"], []):  # the flag, or its environment variable
        r = subprocess.run([ADAPTERHUB, "serve", "--base", str(tmp_path / "base"), "--port", "0", *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert "no admin key is set" in r.stderr and "--admin-key" in r.stderr, r.stderr


def test_openapi_declares_the_bearer_scheme_and_its_answers(dep):
    with _serve(dep, api_key=API, admin_key=ADMIN, allow_adapter_updates=True) as s:
        doc = httpx.get(s.url + "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path in ("/health", "/metrics"):
                assert "security" not in op and "401" not in op["responses"], path
                continue
            assert op["security"] == [{"bearer": []}], (path, method)
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
            admin = (method, path) in {("post", "/v1/adapters"), ("delete", "/v1/adapters/{name}"),
                                       ("post", "/v1/load_lora_adapter"), ("post", "/v1/unload_lora_adapter")}
            assert ("403" in op["responses"]) == admin, (path, method)

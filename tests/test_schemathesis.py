"""schemathesis against the server's own /openapi.json: for every operation, requests generated
from the document (valid ones and invalid ones, a bounded number of each) get no 5xx, only
documented statuses and content types, and bodies that match their documented schemas.

A real uvicorn server on a loopback socket serves test_server_api's tiny deployment with an
API key, adapter updates allowed and the admin key sent, so every operation is reachable."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_row_isolation import _Serving  # noqa: E402 - the loopback server
from test_server_api import BASE_ID  # noqa: E402
from test_server_api import dep as tiny_dep  # noqa: E402, F401 - a fixture

API, ADMIN = "client-key", "admin-key"
EXAMPLES = 10  # per operation and mode: 19 runs, well under a minute here
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served_url(tiny_dep: Any) -> Any:  # noqa: F811 - the imported fixture, by name
    from adapterhub_sdk.server import create_app

    app = create_app(tiny_dep, base_id=BASE_ID, batch_wait_ms=0, api_key=API, admin_key=ADMIN,
                     allow_adapter_updates=True, metrics_auth=True)
    with _Serving(app) as s:
        yield s.url


OPERATIONS = ["GET /v1/models", "GET /v1/models/{model}", "POST /v1/completions", "POST /v1/chat/completions",
              "GET /v1/adapters", "POST /v1/adapters", "DELETE /v1/adapters/{name}", "POST /v1/load_lora_adapter",
              "POST /v1/unload_lora_adapter", "GET /health", "GET /metrics"]


@pytest.fixture(scope="module")
def api_schema(served_url: str) -> Any:
    return schemathesis.openapi.from_url(served_url + "/openapi.json")


def test_the_operations_are_the_ones_tested_here(api_schema):
    found = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in api_schema.get_all_operations())}
    assert found == set(OPERATIONS)


# invalid requests for what takes input (a body or a path parameter); the rest has none to spoil
CASES = [pytest.param(label, mode, id=f"{label}-{mode.value}") for label in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or label.startswith("POST") or "{" in label]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_every_operation_answers_as_documented(api_schema, label, mode):
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS, timeout=60)

    check()

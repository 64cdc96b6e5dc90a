"""The vLLM resolver follows aliases: a name resolved from ``acme/sentiment@prod`` is reloaded
in place (``POST /v1/load_lora_adapter`` with ``load_inplace: true``) when the alias moves,
after every check the resolver makes; a version it refuses never reaches vLLM and the old one
keeps serving; moving the alias back is the rollback.

Without vLLM here, the server the follower talks to is a stand-in HTTP server on loopback
that answers ``/v1/load_lora_adapter`` by vLLM's rules (``OpenAIServingModels``: 400 for a
missing field, 400 ``has already been loaded`` for a name in use without ``load_inplace``,
the plain-text success line), recording each load. Whether a real vLLM then serves the new
weights is the README's GPU check."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import test_vllm_plugin as plugin_tests

# the plugin suite's fixtures (by name) and helpers
_vllm_isolated = plugin_tests._vllm_isolated
vmodels, vbase, vbase_other = plugin_tests.vmodels, plugin_tests.vbase, plugin_tests.vbase_other
vlora, vdora, vregistry = plugin_tests.vlora, plugin_tests.vdora, plugin_tests.vregistry
_pulled_version, _resolver, resolver_mod = plugin_tests._pulled_version, plugin_tests._resolver, plugin_tests.resolver_mod

NAME = "acme/sentiment@prod"


class StandInVllm:
    """``/v1/load_lora_adapter`` as vLLM's OpenAIServingModels answers it, on loopback."""

    def __init__(self, *, inplace: bool = True):
        self.inplace = inplace  # False: a vLLM older than load_inplace (the flag is ignored)
        self.loras: dict[str, str] = {}  # lora_name -> lora_path, what vLLM serves
        self.posts: list[tuple[dict[str, Any], str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((body, self.headers.get("Authorization")))
                status, text = outer.load(body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if status == 200 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def load(self, body: dict[str, Any]) -> tuple[int, str]:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return 400, json.dumps({"error": {"message": "Both 'lora_name' and 'lora_path' must be provided."}})
        if name in self.loras and not (self.inplace and body.get("load_inplace")):
            return 400, json.dumps({"error": {"message": f"The lora adapter '{name}' has already been loaded. If "
                                                         "you want to load the adapter in place, set 'load_inplace' "
                                                         "to True."}})
        self.loras[name] = path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def __enter__(self) -> StandInVllm:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.http.shutdown()
        self.http.server_close()


def _served_version(vllm: StandInVllm) -> str:
    manifest = json.loads(Path(vllm.loras[NAME], "adapterhub_manifest.json").read_text())
    return f"{manifest['name']}@{manifest['version']}"


def _resolve(res: Any, vbase: Path, vllm: StandInVllm) -> Any:
    """What vLLM does with a name it does not know: ask the resolver, then serve its answer."""
    got = asyncio.run(res.resolve_lora(str(vbase), NAME))
    assert got is not None, res.refusals
    vllm.loras[NAME] = got.lora_path
    return got


@pytest.fixture
def moving(vregistry, vlora, vdora, vbase, vbase_other):
    """acme/sentiment 1.0.0 and 1.1.0 (pinned to the served base), 1.2.0 pinned to other weights,
    1.3.0 a DoRA adapter; prod -> 1.0.0."""
    vregistry.publish(vlora, name="acme/sentiment", version="1.2.0", base=vbase_other)
    vregistry.publish(vdora, name="acme/sentiment", version="1.3.0", base=vbase)
    vregistry.alias("acme/sentiment@1.0.0", "prod")
    return vregistry


def test_an_alias_that_moves_is_reloaded_in_place_after_the_checks(moving, vbase, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="adapterhub_vllm")
    with StandInVllm() as vllm:
        res = _resolver(moving, tmp_path, follow_interval=3600, server_url=vllm.url, api_key="vllm-key")
        try:
            first = _resolve(res, vbase, vllm)
            assert _pulled_version(first) == "acme/sentiment@1.0.0"
            assert res.follower.state[NAME]["adapter"] == "acme/sentiment@1.0.0"
            res.follower.poll()  # not moved: nothing sent
            assert vllm.posts == []

            moving.alias("acme/sentiment@1.1.0", "prod")
            res.follower.poll()
            body, auth = vllm.posts[-1]
            assert body["lora_name"] == NAME and body["load_inplace"] is True and auth == "Bearer vllm-key"
            assert _served_version(vllm) == "acme/sentiment@1.1.0"
            assert res.follower.state[NAME]["digest"] == moving.show("acme/sentiment@1.1.0").digest
            assert "moved from acme/sentiment@1.0.0 to acme/sentiment@1.1.0" in caplog.text

            cache = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
            for version, why in (("1.2.0", "pinned to base"), ("1.3.0", "DoRA")):
                moving.alias(f"acme/sentiment@{version}", "prod")
                res.follower.poll()
                res.follower.poll()  # refused once, not retried until the alias moves again
                assert len(vllm.posts) == 1, vllm.posts  # vLLM never heard of it
                refusal = res.follower.state[NAME]["refusal"]
                assert refusal["version"] == version and why in refusal["reason"], refusal
                assert why in res.refusals[NAME]
                assert _served_version(vllm) == "acme/sentiment@1.1.0"  # the old one keeps serving
            assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == cache  # nothing pulled
            assert caplog.text.count("moved to 1.3.0, which is not served") == 1

            moving.alias("acme/sentiment@1.0.0", "prod")  # the rollback
            res.follower.poll()
            assert len(vllm.posts) == 2 and _served_version(vllm) == "acme/sentiment@1.0.0"
            assert vllm.posts[-1][0]["lora_path"] == first.lora_path  # the cached, re-verified copy
            assert res.follower.state[NAME]["refusal"] is None and NAME not in res.refusals
        finally:
            res.follower.stop()


def test_a_vllm_that_cannot_reload_in_place_leaves_the_old_version_with_the_reason(moving, vbase, tmp_path):
    with StandInVllm(inplace=False) as vllm:
        res = _resolver(moving, tmp_path, follow_interval=3600, server_url=vllm.url)
        try:
            _resolve(res, vbase, vllm)
            moving.alias("acme/sentiment@1.1.0", "prod")
            res.follower.poll()
            refusal = res.follower.state[NAME]["refusal"]
            assert refusal["version"] == "1.1.0" and "vLLM answered 400" in refusal["reason"]
            assert "has already been loaded" in refusal["reason"] and vllm.posts[-1][1] is None
            assert _served_version(vllm) == "acme/sentiment@1.0.0"
        finally:
            res.follower.stop()


def test_the_follower_thread_polls_by_itself_and_names_that_are_not_aliases_are_not_followed(
        moving, vbase, tmp_path):
    with StandInVllm() as vllm:
        res = _resolver(moving, tmp_path, follow_interval=0.1, server_url=vllm.url)
        try:
            asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@^1"))  # a range: not followed
            asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@1.0.0"))
            assert set(res.follower.state) == set()
            _resolve(res, vbase, vllm)
            moving.alias("acme/sentiment@1.1.0", "prod")
            deadline = time.monotonic() + 60
            while not vllm.posts:
                assert time.monotonic() < deadline, "the follower did not reload the moved alias"
                time.sleep(0.05)
            assert _served_version(vllm) == "acme/sentiment@1.1.0"
        finally:
            res.follower.stop()


def test_follow_settings_from_the_environment(vregistry, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", vregistry.url)
    monkeypatch.setenv("ADAPTERHUB_VLLM_FOLLOW_INTERVAL", "0.5")
    monkeypatch.setenv("ADAPTERHUB_VLLM_SERVER_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("VLLM_API_KEY", "k")
    res = resolver_mod.AdapterHubLoRAResolver.from_env()
    f = res.follower
    assert (f.interval, f.server_url, f.api_key) == (0.5, "http://127.0.0.1:9999", "k")
    monkeypatch.setenv("ADAPTERHUB_VLLM_FOLLOW_INTERVAL", "0")  # off
    assert resolver_mod.AdapterHubLoRAResolver.from_env().follower.interval == 0
    for bad in ("soon", "-1"):
        monkeypatch.setenv("ADAPTERHUB_VLLM_FOLLOW_INTERVAL", bad)
        with pytest.raises(ValueError, match="ADAPTERHUB_VLLM_FOLLOW_INTERVAL"):
            resolver_mod.AdapterHubLoRAResolver.from_env()

"""Aliases that move live: `adapterhub serve --adapter acme/sent@prod` follows the alias.

The end-to-end test runs the installed ``adapterhub`` command as a server subprocess on a
real SQLite registry and moves the alias with the real CLI (``adapterhub alias``): the
served version switches (``/v1/models`` says which, with its digest), outputs are PEFT's
for the version served, a move to a version that cannot be served (pinned to another base,
non-finite weights) leaves the old one serving with the refusal shown, and moving back is the
rollback. The streaming test serves in this process (a real uvicorn on loopback) with every
forward slowed by a hook, so that a switch happens while a stream is running: that stream
finishes on the version it started with. ``Registry.alias_target``, the poller's one query,
runs on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ADAPTERHUB, run_cli, save_base, save_lora

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server import _free_port, _save_tiny_llama, _train_tokenizer, one_thread  # noqa: E402

pytestmark = pytest.mark.slow

ADMIN_KEY = "follow-admin-key"
PROMPT = "the cat sat on the"
WAIT = 60.0  # the most seconds a switch may take here (poll interval 0.3 s + attach, on a loaded CI box)


def _nonfinite_copy(src: Path, out: Path) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    weights = out / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("follow")
    base = tmp / "tinyllama"
    tok = _train_tokenizer(base)
    _save_tiny_llama(base, len(tok), tok.eos_token_id, tok.pad_token_id)
    other = save_base(tmp / "other_shape", hidden=48)
    v1 = save_lora(base, tmp / "v1", seed=11)
    v2 = save_lora(base, tmp / "v2", seed=12)
    return {"base": base, "other": other, "v1": v1, "v2": v2, "tmp": tmp,
            "wrong": save_lora(other, tmp / "wrong", seed=13), "nan": _nonfinite_copy(v2, tmp / "nan")}


def _publish_all(reg: Any, m: dict[str, Path]) -> None:
    reg.publish(m["v1"], name="acme/sent", version="1.0.0", base=m["base"])
    reg.publish(m["v2"], name="acme/sent", version="1.1.0", base=m["base"])
    reg.publish(m["wrong"], name="acme/sent", version="1.2.0", base=m["other"])  # pinned to another base
    reg.publish(m["nan"], name="acme/sent", version="1.3.0", base=m["base"], allow_nonfinite=True)
    reg.alias("acme/sent@1.0.0", "prod")


def _peft_text(base: Path, adapter: Path, prompt: str, max_tokens: int) -> str:
    """Greedy text PEFT generates for ``prompt`` (up to the tokenizer's eos)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    with one_thread():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)  # as the server decodes


def _card(client: Any, name: str) -> dict[str, Any]:
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    return cards[name]


def _wait_for(client: Any, name: str, check: Any, what: str, log: Path | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        card = _card(client, name)
        if check(card):
            return card
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"{what} did not show within {WAIT:.0f} s: {json.dumps(card)[:800]}\n{tail}")
        time.sleep(0.1)


def _complete(client: Any, model: str, max_tokens: int = 8) -> str:
    r = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def test_serve_follows_an_alias_moved_with_the_cli(models, tmp_path):
    import adapterhub_sdk as ah

    registry_url = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS")}
    env.update(ADAPTERHUB_HOME=str(tmp_path / "home"), ADAPTERHUB_LOAD_PLUGINS="", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", ADAPTERHUB_ADMIN_KEY=ADMIN_KEY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", env["ADAPTERHUB_HOME"])
        with ah.Registry.open(registry_url) as reg:
            _publish_all(reg, models)
            digests = {v: reg.show(f"acme/sent@{v}").digest for v in ("1.0.0", "1.1.0")}
    want = {v: _peft_text(models["base"], models[d], PROMPT, 8) for v, d in (("1.0.0", "v1"), ("1.1.0", "v2"))}
    assert want["1.0.0"] != want["1.1.0"], "the two versions must answer differently for this test to mean anything"

    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ADAPTERHUB, "--registry", registry_url, "serve", "--base", str(models["base"]),
                                 "--adapter", "acme/sent@prod", "--follow-interval", "0.3", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)

    def alias(version: str) -> None:
        run_cli("--registry", registry_url, "alias", f"acme/sent@{version}", "prod", env=env, check=True)

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if c.get("/health").status_code == 200:
                        break
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
            card = _card(c, "acme/sent")
            assert {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"} <= set(card)
            assert card["version"] == "1.0.0" and card["digest"] == digests["1.0.0"] and card["parent"] == "tinyllama"
            assert card["alias"]["spec"] == "acme/sent@prod" and card["alias"]["refusal"] is None
            assert card["permission"][0]["object"] == "model_permission" and card["max_model_len"] == 128
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tinyllama", "acme/sent"]  # no slots
            assert _complete(c, "acme/sent") == want["1.0.0"]

            alias("1.1.0")
            card = _wait_for(c, "acme/sent", lambda k: k["version"] == "1.1.0", "the move to 1.1.0", log)
            assert card["digest"] == digests["1.1.0"] and card["adapter"]["ref"] == "acme/sent@1.1.0"
            assert _complete(c, "acme/sent") == want["1.1.0"]

            for version, why in (("1.2.0", "does not fit this base"), ("1.3.0", "NaN")):
                alias(version)
                card = _wait_for(c, "acme/sent", lambda k, v=version: (k["alias"]["refusal"] or {}).get("version") == v,
                                 f"the refusal of {version}", log)
                assert why in card["alias"]["refusal"]["reason"], card["alias"]["refusal"]
                assert card["version"] == "1.1.0" and card["digest"] == digests["1.1.0"]  # the old one serves
                assert _complete(c, "acme/sent") == want["1.1.0"]

            alias("1.0.0")  # the rollback
            card = _wait_for(c, "acme/sent", lambda k: k["version"] == "1.0.0", "the rollback to 1.0.0", log)
            assert card["alias"]["refusal"] is None and card["digest"] == digests["1.0.0"]
            assert _complete(c, "acme/sent") == want["1.0.0"]
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tinyllama", "acme/sent"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert "moved from 1.0.0 to 1.1.0" in text and "moved from 1.1.0 to 1.0.0" in text, text[-3000:]
    assert "1.2.0, which is not served" in text, text[-3000:]


def _sse_texts(lines: Any) -> tuple[str, bool]:
    """The text of a completion stream and whether it ended with [DONE]."""
    text, done = "", False
    for line in lines:
        if not line:
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        assert "error" not in event, event
        text += event["choices"][0]["text"] or ""
    return text, done


def test_a_stream_running_through_a_switch_finishes_on_its_version(models, tmp_path):
    from test_row_isolation import _Serving

    import adapterhub_sdk as ah
    from adapterhub_sdk.server import create_app

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs")
    try:
        _publish_all(reg, models)
        with one_thread():
            local = ah.Deployment(models["base"], registry=reg)
            local.attach("acme/sent@1.0.0", name="old")
            local.attach("acme/sent@1.1.0", name="new")
            want_old = local.generate([PROMPT], "old", max_new_tokens=100)[0]["text"]
            want_new = local.generate([PROMPT], "new", max_new_tokens=100)[0]["text"]
        assert want_old != want_new
        dep = ah.Deployment(models["base"], registry=reg)
        dep.attach("acme/sent@prod", name="acme/sent#0")

        forwards = [0]

        def slow(*_: Any) -> None:  # each forward takes a while: the stream outlives the switch
            forwards[0] += 1
            time.sleep(0.03)

        app = create_app(dep, base_id="tinyllama", follow_interval=0.1)
        app.state.server.follower.adopt("acme/sent", "acme/sent@prod", dep.adapters["acme/sent#0"])
        hook = dep.model.register_forward_hook(slow)
        try:
            with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120) as c:
                body = {"model": "acme/sent", "prompt": PROMPT, "max_tokens": 100, "temperature": 0, "stream": True}
                with c.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    lines = r.iter_lines()
                    first = next(line for line in lines if line)  # running on 1.0.0 now
                    reg.alias("acme/sent@1.1.0", "prod")
                    at_move = forwards[0]
                    card = _wait_for(c, "acme/sent", lambda k: k["version"] == "1.1.0", "the move to 1.1.0")
                    rest, done = _sse_texts(lines)
                assert done and card["digest"] == reg.show("acme/sent@1.1.0").digest
                assert forwards[0] > at_move, "the stream had ended when the alias moved: nothing was tested"
                text = json.loads(first[len("data: "):])["choices"][0]["text"] + rest
                assert text == want_old
                assert _complete(c, "acme/sent", 100) == want_new  # new requests: the new version
                # the old slot goes once nothing holds it; the public name never showed it
                deadline = time.monotonic() + WAIT
                while "acme/sent#0" in dep.adapters:
                    assert time.monotonic() < deadline, list(dep.adapters)
                    time.sleep(0.05)
                assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tinyllama", "acme/sent"]
        finally:
            hook.remove()
    finally:
        reg.close()


def test_alias_target_is_one_query_on_both_backends(registry, models):
    from adapterhub_sdk.errors import InvalidVersionError, NotFoundError

    reg = registry
    reg.publish(models["v1"], name="acme/sent", version="1.0.0", base=models["base"])
    reg.publish(models["v2"], name="acme/sent", version="1.1.0", base=models["base"])
    reg.alias("acme/sent@1.0.0", "prod")
    assert reg.alias_target("ACME/Sent@prod") == ("acme/sent", "1.0.0", reg.show("acme/sent@1.0.0").digest, False)
    reg.alias("acme/sent@1.1.0", "prod")
    reg.yank("acme/sent@1.1.0")
    assert reg.alias_target("acme/sent@prod")[1:] == ("1.1.0", reg.show("acme/sent@1.1.0").digest, True)
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        reg.alias_target("acme/sent@staging")
    with pytest.raises(InvalidVersionError):
        reg.alias_target("acme/sent@1.0.0")


def test_aliases_loaded_over_http_are_followed_and_replaced_or_unloaded_cleanly(models, tmp_path):
    from test_row_isolation import _Serving

    import adapterhub_sdk as ah
    from adapterhub_sdk.server import create_app

    with ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs") as reg:
        _publish_all(reg, models)
        dep = ah.Deployment(models["base"], registry=reg)
        app = create_app(dep, base_id="tinyllama", follow_interval=0.1, allow_adapter_updates=True,
                         admin_key=ADMIN_KEY)
        with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120,
                                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            r = c.post("/v1/adapters", json={"spec": "acme/sent@prod"})
            assert r.status_code == 201 and r.json()["id"] == "acme/sent" and r.json()["ref"] == "acme/sent@1.0.0"
            r = c.post("/v1/load_lora_adapter", json={"lora_name": "s2", "lora_path": "acme/sent@prod"})
            assert r.status_code == 200, r.text
            cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            assert set(cards) == {"tinyllama", "acme/sent", "s2"}
            assert cards["s2"]["alias"]["spec"] == "acme/sent@prod" and cards["s2"]["version"] == "1.0.0"
            assert {a["id"] for a in c.get("/v1/adapters").json()["data"]} == {"acme/sent", "s2"}
            assert all("#" in n for n in dep.adapters)  # both served from internal slots

            reg.alias("acme/sent@1.1.0", "prod")
            for name in ("acme/sent", "s2"):
                _wait_for(c, name, lambda k: k["version"] == "1.1.0", f"{name} following to 1.1.0")

            r = c.post("/v1/adapters", json={"spec": "acme/sent@1.0.0"})  # a fixed version replaces it
            assert r.status_code == 200 and r.json()["replaced"] is True
            card = _card(c, "acme/sent")
            assert card["version"] == "1.0.0" and card["alias"] is None
            assert c.post("/v1/unload_lora_adapter", json={"lora_name": "s2"}).status_code == 200
            assert set(cards) - {m["id"] for m in c.get("/v1/models").json()["data"]} == {"s2"}
            reg.alias("acme/sent@1.0.0", "prod")  # no longer followed by anything
            deadline = time.monotonic() + WAIT
            while set(dep.adapters) != {"acme/sent"}:  # the followed slots are detached once idle
                assert time.monotonic() < deadline, list(dep.adapters)
                time.sleep(0.05)
            assert _card(c, "acme/sent")["adapter"]["ref"] == "acme/sent@1.0.0"


def test_a_move_to_a_version_the_signing_policy_refuses_keeps_the_old_one(models, tmp_path):
    from test_row_isolation import _Serving

    import adapterhub_sdk as ah
    from adapterhub_sdk.server import create_app
    from adapterhub_sdk.signing import generate_key

    with ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs") as reg:
        _publish_all(reg, models)
        reg.trust_key("alice", generate_key("alice").public_pem)
        reg.sign("acme/sent@1.0.0", key="alice")  # 1.1.0 stays unsigned
        dep = ah.Deployment(models["base"], registry=reg, require_signed="alice")
        dep.attach("acme/sent@prod", name="acme/sent#0")
        app = create_app(dep, base_id="tinyllama", follow_interval=0.1)
        app.state.server.follower.adopt("acme/sent", "acme/sent@prod", dep.adapters["acme/sent#0"])
        with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120) as c:
            reg.alias("acme/sent@1.1.0", "prod")
            card = _wait_for(c, "acme/sent", lambda k: k["alias"]["refusal"] is not None, "the refusal of 1.1.0")
            refusal = card["alias"]["refusal"]
            assert refusal["version"] == "1.1.0" and "requires a signature by alice" in refusal["reason"], refusal
            assert card["version"] == "1.0.0" and set(dep.adapters) == {"acme/sent#0"}
            reg.sign("acme/sent@1.1.0", key="alice")
            reg.alias("acme/sent@1.0.0", "prod")  # back where it serves: the refusal is cleared
            _wait_for(c, "acme/sent", lambda k: k["alias"]["refusal"] is None, "the refusal cleared")
            reg.alias("acme/sent@1.1.0", "prod")  # signed now: served
            _wait_for(c, "acme/sent", lambda k: k["version"] == "1.1.0", "the move to the signed 1.1.0")

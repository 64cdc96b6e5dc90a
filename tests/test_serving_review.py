"""Adversarial review of the serving changes (issue 12): each test here failed before the fix
named in its doc. Over HTTP on real uvicorn servers on loopback (and one real ``adapterhub
serve`` subprocess), with test_continuous's small Llama, real PEFT-saved LoRA adapters and a
real SQLite registry; outputs are compared with PEFT's greedy tokens or with the server's own
temperature-0 answer, never timed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah

from conftest import ADAPTERHUB, save_lora

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from test_continuous import prompt, serving  # noqa: E402
from test_row_isolation import _save_base, _Serving  # noqa: E402

ADMIN = "review-admin"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("serving_review")
    base = _save_base(d / "base", context=512)
    dirs = {"v1": save_lora(base, d / "v1", seed=3), "v2": save_lora(base, d / "v2", seed=5)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}")
        reg.publish(dirs["v1"], name="acme/sent", version="1.0.0", base=base)
        reg.publish(dirs["v2"], name="acme/sent", version="1.1.0", base=base)
        reg.alias("acme/sent@1.0.0", "prod")
        yield {"base": base, "dirs": dirs, "registry": reg, "tmp": d}
        reg.close()


def _text(client: httpx.Client, model: str, **kw: Any) -> httpx.Response:
    return client.post("/v1/completions", json={"model": model, "prompt": prompt(1), "max_tokens": 12, **kw})


def test_a_tiny_temperature_or_top_p_is_the_greedy_answer_not_a_500(world):
    """temperature and top_p are accepted anywhere in (0, 2] and (0, 1]; one below float32's
    smallest positive number (1e-300) underflowed in the float32 logits: temperature made every
    logit NaN, top_p kept no token, and a valid request was a 500 'sampling failed'. Fixed in
    generation._sample: such a temperature is the greedy limit (the best logits alone), and
    top_p always keeps the most likely token (as transformers' min_tokens_to_keep=1)."""
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("acme/sent@1.0.0", name="v1")
    with serving(dep) as s, httpx.Client(base_url=s.url, timeout=120) as c:
        greedy = _text(c, "v1", temperature=0)
        assert greedy.status_code == 200, greedy.text
        want = greedy.json()["choices"][0]["text"]
        for kw in ({"temperature": 1e-300, "seed": 1}, {"temperature": 1.0, "top_p": 1e-300, "seed": 1},
                   {"temperature": 1e-300, "top_p": 1e-300}):
            r = _text(c, "v1", **kw)
            assert r.status_code == 200, (kw, r.text)
            assert r.json()["choices"][0]["text"] == want, kw
    # the same step serves Deployment.generate
    tiny = dep.generate([prompt(1)], "v1", max_new_tokens=12, temperature=1e-300, top_p=1e-300, seed=1)
    assert tiny[0]["text"] == dep.generate([prompt(1)], "v1", max_new_tokens=12, temperature=0)[0]["text"] == want


def test_an_internal_slot_name_is_no_model_a_client_can_address(world):
    """A followed alias is attached under an internal slot ('acme/sent#1'); the slot name was
    answered as a model of its own (200, echoed as the response's model, a metrics label per
    slot), though no client is meant to see or pick one. Fixed in AliasFollower.slot_of: a name
    hidden from clients (a followed slot, retiring or unloading) resolves to nothing: 404."""
    from adapterhub_sdk.server import create_app

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    app = create_app(dep, base_id="tiny", follow_interval=30, allow_adapter_updates=True, admin_key=ADMIN)
    with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120,
                                          headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        r = c.post("/v1/adapters", json={"spec": "acme/sent@prod"})
        assert r.status_code == 201, r.text
        (slot,) = list(dep.adapters)
        assert "#" in slot
        assert _text(c, "acme/sent", temperature=0).status_code == 200
        r = _text(c, slot, temperature=0)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found" and "#" not in r.json()["error"]["message"].split(
            "serves:")[1]
        assert all("#" not in m["id"] for m in c.get("/v1/models").json()["data"])


def _peft_text(base: Path, adapter: Path, max_tokens: int) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    ids = torch.tensor([prompt(1)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return str(tok.decode(new, skip_special_tokens=True))


@pytest.mark.slow
def test_serve_with_an_alias_then_a_fixed_version_of_the_same_name_serves_the_one_it_says(world, tmp_path):
    """``serve --adapter acme/sent@prod --adapter acme/sent@1.1.0``: both serve as 'acme/sent'.
    The server printed 'attached acme/sent (acme/sent@1.1.0, ...)' but answered with 1.0.0 (the
    alias's version, whose follow was adopted after the fixed one was attached), the fixed
    version attached and hidden. Fixed in serve: a later --adapter for the same name replaces
    the earlier one whichever kind each is (as two fixed ones did, and as POST /v1/adapters
    does), so what it prints is what it serves: PEFT's tokens for 1.1.0."""
    from test_server import _free_port

    base = world["base"]
    want = _peft_text(base, world["dirs"]["v2"], 12)
    assert want != _peft_text(base, world["dirs"]["v1"], 12)
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS")}
    env.update(ADAPTERHUB_HOME=str(world["tmp"] / "home"), ADAPTERHUB_LOAD_PLUGINS="", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    port = _free_port()
    log = tmp_path / "server.log"
    for order in (("acme/sent@prod", "acme/sent@1.1.0"), ("acme/sent@1.0.0", "acme/sent@prod")):
        with log.open("wb") as out:
            proc = subprocess.Popen([ADAPTERHUB, "--registry", f"sqlite:///{world['tmp'] / 'registry.db'}", "serve",
                                     "--base", str(base), "--adapter", order[0], "--adapter", order[1],
                                     "--follow-interval", "30", "--port", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
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
                cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
                r = _text(c, "acme/sent", temperature=0)
                health = c.get("/health").json()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        text = log.read_text(errors="replace")
        if order[1] == "acme/sent@1.1.0":  # the fixed version last: it serves, not followed
            assert "attached acme/sent (acme/sent@1.1.0" in text, text[-2000:]
            assert cards["acme/sent"]["version"] == "1.1.0" and cards["acme/sent"]["alias"] is None, cards
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == want, (r.text, want)
        else:  # the alias last: it is followed, the fixed one is gone
            assert cards["acme/sent"]["version"] == "1.0.0" and cards["acme/sent"]["alias"] is not None, cards
        assert len(cards) == 2 and health["adapters"] == 1, (cards, health)
        assert "with 1 adapter(s)" in text, text[-2000:]  # the shadowed one is not attached beside it


def test_two_loads_of_one_new_name_at_once_are_one_load_and_one_400(world):
    """vLLM's load_lora_adapter refuses a name already loaded (400 unless load_inplace). Two
    loads of one new name sent together both passed that check before either had attached, so
    both answered 'added successfully' and the later silently replaced the earlier: its caller
    was told its adapter serves the name while another one did. Fixed in the route: a name
    being loaded counts as loaded until its load has answered, so one of the two is the 400
    and the name serves the digest the other one's answer gave."""
    import asyncio

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with serving(dep, allow_adapter_updates=True, admin_key=ADMIN) as s:
        for attempt in range(3):
            name = f"twice{attempt}"

            async def both(name: str = name) -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=auth) as c:
                    return list(await asyncio.gather(*[
                        c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(world["dirs"][v])})
                        for v in ("v1", "v2")]))

            answers = asyncio.run(both())
            assert sorted(r.status_code for r in answers) == [200, 400], [(r.status_code, r.text) for r in answers]
            (ok,) = [r for r in answers if r.status_code == 200]
            (refused,) = [r for r in answers if r.status_code == 400]
            assert "has already been loaded" in refused.json()["error"]["message"]
            assert dep.adapters[name].digest == ok.headers["X-AdapterHub-Digest"]


def test_a_pulled_directory_keeps_its_pin_and_its_signed_manifest(base_dir, lora_dir, tmp_path):
    """Since pack leaves a pull's adapterhub_manifest.json out of the package files, the
    directory attach no longer found it: a pulled directory was served unpinned (verdict
    structural), its files unchecked against the manifest, so a tampered pulled directory was
    served. Fixed in attach_directory: the manifest is read from the directory; under a
    signing policy it must be the one the trusted signature lists, like every file loaded."""
    import json

    from adapterhub_sdk.deploy_dir import _manifest_bytes, _same_as_signed, attach_directory
    from adapterhub_sdk.errors import IntegrityError
    from adapterhub_sdk.package import pack
    from adapterhub_sdk.signing import generate_key

    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs") as reg:
        reg.publish(lora_dir, name="acme/s", version="1.0.0", base=base_dir)
        dep = ah.Deployment(base_dir, registry=reg)
        pulled = reg.pull("acme/s@1.0.0", tmp_path / "pulled")
        attached = attach_directory(dep, pulled, name="s")
        assert attached.verdict == "exact" and attached.pinned and attached.ref == "acme/s@1.0.0"
        config = json.loads((pulled / "adapter_config.json").read_text())
        (pulled / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 99}))
        with pytest.raises(IntegrityError, match="does not match the sha256"):
            attach_directory(dep, pulled, name="t")
        assert set(dep.adapters) == {"s"}

        reg.trust_key("alice", generate_key("alice").public_pem)
        reg.sign("acme/s@1.0.0", key="alice")
        signed = reg.pull("acme/s@1.0.0", tmp_path / "signed")
        checked = reg.check_signed_directory(signed, "alice")
        with pack(signed) as pkg:
            _same_as_signed(pkg, checked, str(signed), _manifest_bytes(signed))  # unchanged: accepted
            manifest = json.loads((signed / "adapterhub_manifest.json").read_text())
            forged = json.dumps({**manifest, "version": "9.9.9"}).encode()  # swapped after the check
            with pytest.raises(IntegrityError, match="changed while it was being loaded"):
                _same_as_signed(pkg, checked, str(signed), forged)


def test_an_unload_sent_while_a_replace_is_attaching_is_not_undone_by_it(world):
    """A row runs on 'p'; a replace of 'p' (load_inplace) attaches its new version under a new
    internal slot (held here inside its attach, on the worker thread, until the unload has
    answered); an unload of 'p' sent meanwhile answers at once. The replace, when it ended,
    served its new version as 'p' again: the later call answered success and was silently
    undone. Fixed in routes._attach: of two calls on one name the later wins; what the replace
    attached is hidden at once and detached, 'p' stays unloaded, and the running row, bound to
    the old version at receipt, finishes on it."""
    import asyncio
    import threading

    from test_continuous_calls import _Forwards, _stream_words

    from adapterhub_sdk.server import create_app

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("acme/sent@1.0.0", name="p")
    old = dep.generate([prompt(1)], "p", max_new_tokens=256, temperature=0)[0]["text"].split()
    entered, release = threading.Event(), threading.Event()
    prepare = dep._prepare

    def held_prepare(*args: Any) -> Any:  # the real preparation, once the unload has answered
        entered.set()
        release.wait(120)
        return prepare(*args)

    dep._prepare = held_prepare  # type: ignore[method-assign]
    app = create_app(dep, base_id="tiny", allow_adapter_updates=True, admin_key=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    body = {"model": "p", "prompt": prompt(1), "max_tokens": 256, "temperature": 0}
    with _Serving(app) as s, _Forwards(dep):
        async def main() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=auth) as c:
                seen = {"chunks": 0}
                stream = asyncio.create_task(_stream_words(c, body, seen))
                deadline = time.monotonic() + 60
                while seen["chunks"] < 3:
                    assert time.monotonic() < deadline and not stream.done(), seen
                    await asyncio.sleep(0.005)
                replace = asyncio.create_task(c.post("/v1/load_lora_adapter", json={
                    "lora_name": "p", "lora_path": str(world["dirs"]["v2"]), "load_inplace": True}))
                try:
                    while not entered.is_set():  # the replace is attaching its new version
                        assert time.monotonic() < deadline, "the replace never reached its attach"
                        assert not replace.done(), replace.result().text
                        await asyncio.sleep(0.005)
                    unload = await c.post("/v1/unload_lora_adapter", json={"lora_name": "p"})
                    assert not replace.done()  # answered while the replace was still attaching
                finally:
                    release.set()
                return {"unload": unload, "replace": await asyncio.wait_for(replace, 60),
                        "words": await asyncio.wait_for(stream, 120)}

        out = asyncio.run(main())
        assert out["unload"].status_code == 200, out
        replaced = out["replace"]  # it did not take effect, and says so (it answered "added successfully")
        assert replaced.status_code == 409 and replaced.json()["error"]["code"] == "superseded", replaced.text
        assert out["words"] == old  # the row finished on the version it was received for
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = _text(c, "p", temperature=0)
            assert r.status_code == 404, r.text
            assert "p" not in {m["id"] for m in c.get("/v1/models").json()["data"]}
        deadline = time.monotonic() + 60
        while any(n == "p" or n.startswith("p#") for n in dep.adapters):  # both versions' tensors freed
            assert time.monotonic() < deadline, list(dep.adapters)
            time.sleep(0.02)


def test_an_alias_move_whose_attach_failed_for_the_moment_is_tried_again(world):
    """The follower marked every failed attach of a moved alias as tried, so a failure of the
    moment (an I/O error reading the blobs, memory, the database) left the old version serving
    until the alias moved again, though nothing was wrong with the new one. Fixed in
    AliasFollower._check: only a refusal (incompatible, signing policy, non-finite, integrity:
    an AdapterHubError other than RegistryError) waits for the next move; any other failure
    is shown in /v1/models and tried again at the next poll."""
    from adapterhub_sdk.server import create_app

    reg = world["registry"]
    reg.alias("acme/sent@1.0.0", "prod")
    dep = ah.Deployment(str(world["base"]), registry=reg)
    real, failures = dep.attach, []

    def flaky(spec: str, **kw: Any) -> Any:
        if spec.endswith("@1.1.0") and not failures:
            failures.append(spec)
            raise OSError("Resource temporarily unavailable")
        return real(spec, **kw)

    dep.attach = flaky  # type: ignore[method-assign]
    app = create_app(dep, base_id="tiny", follow_interval=0.1, allow_adapter_updates=True, admin_key=ADMIN)
    with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=60,
                                          headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        assert c.post("/v1/adapters", json={"spec": "acme/sent@prod"}).status_code == 201
        try:
            reg.alias("acme/sent@1.1.0", "prod")
            deadline = time.monotonic() + 30
            while True:
                card = {m["id"]: m for m in c.get("/v1/models").json()["data"]}["acme/sent"]
                if card["version"] == "1.1.0":
                    break
                assert time.monotonic() < deadline, card
                time.sleep(0.05)
            assert failures and card["alias"]["refusal"] is None, card
        finally:
            reg.alias("acme/sent@1.0.0", "prod")

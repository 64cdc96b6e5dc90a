"""Control calls on the continuous scheduler (issue 12): attach, replace, unload and alias
switches run at a decode step boundary while rows keep running; a call on a name that rows
in flight use waits for them, so they finish on the version they started with.

Over HTTP on a real uvicorn server on loopback, with test_continuous's small Llama and its
real PEFT-saved LoRA adapters in a real SQLite registry; what is compared is decode steps
(forwards counted by a hook) and tokens, never wall time."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from test_continuous import _gather, _tokens, prompt, same_tokens, serving
from test_row_isolation import _save_base, _Serving

import adapterhub_sdk as ah

from conftest import save_lora

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """test_continuous's base and adapters, in a registry of this module's own."""
    d = tmp_path_factory.mktemp("continuous_calls")
    base = _save_base(d / "base", context=512)
    dirs = {"good": save_lora(base, d / "good", seed=3), "other": save_lora(base, d / "other", seed=5, r=8),
            "rs": save_lora(base, d / "rs", seed=7, use_rslora=True, targets=("k_proj", "o_proj"))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}")
        for name, path in dirs.items():
            reg.publish(path, name=f"acme/{name}", version="1.0.0", base=base)
        yield {"base": base, "dirs": dirs, "registry": reg}
        reg.close()

ADMIN = "continuous-admin"


def _admin_serving(dep: ah.Deployment, **kw: Any) -> _Serving:
    return serving(dep, allow_adapter_updates=True, admin_key=ADMIN, **kw)


class _Forwards:
    """Counts the base's forwards (one per decode step) and makes each take a little longer,
    so that a 256-token stream outlives the HTTP round trips of the control calls beside it
    (what is compared is token counts, never wall time)."""

    def __init__(self, dep: ah.Deployment):
        import time

        self.n = 0

        def hook(*_: Any) -> None:
            self.n += 1
            time.sleep(0.002)

        self.handle = dep.model.register_forward_hook(hook)

    def __enter__(self) -> _Forwards:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


async def _stream_words(client: httpx.AsyncClient, body: dict[str, Any], seen: dict[str, Any]) -> list[str]:
    """Stream ``body``; ``seen["chunks"]`` counts text chunks as they arrive. Returns its words
    (word-level tokenizer: one word per token)."""
    text = ""
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                for c in event["choices"]:
                    text += c["text"]
                    seen["chunks"] += 1
    return text.split()


def _loaded_gauge(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("adapterhub_adapters_loaded "):
            return float(line.split()[1])
    raise AssertionError("adapterhub_adapters_loaded missing from /metrics")


def test_control_calls_run_between_steps_while_long_streams_run(world):
    """While two 256-token streams run (on 'good' and 'other'): attaching a new name answers
    within a few decode steps; unloading 'other' answers at once too, the name gone while its
    version stays attached for the stream on it; replacing 'good' in place attaches the new
    version under an internal slot, the stream keeping the old one (bound at receipt). Both
    streams finish with the tokens each gives alone; afterwards 'good' serves the new version,
    the old one and 'other' are detached, and /metrics counts what clients see."""
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("acme/good", name="good")
    dep.attach("acme/other", name="other")
    bodies = {m: {"model": m, "prompt": prompt(1), "max_tokens": 256, "temperature": 0} for m in ("good", "other")}
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with _admin_serving(dep) as s, _Forwards(dep) as fw:
        solo = {m: _gather(s.url, [{**b, "logprobs": 2}])[0]["choices"][0] for m, b in bodies.items()}
        assert all(len(_tokens(c)) == 256 for c in solo.values())
        seen = {m: {"chunks": 0} for m in bodies}
        marks: dict[str, Any] = {}

        async def main() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=auth) as client:
                streams = {m: asyncio.create_task(_stream_words(client, b, seen[m])) for m, b in bodies.items()}
                while min(v["chunks"] for v in seen.values()) < 3:
                    await asyncio.sleep(0.005)
                marks["sent"] = fw.n
                r = await client.post("/v1/adapters", json={"spec": "acme/rs", "name": "rs2"})
                assert r.status_code == 201, r.text
                marks["attached"] = fw.n
                marks["chunks_at_attach"] = {m: v["chunks"] for m, v in seen.items()}
                replace = asyncio.create_task(client.post("/v1/load_lora_adapter", json={
                    "lora_name": "good", "lora_path": "acme/rs", "load_inplace": True}))
                unload = await client.post("/v1/unload_lora_adapter", json={"lora_name": "other"})
                marks["unloaded"] = fw.n  # answered at once, as vLLM does: the stream on it runs on
                marks["models_at_unload"] = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
                marks["other_at_unload"] = (await client.post("/v1/completions", json={
                    **bodies["other"], "max_tokens": 2})).status_code
                marks["attached_at_unload"] = sorted(dep.adapters)
                words = {m: await t for m, t in streams.items()}
                return {"words": words, "replace": await replace, "unload": unload}

        out = asyncio.run(main())
        after_good = _gather(s.url, [{**bodies["good"], "max_tokens": 12, "logprobs": 2}])[0]["choices"][0]
        rs2 = _gather(s.url, [{**bodies["good"], "model": "rs2", "max_tokens": 12, "logprobs": 2}])[0]["choices"][0]
        gone = httpx.post(s.url + "/v1/completions", json={**bodies["other"], "max_tokens": 2}, timeout=60)
        gauge = _loaded_gauge(httpx.Client(base_url=s.url, headers=auth))
    # the attach answered a few steps after it was sent, long before the streams ended
    assert marks["attached"] - marks["sent"] < 64, marks
    assert max(marks["chunks_at_attach"].values()) < 200, marks
    for m in bodies:  # the rows in flight finished on the version they started with, untouched
        assert len(out["words"][m]) == 256
        same_tokens(out["words"][m], solo[m])
    assert out["replace"].status_code == 200, out["replace"].text
    assert out["unload"].status_code == 200, out["unload"].text
    # the unload answered while 'other' still ran: the name was gone, its version still attached
    assert marks["unloaded"] - marks["sent"] < 128, marks
    assert marks["models_at_unload"] == {"tiny", "good", "rs2"} and marks["other_at_unload"] == 404, marks
    assert "other" in marks["attached_at_unload"], marks
    same_tokens(_tokens(after_good), rs2)  # 'good' is acme/rs now
    assert gone.status_code == 404
    assert len(dep.adapters) == 2 and {"good", "other"}.isdisjoint(dep.adapters) and gauge == 2, list(dep.adapters)


def test_an_alias_moves_while_a_long_stream_runs_and_metrics_count_public_names(world):
    """A followed alias moved in the registry switches within a few decode steps of the poll
    while a 256-token stream runs on the old version; that stream finishes with the old
    version's tokens, new requests get the new one, and adapterhub_adapters_loaded counts the
    public name once while two internal slots are attached."""
    reg = world["registry"]
    reg.publish(world["dirs"]["good"], name="acme/flw", version="1.0.0", base=world["base"])
    reg.publish(world["dirs"]["other"], name="acme/flw", version="1.1.0", base=world["base"])
    reg.alias("acme/flw@1.0.0", "prod")
    dep = ah.Deployment(str(world["base"]), registry=reg)
    dep.attach("acme/good", name="good")
    dep.attach("acme/other", name="other")
    body = {"model": "acme/flw", "prompt": prompt(1), "max_tokens": 256, "temperature": 0}
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with _admin_serving(dep, follow_interval=0.05) as s, _Forwards(dep) as fw, \
            httpx.Client(base_url=s.url, timeout=120, headers=auth) as c:
        solo_old = _gather(s.url, [{**body, "model": "good", "logprobs": 2}])[0]["choices"][0]
        solo_new = _gather(s.url, [{**body, "model": "other", "max_tokens": 12, "logprobs": 2}])[0]["choices"][0]
        r = c.post("/v1/adapters", json={"spec": "acme/flw@prod"})
        assert r.status_code == 201 and r.json()["ref"] == "acme/flw@1.0.0", r.text
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "good"}).status_code == 200
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "other"}).status_code == 200
        seen = {"chunks": 0}
        marks: dict[str, Any] = {}

        async def main() -> list[str]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=auth) as client:
                stream = asyncio.create_task(_stream_words(client, body, seen))
                while seen["chunks"] < 3:
                    await asyncio.sleep(0.005)
                marks["moved"] = fw.n
                await asyncio.to_thread(reg.alias, "acme/flw@1.1.0", "prod")
                while True:
                    cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
                    if cards["acme/flw"]["version"] == "1.1.0":
                        break
                    await asyncio.sleep(0.01)
                marks["switched"] = fw.n
                marks["chunks"] = seen["chunks"]
                marks["slots"] = sorted(dep.adapters)
                marks["gauge"] = await asyncio.to_thread(_loaded_gauge, c)
                return await stream

        words = asyncio.run(main())
        after = c.post("/v1/completions", json={**body, "max_tokens": 12, "logprobs": 2}).json()["choices"][0]
    assert marks["switched"] - marks["moved"] < 128 and marks["chunks"] < 200, marks  # well before its end
    assert len(marks["slots"]) == 2 and all("#" in n for n in marks["slots"]) and marks["gauge"] == 1, marks
    assert len(words) == 256
    same_tokens(words, solo_old)  # the stream finished on 1.0.0
    same_tokens(_tokens(after), solo_new)  # new requests: 1.1.0


def test_a_call_on_a_name_in_use_waits_for_its_rows_and_jobs_behind_it_wait_for_the_call(world):
    """On the worker directly: a replace of 'good' declared while a long 'good' row runs waits
    for that row; a 'good' job queued after the call runs on the new version; an 'other' job
    queued after it runs at once, beside the long row; an attach of a new name runs at once."""
    from concurrent.futures import wait

    from adapterhub_sdk.server.continuous import ContinuousWorker
    from adapterhub_sdk.server.worker import DoneEvent, ErrorEvent, Job, Prompt, StartEvent

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("acme/good", name="good")
    dep.attach("acme/other", name="other")
    dep.attach("acme/rs", name="rs")
    want = {m: dep.generate([prompt(2)], m, max_new_tokens=8)[0]["token_ids"] for m in ("other", "rs")}
    order: list[str] = []
    done: dict[str, Any] = {}
    started, finished = threading.Event(), threading.Event()

    def job(tag: str, model: str, tokens: int, text: list[int]) -> Job:
        def emit(event: Any) -> None:
            if isinstance(event, StartEvent) and tag == "long":
                started.set()
            if isinstance(event, (DoneEvent, ErrorEvent)):
                order.append(tag)
                done[tag] = event
                if len(done) == 3:
                    finished.set()

        return Job(prompt=Prompt("ids", text), adapter=model, label=model, max_tokens=tokens, temperature=0,
                   top_p=1.0, seed=None, stop=[], stream=False, index=0, emit=emit)

    worker = ContinuousWorker(dep)
    try:
        long = job("long", "good", 256, prompt(1))
        worker.submit(long)
        assert started.wait(60)
        replace = worker.call(lambda: (order.append("replace"), dep.attach("acme/rs", name="good")), names=["good"])
        worker.submit(job("after", "good", 8, prompt(2)))
        worker.submit(job("beside", "other", 8, prompt(2)))
        attach = worker.call(lambda: (order.append("attach"), dep.attach("acme/other", name="new")), names=["new"])
        wait([replace, attach], timeout=120)
        assert finished.wait(120), done
    finally:
        worker.stop()
    assert replace.exception() is None and attach.exception() is None
    assert all(isinstance(e, DoneEvent) for e in done.values()), done
    assert done["long"].completion_tokens == 256
    assert order.index("attach") < order.index("long") and order.index("beside") < order.index("long"), order
    assert order.index("long") < order.index("replace") < order.index("after"), order
    assert dep.tokenizer.encode(done["after"].text, add_special_tokens=False) == want["rs"]
    assert dep.tokenizer.encode(done["beside"].text, add_special_tokens=False) == want["other"]


def test_an_unloaded_name_still_serves_the_requests_that_resolved_it_first(world):
    """A request resolved to 'other' (holding it) but not submitted yet when 'other' is unloaded
    runs on it, as vLLM lets requests that hold an adapter finish: the unload answers at once,
    the name is gone for new requests, and the version is detached once that request is done."""
    import time

    from adapterhub_sdk.server import create_app
    from adapterhub_sdk.server.worker import DoneEvent, ErrorEvent, Job, Prompt

    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    dep.attach("acme/good", name="good")
    dep.attach("acme/other", name="other")
    want = dep.generate([prompt(2)], "other", max_new_tokens=8)[0]["token_ids"]
    app = create_app(dep, base_id="tiny", allow_adapter_updates=True, admin_key=ADMIN)
    server = app.state.server
    answered = threading.Event()
    got: list[Any] = []

    def emit(event: Any) -> None:
        if isinstance(event, (DoneEvent, ErrorEvent)):
            got.append(event)
            answered.set()

    with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120,
                                          headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        release = server.follower.acquire("other")  # what resolve_model's caller holds until answered
        r = c.post("/v1/unload_lora_adapter", json={"lora_name": "other"})
        assert r.status_code == 200, r.text
        assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"tiny", "good"}
        assert c.post("/v1/completions", json={"model": "other", "prompt": prompt(2), "max_tokens": 2}).status_code == 404
        assert "other" in dep.adapters  # held
        server.worker.submit(Job(prompt=Prompt("ids", prompt(2)), adapter="other", label="other", max_tokens=8,
                                 temperature=0, top_p=1.0, seed=None, stop=[], stream=False, index=0, emit=emit))
        assert answered.wait(60)
        release()
        deadline = time.monotonic() + 60
        while "other" in dep.adapters:  # detached once nothing holds it
            assert time.monotonic() < deadline, list(dep.adapters)
            time.sleep(0.02)
        assert c.get("/metrics").status_code == 200 and _loaded_gauge(c) == 1
    assert isinstance(got[0], DoneEvent), got
    assert dep.tokenizer.encode(got[0].text, add_special_tokens=False) == want

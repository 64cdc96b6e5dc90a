"""A request runs on the adapter version served when it was received (issue 12).

The name a request sends as ``model`` is bound to the version serving it when the request
is received (its body read); the request runs on that version whatever happens to the name
before it is prepared or admitted: an alias moved, a replace in place (``load_inplace``,
``POST /v1/adapters``), an unload then a load under the same name. A request received
after a swap was reported (``/v1/models`` shows the new digest) never runs on the old
version, and one for a name unloaded before it was received is a one-line 404.

Over HTTP on a real uvicorn server on loopback, under both schedulers, with
test_row_isolation's small Llama (word-level tokenizer), real LoRA adapters saved by PEFT
and published to a real SQLite registry. Two windows are made wide enough to act in: a chat
template that takes a second to render keeps a received request in its tokenizing (between
its receipt and its submission to the scheduler), and the static scheduler keeps requests
queued behind a long running batch (its control calls run between batches)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from test_continuous_calls import _Forwards, _stream_words
from test_row_isolation import _save_base, _Serving, prompt

import adapterhub_sdk as ah
from adapterhub_sdk.server import create_app

from conftest import save_lora

pytest.importorskip("uvicorn")

ADMIN = "binding-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
SWAPS = ("load_inplace", "adapters_replace", "unload_then_load", "alias_move")
TEXT = " ".join(f"w{i}" for i in prompt(2))  # the word-level tokenizer: one token per word


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("binding")
    base = _save_base(d / "base", context=512)
    v1, v2 = save_lora(base, d / "v1", seed=3), save_lora(base, d / "v2", seed=5, r=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}")
        reg.publish(v1, name="acme/ver", version="1.0.0", base=base)
        reg.publish(v2, name="acme/ver", version="1.1.0", base=base)
        reg.alias("acme/ver@1.0.0", "prod")
        digests = {v: reg.show(f"acme/ver@{v}").digest for v in ("1.0.0", "1.1.0")}
        yield {"base": base, "registry": reg, "digests": digests}
        reg.close()


def _serve(world: dict[str, Any], swap: str, scheduler: str) -> tuple[ah.Deployment, Any]:
    """'p' serving acme/ver@1.0.0 (followed from @prod for an alias move), beside 'ref-old'
    and 'ref-new' (each version under a name of its own, for the expected answers)."""
    reg = world["registry"]
    reg.alias("acme/ver@1.0.0", "prod")
    dep = ah.Deployment(str(world["base"]), registry=reg)
    dep.attach("acme/ver@1.0.0", name="ref-old")
    dep.attach("acme/ver@1.1.0", name="ref-new")
    follow = swap == "alias_move"
    dep.attach("acme/ver@prod" if follow else "acme/ver@1.0.0", name="p#0" if follow else "p")
    app = create_app(dep, base_id="tiny", scheduler=scheduler, batch_wait_ms=0, allow_adapter_updates=True,
                     admin_key=ADMIN, follow_interval=0.05 if follow else 0)
    if follow:
        app.state.server.follower.adopt("p", "acme/ver@prod", dep.adapters["p#0"])
    return dep, app


async def _text(c: httpx.AsyncClient, model: str, ids: list[int], max_tokens: int = 8) -> str:
    r = await c.post("/v1/completions", json={"model": model, "prompt": ids, "max_tokens": max_tokens,
                                              "temperature": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


async def _digest(c: httpx.AsyncClient, model: str) -> str | None:
    cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
    return cards[model]["digest"] if model in cards else None


async def _swap(c: httpx.AsyncClient, swap: str, world: dict[str, Any]) -> None:
    """Move 'p' to acme/ver@1.1.0 and return once the move is reported done."""
    new = world["digests"]["1.1.0"]
    if swap == "load_inplace":
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "p", "lora_path": "acme/ver@1.1.0",
                                                        "load_inplace": True})
        assert r.status_code == 200 and r.headers["x-adapterhub-digest"] == new, r.text
    elif swap == "adapters_replace":
        r = await c.post("/v1/adapters", json={"spec": "acme/ver@1.1.0", "name": "p"})
        assert r.status_code == 200 and r.json()["replaced"] is True and r.json()["digest"] == new, r.text
    elif swap == "unload_then_load":
        r = await c.post("/v1/unload_lora_adapter", json={"lora_name": "p"})
        assert r.status_code == 200, r.text
        # unloaded before it was received: a one-line 404, not a crash and not the old version
        gone = await c.post("/v1/completions", json={"model": "p", "prompt": prompt(2), "max_tokens": 2})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found", gone.text
        assert "\n" not in gone.json()["error"]["message"]
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "p", "lora_path": "acme/ver@1.1.0"})
        assert r.status_code == 200 and r.headers["x-adapterhub-digest"] == new, r.text
    else:
        await asyncio.to_thread(world["registry"].alias, "acme/ver@1.1.0", "prod")
        deadline = time.monotonic() + 60
        while await _digest(c, "p") != new:
            assert time.monotonic() < deadline, "the alias move did not show within 60 s"
            await asyncio.sleep(0.01)
    assert await _digest(c, "p") == new


async def _wait_detached(dep: ah.Deployment, digest: str) -> None:
    """The swapped-out version leaves the deployment once nothing holds it ('ref-old' keeps its own copy)."""
    deadline = time.monotonic() + 60
    while sum(a.digest == digest for a in dep.adapters.values()) > 1:
        assert time.monotonic() < deadline, sorted(dep.adapters)
        await asyncio.sleep(0.02)


def _slow_template(dep: ah.Deployment) -> float:
    """Give the base's tokenizer a chat template that takes about a second to render (the
    conversation's text itself, nothing added); returns how long one rendering took."""
    from adapterhub_sdk.server.text import chat_prompt

    tok = dep.tokenizer
    messages = [{"role": "user", "content": TEXT}]
    loops = 20
    while True:
        tok.chat_template = (f"{{% for i in range({loops}) %}}{{% for j in range(1000) %}}{{% endfor %}}{{% endfor %}}"
                             "{% for m in messages %}{{ m['content'] }}{% endfor %}")
        started = time.monotonic()
        text, _ = chat_prompt(tok, messages)
        took = time.monotonic() - started
        assert text == TEXT
        if took >= 1.0 or loops >= 100_000:
            return took
        loops = min(100_000, int(loops * max(2.0, 1.2 / max(took, 1e-3))))


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
@pytest.mark.parametrize("swap", SWAPS)
def test_a_request_being_tokenized_when_its_name_moves_runs_on_the_version_it_was_received_for(
        world, swap, scheduler):
    """A chat request for 'p' is received (1.0.0 serving) and is still rendering its chat
    template when 'p' moves to 1.1.0 and the move is reported done. It answers with 1.0.0's
    tokens (before the fix: 1.1.0's, for every swap but the alias move, because the replace
    landed in place on the name the request held); a request sent after the move gets
    1.1.0's; the old version is detached once the held request is answered."""
    dep, app = _serve(world, swap, scheduler)
    server = app.state.server
    ids = prompt(2)
    with _Serving(app) as s:
        async def main() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=AUTH) as c:
                want = {v: await _text(c, f"ref-{v}", ids) for v in ("old", "new")}
                assert want["old"] != want["new"], "the versions must answer differently for this test to mean anything"
                assert await _text(c, "p", ids) == want["old"]
                took = await asyncio.to_thread(_slow_template, dep)
                held = server.follower.slot_of("p")
                held_request = asyncio.create_task(c.post("/v1/chat/completions", json={
                    "model": "p", "messages": [{"role": "user", "content": TEXT}], "max_tokens": 8,
                    "temperature": 0}))
                deadline = time.monotonic() + 30
                while server.follower.leases.get(held, 0) < 1:  # received, bound, now in its template
                    assert time.monotonic() < deadline and not held_request.done(), "the request was not received"
                    await asyncio.sleep(0.002)
                await _swap(c, swap, world)
                unprepared = not held_request.done()
                after = await _text(c, "p", ids)
                r = await held_request
                await _wait_detached(dep, world["digests"]["1.0.0"])
                return {"want": want, "took": took, "unprepared": unprepared, "after": after, "held": r}

        out = asyncio.run(main())
    assert out["unprepared"], f"the move took longer than the template ({out['took']:.2f} s): nothing was tested"
    assert out["held"].status_code == 200, out["held"].text
    assert out["held"].json()["choices"][0]["message"]["content"] == out["want"]["old"]
    assert out["after"] == out["want"]["new"]


@pytest.mark.parametrize("swap", SWAPS)
def test_requests_queued_behind_a_long_batch_when_the_swap_happens_finish_on_the_old_version(world, swap):
    """Static scheduler: a 256-token batch runs; a request for 'p' queues behind it; 'p' is
    moved to 1.1.0 (the move's attach waits for the batch, between batches); a second request
    for 'p' is received while the move is pending, /v1/models still showing 1.0.0. Both
    answer with 1.0.0's tokens (before the fix the second got 1.1.0's: it was queued after the
    replace, which landed in place on its name); after an unload the second is a 404 instead
    (unloaded before it was received). Once the move is reported, requests get 1.1.0's."""
    dep, app = _serve(world, swap, "static")
    server = app.state.server
    ids = prompt(2)
    old = world["digests"]["1.0.0"]
    with _Serving(app) as s, _Forwards(dep):
        async def main() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=s.url, timeout=120, headers=AUTH) as c:
                want = {v: await _text(c, f"ref-{v}", ids) for v in ("old", "new")}
                assert want["old"] != want["new"]
                seen = {"chunks": 0}
                long = asyncio.create_task(_stream_words(c, {"model": "tiny", "prompt": prompt(1), "max_tokens": 256,
                                                             "temperature": 0}, seen))
                while seen["chunks"] < 3:  # the batch runs (to its end: static)
                    await asyncio.sleep(0.005)
                first = asyncio.create_task(_text(c, "p", ids))
                while server.worker.pending() < 1:
                    await asyncio.sleep(0.002)
                moving = asyncio.create_task(_swap(c, swap, world))
                while server.worker.pending() < 2 and not moving.done():  # the move's attach waits behind the batch
                    await asyncio.sleep(0.002)
                pending_at_second = not moving.done() and seen["chunks"] < 250
                digest_before = await _digest(c, "p")
                second = asyncio.create_task(c.post("/v1/completions", json={
                    "model": "p", "prompt": ids, "max_tokens": 8, "temperature": 0}))
                while not second.done() and server.worker.pending() < 3:  # received and queued
                    await asyncio.sleep(0.002)
                digest_after = await _digest(c, "p")
                await moving
                after = await _text(c, "p", ids)
                out = {"want": want, "first": await first, "second": await second, "after": after,
                       "pending": pending_at_second, "digests": (digest_before, digest_after), "long": await long}
                await _wait_detached(dep, old)
                return out

        out = asyncio.run(main())
    assert out["pending"], "the move was done before the second request was sent: nothing was tested"
    assert len(out["long"]) == 256
    assert out["first"] == out["want"]["old"]
    second = out["second"]
    if swap == "unload_then_load":
        assert out["digests"] == (None, None)
        assert second.status_code == 404 and second.json()["error"]["code"] == "model_not_found", second.text
    else:
        assert out["digests"] == (old, old), "the move was reported before the second request was received"
        assert second.status_code == 200, second.text
        assert second.json()["choices"][0]["text"] == out["want"]["old"]
    assert out["after"] == out["want"]["new"]


def test_an_internal_slot_is_never_a_clients_name_while_a_replace_attaches_it(tmp_path, monkeypatch):
    """Between a replace's attach of the new version (under an internal ``NAME#N`` slot) and
    the switch of the public name to it, the slot is already in the deployment: it must not
    be listed in /v1/models, found by GET /v1/models/ID or served to a request naming it."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    base = _save_base(tmp_path / "base", context=512)
    v1, v2 = save_lora(base, tmp_path / "v1", seed=3), save_lora(base, tmp_path / "v2", seed=5, r=8)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(v1, name="acme/ver", version="1.0.0", base=base)
    reg.publish(v2, name="acme/ver", version="1.1.0", base=base)
    dep = ah.Deployment(str(base), registry=reg)
    dep.attach("acme/ver@1.0.0", name="p")
    app = create_app(dep, base_id="tiny", allow_adapter_updates=True, admin_key=ADMIN, follow_interval=0)
    seen: list[tuple[int, str, int, bool, int]] = []
    watched = 0

    async def replace(c: httpx.AsyncClient, rnd: int, state: dict[str, bool]) -> None:
        spec = "acme/ver@1.1.0" if rnd % 2 == 0 else "acme/ver@1.0.0"
        r = await c.post("/v1/adapters", json={"spec": spec, "name": "p"}, headers=AUTH)
        assert r.status_code in (200, 201), r.text
        state["done"] = True

    async def probe(c: httpx.AsyncClient, rnd: int, state: dict[str, bool]) -> None:
        nonlocal watched
        while not state["done"]:
            for n in [n for n in dep.adapters if "#" in n]:
                watched += 1
                one = await c.get(f"/v1/models/{n.replace('#', '%23')}")
                ids = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
                run = await c.post("/v1/completions", json={"model": n, "prompt": [3, 4], "max_tokens": 1})
                if one.status_code == 200 or n in ids or run.status_code == 200:
                    seen.append((rnd, n, one.status_code, n in ids, run.status_code))
            await asyncio.sleep(0)

    async def main() -> None:
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for rnd in range(12):
                state = {"done": False}
                await asyncio.gather(replace(c, rnd, state), probe(c, rnd, state))

    asyncio.run(main())
    reg.close()
    assert watched > 0  # the window was seen: the test looked at slots while they were attached
    assert seen == []

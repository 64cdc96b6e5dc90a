"""One request's failure is that request's alone (issue 8).

A small Llama saved by transformers with a word-level tokenizer (every token decodes to
its own word, so equal texts mean equal tokens), two real LoRA adapters saved by PEFT and
published to a real SQLite registry. The "bad" adapter is attached healthy, then its
in-memory B matrices are filled with NaN: every row that uses it gets NaN logits, the way a
corrupt adapter would. Expected outputs are each row generated alone (batch of one) with
the same adapter, prompt, sampling settings and seed."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.generation import NonFiniteLogitsError, RowError

from conftest import save_lora

VOCAB = 64
PAD, EOS = 0, 1


def _save_base(out: Path, context: int = 128) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # clear winners per step: greedy tokens do not hinge on padding noise
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    vocab = {"<pad>": PAD, "<eos>": EOS, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rowiso")
    base = _save_base(d / "base")
    return {"base": base, "good": save_lora(base, d / "good", seed=3), "bad": save_lora(base, d / "bad", seed=4)}


@pytest.fixture
def dep(models, registry) -> ah.Deployment:
    for name in ("good", "bad"):
        registry.publish(models[name], name=f"acme/{name}", version="1.0.0", base=models["base"])
    dep = ah.Deployment(str(models["base"]), registry=registry)
    assert dep.tokenizer is not None
    dep.attach("acme/good", name="good")
    dep.attach("acme/bad", name="bad")
    poison(dep, "bad")
    return dep


def poison(dep: ah.Deployment, name: str) -> None:
    """Fill the adapter's in-memory B matrices with NaN (the deployment's own per-slot tensors,
    before any batch has stacked them), as corrupt weights would be."""
    slot = dep.adapters[name].slot
    hit = 0
    for wrapper in dep._wrapped.values():
        if slot in wrapper.B:
            wrapper.B[slot].fill_(float("nan"))
            wrapper.cached = None
            hit += 1
    assert hit > 0


def prompt(i: int) -> list[int]:
    """Prompts of different lengths (left padding in a batch), no special tokens."""
    g = torch.Generator().manual_seed(100 + i)
    return torch.randint(2, VOCAB, (3 + i % 7,), generator=g).tolist()


def alone(dep: ah.Deployment, ids: list[int], name: str | None, **kw: Any) -> dict[str, Any]:
    return dep.generate([ids], name, **kw)[0]


# --------------------------------------------------------------------------- Python API


def test_broken_row_fails_alone_greedy(dep):
    """Greedy: the NaN row is reported as its own error (today it silently returns argmax-of-NaN
    tokens); every other row's tokens equal that row generated alone."""
    names = ["good", "bad", None, "good", "bad", "good"]
    prompts = [prompt(i) for i in range(len(names))]
    out = dep.generate(prompts, names, max_new_tokens=6)
    for i, (ids, name, row) in enumerate(zip(prompts, names, out)):
        if name == "bad":
            assert row["finish_reason"] == "error" and row["error_code"] == "nonfinite_logits", row
            assert "'bad' produced non-finite logits" in row["error"] and row["token_ids"] == []
        else:
            assert "error" not in row
            expected = alone(dep, ids, name, max_new_tokens=6)
            assert row["token_ids"] == expected["token_ids"] and row["finish_reason"] == expected["finish_reason"], i
            assert row["text"] == expected["text"] and row["completion_tokens"] == len(row["token_ids"])


def test_broken_row_fails_alone_sampled(dep):
    """Sampling: the NaN row used to make torch.multinomial raise for the whole batch; now
    only that row fails, and seeded rows beside it give what they give alone."""
    names = ["good", "bad", "good", None]
    prompts = [prompt(i) for i in range(4)]
    out = dep.generate(prompts, names, max_new_tokens=6, temperature=0.9, top_p=0.95, seed=5)
    assert [r["finish_reason"] == "error" for r in out] == [False, True, False, False]
    assert out[1]["error_code"] == "nonfinite_logits"
    for i in (0, 2, 3):
        expected = alone(dep, prompts[i], names[i], max_new_tokens=6, temperature=0.9, top_p=0.95, seed=5)
        assert out[i]["token_ids"] == expected["token_ids"], i


def test_seeded_row_is_reproducible_whoever_shares_its_batch(dep):
    """Each row has its own generator: a seeded row gives the same tokens alone, beside other
    seeded rows, and beside rows with other temperatures, top_p and no seed."""
    ids = prompt(1)
    kw = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 1.0}
    solo = alone(dep, ids, "good", seed=42, **kw)["token_ids"]
    # one seed for the batch: every row starts from it (today: one generator shared by all rows)
    same = dep.generate([prompt(0), ids, prompt(2), ids], "good", seed=42, **kw)
    assert same[1]["token_ids"] == solo and same[3]["token_ids"] == solo
    # per-row settings: the seeded row is unaffected by its neighbours' temperatures and seeds
    mixed = dep.generate([prompt(3), ids, prompt(4), prompt(5)], ["good", "good", None, "good"],
                         max_new_tokens=10, temperature=[0.0, 1.0, 1.7, 0.5], top_p=[1.0, 1.0, 0.8, 0.9],
                         seed=[None, 42, 7, None])
    assert mixed[1]["token_ids"] == solo
    assert mixed[0]["token_ids"] == alone(dep, prompt(3), "good", max_new_tokens=10)["token_ids"]
    assert mixed[2]["token_ids"] == alone(dep, prompt(4), None, max_new_tokens=10, temperature=1.7, top_p=0.8,
                                          seed=7)["token_ids"]
    # sampling is really on (not greedy in disguise): another seed takes another path somewhere
    others = [alone(dep, ids, "good", seed=s, **kw)["token_ids"] for s in range(43, 49)]
    assert any(o != solo for o in others)


def test_every_row_failing_raises_and_callback_errors_are_per_row(dep):
    with pytest.raises(NonFiniteLogitsError, match="'bad' produced non-finite logits") as info:
        dep.generate([prompt(0)], "bad", max_new_tokens=3)
    assert info.value.row == 0 and info.value.results is not None
    assert info.value.results[0]["finish_reason"] == "error"
    # an on_token callback raising for one row stops that row only, with the exception named
    prompts = [prompt(0), prompt(1)]
    expected = dep.generate(prompts, "good", max_new_tokens=5)

    def on_token(row: int, tok: int) -> None:
        if row == 0:
            raise KeyError("boom")

    out = dep.generate(prompts, "good", max_new_tokens=5, on_token=on_token)
    assert out[0]["finish_reason"] == "error" and out[0]["error_code"] == "generation_failed"
    assert "KeyError" in out[0]["error"] and out[0]["token_ids"] == expected[0]["token_ids"][:1]
    assert out[1] == expected[1]
    with pytest.raises(RowError, match="on_token raised"):
        dep.generate([prompt(0)], "good", max_new_tokens=5, on_token=on_token)


# --------------------------------------------------------------------------- HTTP


class _Serving:
    """The FastAPI app on a real uvicorn server on a loopback socket, in a thread."""

    def __init__(self, app: Any):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> _Serving:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def _requests() -> list[dict[str, Any]]:
    """30 healthy requests (greedy, seeded, unseeded at the broken one's settings, some
    streaming) and three for the broken adapter (greedy, sampled, streaming)."""
    reqs = []
    for i in range(30):
        body: dict[str, Any] = {"model": "good", "prompt": prompt(i), "max_tokens": 4 + i % 5}
        if i % 3 == 1:
            body.update(temperature=0.8 + 0.1 * (i % 4), top_p=0.9, seed=1000 + i)
        elif i % 3 == 2 and i % 2:
            body.update(temperature=1.0, top_p=0.9)  # unseeded: no expected text, must succeed
        else:
            body.update(temperature=0)
        body["stream"] = i % 4 == 0
        reqs.append(body)
    reqs.insert(5, {"model": "bad", "prompt": prompt(40), "max_tokens": 6, "temperature": 0})
    reqs.insert(17, {"model": "bad", "prompt": prompt(41), "max_tokens": 6, "temperature": 1.0, "top_p": 0.9})
    reqs.insert(26, {"model": "bad", "prompt": prompt(42), "max_tokens": 6, "temperature": 0, "stream": True})
    return reqs


async def _send(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    if not body.get("stream"):
        r = await client.post("/v1/completions", json=body)
        return r.status_code, r.json()
    events = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return r.status_code, events


def _stream_result(events: list[str]) -> dict[str, Any]:
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    errors = [c["error"] for c in chunks if "error" in c]
    if errors:
        return {"error": errors[0]}
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return {"text": text, "finish_reason": chunks[-1]["choices"][0]["finish_reason"]}


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_http_broken_adapter_beside_30_healthy_requests(dep, scheduler):
    """~30 concurrent requests for a healthy adapter share one batch with three for the broken
    one: every healthy request succeeds with the text it gets alone; each broken one gets its
    own error (422 nonfinite_logits; on its stream, an error event). Under both schedulers."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from adapterhub_sdk.server import create_app

    app = create_app(dep, base_id="tiny", max_batch=64, batch_wait_ms=0, scheduler=scheduler)
    worker = app.state.server.worker
    reqs = _requests()
    gate = threading.Event()

    async def main(url: str) -> list[tuple[int, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            tasks = [asyncio.create_task(_send(client, body)) for body in reqs]
            deadline = time.monotonic() + 30
            while worker.q.qsize() < len(reqs):  # the worker is held: every request queues
                assert time.monotonic() < deadline, f"only {worker.q.qsize()} of {len(reqs)} requests queued"
                await asyncio.sleep(0.01)
            gate.set()  # now one batch takes them all
            return await asyncio.gather(*tasks)

    with _Serving(app) as serving:
        worker.call(gate.wait)
        replies = asyncio.run(main(serving.url))
        metrics = httpx.get(serving.url + "/metrics").text
        # alone in its batch, every row of which fails: still its own error, not a hung request
        lone = httpx.post(serving.url + "/v1/completions", timeout=60,
                          json={"model": "bad", "prompt": prompt(43), "max_tokens": 3, "temperature": 0})
        after = httpx.post(serving.url + "/v1/completions", timeout=60,
                           json={"model": "good", "prompt": prompt(0), "max_tokens": 3, "temperature": 0})
    assert lone.status_code == 422 and lone.json()["error"]["code"] == "nonfinite_logits", lone.text
    assert after.status_code == 200  # the worker runs on
    checked = 0
    for body, (status, reply) in zip(reqs, replies):
        result = _stream_result(reply) if body.get("stream") else reply
        if body["model"] == "bad":
            assert status == (200 if body.get("stream") else 422), (body, reply)
            err = result["error"]
            assert err["code"] == "nonfinite_logits" and "non-finite logits" in err["message"], err
            continue
        assert status == 200 and "error" not in result, (body, reply)
        choice = result if body.get("stream") else result["choices"][0]
        if body.get("temperature") and body.get("seed") is None:
            assert choice["finish_reason"] in ("stop", "length")
            continue
        expected = alone(dep, body["prompt"], "good", max_new_tokens=body["max_tokens"],
                         temperature=body["temperature"], top_p=body.get("top_p", 1.0), seed=body.get("seed"))
        assert choice["text"] == expected["text"], body
        assert choice["finish_reason"] == expected["finish_reason"], body
        checked += 1
    assert checked >= 20
    if scheduler == "static":
        assert f"adapterhub_batch_size_sum {float(len(reqs))}" in metrics  # one batch held every row
        assert "adapterhub_batch_size_count 1.0" in metrics
    else:  # per decode step: the healthy rows decoded together (the broken ones left at their first token)
        count = float(re.search(r"^adapterhub_batch_size_count (\S+)$", metrics, re.M)[1])
        at_most_16 = float(re.search(r'^adapterhub_batch_size_bucket\{le="16.0"\} (\S+)$', metrics, re.M)[1])
        assert count > at_most_16, metrics


def test_minus_inf_on_some_tokens_is_not_a_failure(dep):
    """A model may exclude tokens with -inf logits: argmax and softmax handle that as PEFT's model
    would, so such rows are not failed (only NaN, +Inf, or every logit -Inf is)."""
    def mask_tokens(module: Any, args: Any, y: torch.Tensor) -> torch.Tensor:
        y = y.clone()
        y[..., :40] = float("-inf")
        return y

    handle = dep.model.lm_head.register_forward_hook(mask_tokens)
    try:
        out = dep.generate([prompt(0), prompt(1)], "good", max_new_tokens=5, temperature=[0.0, 1.0], seed=3)
    finally:
        handle.remove()
    for row in out:
        assert row["finish_reason"] != "error" and "error" not in row, row
        assert row["token_ids"] and all(t >= 40 for t in row["token_ids"]), row

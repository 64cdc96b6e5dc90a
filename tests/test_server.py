"""`adapterhub serve` end to end, as a client sees it.

A small Llama base with a BPE tokenizer trained here (by the ``tokenizers`` library, saved
beside the base by transformers), LoRA adapters saved by PEFT on it and published to a
SQLite registry; the server runs as a subprocess of the installed ``adapterhub`` command and
every check is an HTTP request (httpx, and the ``openai`` client). Expected texts come from
``Deployment.generate`` in this process with the same adapters and greedy decoding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ADAPTERHUB, save_base, save_lora

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.slow

BASE_ID = "tinyllama"
ADMIN_KEY = "test-admin-key"  # adapter updates are on (--allow-adapter-updates) and need it
PROMPTS = ["the cat sat on the", "a red bird flew over", "user: where is the dog?"]
WORDS = ["the", "a", "cat", "dog", "bird", "fish", "sat", "ran", "flew", "swam", "on", "under", "over", "near",
         "mat", "log", "tree", "pond", "quickly", "slowly", "red", "blue", "green", "small", "big", "and",
         "then", "where", "is", "it", "was"]


# --------------------------------------------------------------------------- fixtures


def _train_tokenizer(out: Path) -> Any:
    """A byte-level BPE tokenizer trained on generated sentences, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    sentences = []
    for _ in range(400):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) + rng.choice([".", "!", "?"])
        sentences.append(rng.choice(["", "user: ", "assistant: "]) + s)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sentences, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)
    return fast


def _save_tiny_llama(out: Path, vocab: int, eos: int, pad: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # clear winners per step: greedy text does not hinge on rounding
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def one_thread():
    """torch on one thread: a tiny model gains nothing from more, and they fight the server's."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Served:
    def __init__(self, url: str, base: Path, registry_url: str, proc: subprocess.Popen, log: Path):
        self.url = url
        self.base = base
        self.registry_url = registry_url
        self.proc = proc
        self.log = log
        self.local: Any = None  # an in-process Deployment of the same base and adapters
        self._expected: dict[tuple[Any, ...], dict[str, Any]] = {}

    def expected(self, model: str | None, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> dict:
        key = (model, prompt, max_tokens, stop)
        if key not in self._expected:
            with one_thread():
                self._expected[key] = self.local.generate([prompt], model, max_new_tokens=max_tokens, stop=stop)[0]
        return self._expected[key]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import adapterhub_sdk as ah

    tmp = tmp_path_factory.mktemp("serve")
    base = tmp / BASE_ID
    tok = _train_tokenizer(base)
    _save_tiny_llama(base, len(tok), tok.eos_token_id, tok.pad_token_id)
    other = save_base(tmp / "other_shape", hidden=48)
    loras = {"a": save_lora(base, tmp / "lora_a", seed=1),
             "b": save_lora(base, tmp / "lora_b", seed=2, targets=("k_proj", "o_proj")),
             "c": save_lora(base, tmp / "lora_c", seed=3, r=8, use_rslora=True),
             "other": save_lora(other, tmp / "lora_other", seed=4)}
    registry_url = f"sqlite:///{tmp / 'registry' / 'registry.db'}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS", "ADAPTERHUB_DEBUG")}
    env.update(ADAPTERHUB_HOME=str(tmp / "home"), ADAPTERHUB_LOAD_PLUGINS="", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", ADAPTERHUB_ADMIN_KEY=ADMIN_KEY)  # a tiny model: more threads only contend
    with pytest.MonkeyPatch.context() as mp:
        for k in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS"):
            mp.delenv(k, raising=False)
        mp.setenv("ADAPTERHUB_HOME", env["ADAPTERHUB_HOME"])
        reg = ah.Registry.open(registry_url)
        reg.publish(loras["a"], name="acme/a", version="1.0.0", base=base)
        reg.publish(loras["b"], name="acme/b", version="0.9.0", base=base)
        reg.publish(loras["b"], name="acme/b", version="1.2.0", base=base)
        reg.publish(loras["c"], name="acme/c", version="1.0.0", base=base)
        reg.publish(loras["other"], name="acme/other", version="1.0.0", base=other)

        port = _free_port()
        log = tmp / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [ADAPTERHUB, "--registry", registry_url, "serve", "--base", str(base), "--adapter", "acme/a@1.0.0",
                 "--adapter", "acme/b@>=1.0,<2", "--port", str(port), "--allow-adapter-updates"],  # a range with '=' is a spec
                stdout=out, stderr=subprocess.STDOUT, env=env)
        s = Served(f"http://127.0.0.1:{port}", base, registry_url, proc, log)
        try:
            # while the server starts: the same deployment in this process, for expected outputs
            s.local = ah.Deployment(base, registry=reg)
            for spec in ("acme/a@1.0.0", "acme/b@^1", "acme/c@1.0.0"):
                s.local.attach(spec)
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"the server exited ({proc.returncode}):\n{s.logs()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(s.url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not become healthy:\n{s.logs()}")
                time.sleep(0.2)
            yield s
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            reg.close()


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


def _error(resp: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


def _sse(resp: httpx.Response) -> list[Any]:
    """The data of each Server-Sent Event: parsed JSON, or the string "[DONE]"."""
    events = []
    for line in resp.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --------------------------------------------------------------------------- models, health


def test_health_and_models(served, client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    by_id = {m["id"]: m for m in models["data"]}
    assert set(by_id) == {BASE_ID, "acme/a", "acme/b"}
    for name, version in (("acme/a", "1.0.0"), ("acme/b", "1.2.0")):
        m = by_id[name]
        assert m["object"] == "model" and m["parent"] == BASE_ID and m["owned_by"] == "acme"
        assert m["root"] == f"{name}@{version}"
    assert by_id[BASE_ID]["parent"] is None
    assert client.get("/v1/models/acme/a").json()["id"] == "acme/a"
    _error(client.get("/v1/models/acme/nope"), 404)


# --------------------------------------------------------------------------- completions


def test_completions_match_deployment_generate(served, client):
    texts = set()
    for model in ("acme/a", "acme/b", BASE_ID):
        for prompt in PROMPTS:
            r = client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 12,
                                                      "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            want = served.expected(None if model == BASE_ID else model, prompt, 12)
            assert body["object"] == "text_completion" and body["model"] == model
            (choice,) = body["choices"]
            assert choice["text"] == want["text"] and choice["finish_reason"] == want["finish_reason"]
            assert body["usage"] == {"prompt_tokens": want["prompt_tokens"],
                                     "completion_tokens": want["completion_tokens"],
                                     "total_tokens": want["prompt_tokens"] + want["completion_tokens"]}
            texts.add((prompt, choice["text"]))
    assert len(texts) > len(PROMPTS), "adapters should change the output"


def test_several_prompts_and_seeded_sampling(served, client):
    r = client.post("/v1/completions", json={"model": "acme/b", "prompt": PROMPTS[:2], "max_tokens": 6,
                                              "temperature": 0})
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    assert [c["text"] for c in r.json()["choices"]] == [served.expected("acme/b", p, 6)["text"] for p in PROMPTS[:2]]
    ids = served.local.tokenizer(PROMPTS[0])["input_ids"]
    by_ids = client.post("/v1/completions", json={"model": "acme/b", "prompt": ids, "max_tokens": 6,
                                                   "temperature": 0})
    assert by_ids.json()["choices"][0]["text"] == served.expected("acme/b", PROMPTS[0], 6)["text"]
    sampled = {"model": "acme/a", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0.9, "top_p": 0.9,
               "seed": 7}
    first, second = (client.post("/v1/completions", json=sampled).json() for _ in range(2))
    with one_thread():
        want = served.local.generate([PROMPTS[0]], "acme/a", max_new_tokens=8, temperature=0.9, top_p=0.9,
                                     seed=7)[0]
    assert first["choices"][0]["text"] == second["choices"][0]["text"] == want["text"]


def test_tiny_temperature_samples_like_greedy(served, client):
    """A temperature so small that logits / t overflows must still sample (the best token),
    not answer 500 with a NaN probability error."""
    greedy = served.expected("acme/a", PROMPTS[1], 5)["text"]
    for t in (1e-45, 1e-30):
        r = client.post("/v1/completions", json={"model": "acme/a", "prompt": PROMPTS[1], "max_tokens": 5,
                                                  "temperature": t, "seed": 1})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == greedy


def test_stop_sequences(served, client):
    full = served.expected("acme/a", PROMPTS[0], 12)["text"]
    assert len(full) > 4, full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    want = served.expected("acme/a", PROMPTS[0], 12, (stop,))
    r = client.post("/v1/completions", json={"model": "acme/a", "prompt": PROMPTS[0], "max_tokens": 12,
                                              "temperature": 0, "stop": stop})
    choice = r.json()["choices"][0]
    assert choice["text"] == want["text"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"
    streamed = client.post("/v1/completions", json={"model": "acme/a", "prompt": PROMPTS[0], "max_tokens": 12,
                                                     "temperature": 0, "stop": [stop], "stream": True})
    events = _sse(streamed)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == want["text"]


def test_streaming_completions(served, client):
    for model in ("acme/a", "acme/b"):
        payload = {"model": model, "prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0}
        plain = client.post("/v1/completions", json=payload).json()["choices"][0]
        with client.stream("POST", "/v1/completions",
                           json={**payload, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse(r)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "text_completion" and c["model"] == model for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        usage = chunks[-1]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
        texts = [c["choices"][0]["text"] for c in chunks[:-1]]
        assert len(texts) > 2
        assert "".join(texts) == plain["text"]
        assert chunks[-2]["choices"][0]["finish_reason"] == plain["finish_reason"]


# --------------------------------------------------------------------------- chat


def test_chat_completions(served, client):
    from adapterhub_sdk.server import chat_prompt

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is the cat?"}]
    prompt, _special = chat_prompt(served.local.tokenizer, messages)
    assert prompt == "system: be brief\nuser: where is the cat?\nassistant:"
    want = served.expected("acme/b", prompt, 10)
    r = client.post("/v1/chat/completions", json={"model": "acme/b", "messages": messages, "max_tokens": 10,
                                                   "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": want["text"]}
    assert body["usage"]["prompt_tokens"] == want["prompt_tokens"]
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "acme/b", "messages": messages, "max_completion_tokens": 10,
                             "temperature": 0, "stream": True}) as resp:
        events = _sse(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == want["finish_reason"]


def test_chat_prompt_uses_the_tokenizers_template(served):
    from transformers import AutoTokenizer

    from adapterhub_sdk.server import chat_prompt

    tok = AutoTokenizer.from_pretrained(served.base)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    text, special = chat_prompt(tok, [{"role": "user", "content": "hi"}])
    assert (text, special) == ("<user>hi<assistant>", False)


def test_openai_client(served):
    from adapterhub_sdk.server import chat_prompt

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"acme/a", "acme/b", BASE_ID} <= ids
    got = client.completions.create(model="acme/a", prompt=PROMPTS[2], max_tokens=8, temperature=0)
    assert got.choices[0].text == served.expected("acme/a", PROMPTS[2], 8)["text"]
    stream = client.chat.completions.create(model="acme/a", messages=[{"role": "user", "content": "the dog"}],
                                            max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    prompt, _ = chat_prompt(served.local.tokenizer, [{"role": "user", "content": "the dog"}])
    assert text == served.expected("acme/a", prompt, 8)["text"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="acme/nope", prompt="x", max_tokens=2)


# --------------------------------------------------------------------------- batching, metrics


def _metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def test_concurrent_requests_are_batched(served, client):
    models = ["acme/a", "acme/b", BASE_ID, "acme/a", "acme/b", BASE_ID, "acme/a", "acme/b"]
    jobs = [(m, PROMPTS[i % len(PROMPTS)]) for i, m in enumerate(models)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as ac:
            return await asyncio.gather(*[
                ac.post("/v1/completions", json={"model": m, "prompt": p, "max_tokens": 16, "temperature": 0})
                for m, p in jobs])

    responses = asyncio.run(run())
    for (model, prompt), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        want = served.expected(None if model == BASE_ID else model, prompt, 16)
        assert r.json()["choices"][0]["text"] == want["text"], (model, prompt)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    count = sum(v for _, v in _metric(text, "adapterhub_batch_size_count"))
    single = sum(v for labels, v in _metric(text, "adapterhub_batch_size_bucket") if labels["le"] == "1.0")
    assert count > single, "no batch ran more than one request"
    ok = {(labels["endpoint"], labels["adapter"], labels["status"]): v
          for labels, v in _metric(text, "adapterhub_requests_total")}
    assert ok[("/v1/completions", "acme/a", "200")] >= 3
    assert sum(v for labels, v in _metric(text, "adapterhub_generated_tokens_total")
               if labels["adapter"] == "acme/b") > 0
    assert _metric(text, "adapterhub_request_latency_seconds_count")


# --------------------------------------------------------------------------- load, unload


def test_load_use_and_unload_an_adapter(served, client):
    r = client.post("/v1/adapters", json={"spec": "acme/c@^1"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "acme/c" and body["ref"] == "acme/c@1.0.0" and body["verdict"] == "exact"
    assert body["replaced"] is False and body["parent"] == BASE_ID
    assert "acme/c" in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert "acme/c" in {a["id"] for a in client.get("/v1/adapters").json()["data"]}
    want = served.expected("acme/c", PROMPTS[0], 10)
    r = client.post("/v1/completions", json={"model": "acme/c", "prompt": PROMPTS[0], "max_tokens": 10,
                                              "temperature": 0})
    assert r.json()["choices"][0]["text"] == want["text"]
    again = client.post("/v1/adapters", json={"spec": "acme/c@1.0.0"})
    assert again.status_code == 200 and again.json()["replaced"] is True
    # another name for the same version
    named = client.post("/v1/adapters", json={"spec": "acme/c@1.0.0", "name": "team/c-prod"})
    assert named.status_code == 201 and named.json()["id"] == "team/c-prod"
    assert client.delete("/v1/adapters/team/c-prod").json() == {"id": "team/c-prod", "object": "adapter",
                                                                "deleted": True}
    gone = client.delete("/v1/adapters/acme/c")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert "acme/c" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    for path, payload in (("/v1/completions", {"prompt": "the cat"}),
                          ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        err = _error(client.post(path, json={"model": "acme/c", "max_tokens": 4, **payload}), 404)
        assert err["code"] == "model_not_found" and err["param"] == "model"
    _error(client.delete("/v1/adapters/acme/c"), 404)


# --------------------------------------------------------------------------- bad requests

_C = "/v1/completions"
_CHAT = "/v1/chat/completions"
_OK = {"model": "acme/a", "prompt": "the cat", "max_tokens": 4}
_MSG = [{"role": "user", "content": "hi"}]

BAD: list[tuple[str, str, str, Any, int, str | None]] = [
    # (id, method, path, json body or raw bytes, status, param)
    ("unknown-model", "POST", _C, {**_OK, "model": "acme/nope"}, 404, "model"),
    ("malformed-json", "POST", _C, b'{"model": "acme/a", "prompt": ', 400, None),
    ("empty-body", "POST", _C, b"", 400, None),
    ("body-not-object", "POST", _C, [1, 2], 400, None),
    ("missing-model", "POST", _C, {"prompt": "x"}, 400, "model"),
    ("missing-prompt", "POST", _C, {"model": "acme/a"}, 400, "prompt"),
    ("prompt-wrong-type", "POST", _C, {**_OK, "prompt": 5}, 400, "prompt"),
    ("max-tokens-wrong-type", "POST", _C, {**_OK, "max_tokens": "many"}, 400, "max_tokens"),
    ("max-tokens-zero", "POST", _C, {**_OK, "max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-bool", "POST", _C, {**_OK, "max_tokens": True}, 400, "max_tokens"),
    ("max-tokens-float", "POST", _C, {**_OK, "max_tokens": 2.0}, 400, "max_tokens"),
    ("n-string", "POST", _C, {**_OK, "n": "1"}, 400, "n"),
    ("temperature-negative", "POST", _C, {**_OK, "temperature": -1}, 400, "temperature"),
    ("top-p-zero", "POST", _C, {**_OK, "top_p": 0}, 400, "top_p"),
    ("empty-stop", "POST", _C, {**_OK, "stop": [""]}, 400, "stop"),
    ("seed-negative", "POST", _C, {**_OK, "seed": -3}, 400, "seed"),
    ("stream-wrong-type", "POST", _C, {**_OK, "stream": {"x": 1}}, 400, "stream"),
    ("too-many-tokens", "POST", _C, {**_OK, "max_tokens": 4000}, 400, "max_tokens"),
    ("prompt-too-long", "POST", _C, {**_OK, "prompt": "the cat sat quickly. " * 60, "max_tokens": 1}, 400, "prompt"),
    ("prompt-too-long-stream", "POST", _C, {**_OK, "prompt": "a dog ran. " * 80, "stream": True}, 400, "prompt"),
    ("token-id-out-of-range", "POST", _C, {**_OK, "prompt": [1, 99999]}, 400, "prompt"),
    ("echo", "POST", _C, {**_OK, "echo": True}, 400, "echo"),
    ("chat-no-messages", "POST", _CHAT, {"model": "acme/a", "messages": []}, 400, "messages"),
    ("chat-bad-role", "POST", _CHAT, {"model": "acme/a", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages.0.role"),
    ("chat-image-part", "POST", _CHAT, {"model": "acme/a", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages.0.content"),
    ("chat-unknown-model", "POST", _CHAT, {"model": "nope/x", "messages": _MSG}, 404, "model"),
    ("load-unknown", "POST", "/v1/adapters", {"spec": "acme/nope@1"}, 404, "spec"),
    ("load-no-matching-version", "POST", "/v1/adapters", {"spec": "acme/a@^7"}, 404, "spec"),
    ("load-incompatible", "POST", "/v1/adapters", {"spec": "acme/other@1.0.0"}, 400, "spec"),
    ("load-bad-spec", "POST", "/v1/adapters", {"spec": "not a spec!"}, 400, "spec"),
    ("load-missing-spec", "POST", "/v1/adapters", {"name": "x"}, 400, "spec"),
    ("load-as-base", "POST", "/v1/adapters", {"spec": "acme/c@1.0.0", "name": BASE_ID}, 400, "name"),
    ("unload-unknown", "DELETE", "/v1/adapters/acme/nope", None, 404, "name"),
    ("unload-base", "DELETE", f"/v1/adapters/{BASE_ID}", None, 400, "name"),
    ("unknown-route", "GET", "/v1/nothing", None, 404, None),
    ("wrong-method", "GET", _C, None, 405, None),
]


@pytest.mark.parametrize(("method", "path", "payload", "status", "param"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_requests_get_error_objects(served, client, method, path, payload, status, param):
    if isinstance(payload, bytes):
        resp = client.request(method, path, content=payload, headers={"content-type": "application/json"})
    elif payload is None:
        resp = client.request(method, path)
    else:
        resp = client.request(method, path, json=payload)
    err = _error(resp, status)
    if param is not None:
        assert err["param"] == param, err
    if "acme/other" in str(payload):
        assert err["code"] == "incompatible_adapter", err
    assert client.get("/health").status_code == 200


def test_hostile_request_shapes_are_one_line_400s(served, client):
    """Found by a security review, against the real server process: a request asking for more
    than 256 completions (prompts x n; a 10 KB body held the server 74 s for everyone else), a
    lone UTF-16 surrogate (a 500 with a traceback, even from the error handler echoing a model
    name) and booleans as token ids (counted as tokens 1 and 0) are refused with one 400."""
    r = client.post("/v1/completions", json={"model": "acme/a", "prompt": [[5]] * 20, "n": 16, "max_tokens": 1})
    err = _error(r, 400)
    assert err["code"] == "invalid_value" and "20 prompts x 16 choices = 320 completions; at most 256" in err["message"]
    for raw in ('{"model":"acme/a","prompt":"\\ud800","max_tokens":2}',
                '{"model":"\\ud800","prompt":[5],"max_tokens":2}',
                '{"model":"acme/a","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}'):
        path = "/v1/chat/completions" if "messages" in raw else "/v1/completions"
        err = _error(client.post(path, content=raw, headers={"Content-Type": "application/json"}), 400)
        assert err["code"] == "invalid_json" and "surrogate" in err["message"], err
    err = _error(client.post("/v1/completions", json={"model": "acme/a", "prompt": [True, False], "max_tokens": 1}),
                 400)
    assert "prompt" in (err["param"] or err["message"]), err
    ok = client.post("/v1/completions", json={"model": "acme/a", "prompt": [[5]] * 16, "n": 16, "max_tokens": 1})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 256, ok.text


def _generated(served) -> float:
    text = httpx.get(served.url + "/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("adapterhub_generated_tokens_total{"))


def test_a_client_that_goes_away_stops_its_rows(served, client):
    """Found by a security review: a request whose client went away before the answer (a
    timeout, a closed connection) ran every row to the end, holding the server for the others.
    Its rows stop now: the generated-token count stops growing soon after the client leaves."""
    body = {"model": "acme/a", "prompt": [[5, 6, 7]] * 16, "n": 16, "max_tokens": 60, "temperature": 1.0,
            "seed": 3}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=served.url, timeout=1.0, headers={
            "Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        c.post("/v1/completions", json=body)
    time.sleep(2.0)  # a poll interval, and the decode step running when the client left
    first = _generated(served)
    time.sleep(2.0)
    assert _generated(served) == first, "rows of a request whose client left kept generating"
    ok = client.post("/v1/completions", json={"model": "acme/a", "prompt": [5, 6], "max_tokens": 2})
    assert ok.status_code == 200, ok.text

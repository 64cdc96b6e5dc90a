"""Iteration-level scheduling (issue 12), over HTTP on a real uvicorn server on loopback.

The base is test_row_isolation's small Llama (word-level tokenizer: every token decodes to
its own word; a sharpened head, so greedy tokens have clear winners), with a longer context;
the adapters are real LoRA adapters saved by PEFT and published to a real SQLite registry.
Expected outputs are each request served alone, and ``Deployment.generate`` alone; tokens
are compared tie-aware: a difference is accepted only where the request alone had its top
two log-probabilities within 1e-4 (then the rest of the row is not compared)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from test_row_isolation import EOS, _save_base, _Serving, prompt

import adapterhub_sdk as ah
from adapterhub_sdk.server import create_app
from adapterhub_sdk.server.continuous import IncrementalText

from conftest import save_lora

pytest.importorskip("uvicorn")
TIE = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("continuous")
    base = _save_base(d / "base", context=512)
    dirs = {"good": save_lora(base, d / "good", seed=3), "other": save_lora(base, d / "other", seed=5, r=8),
            "rs": save_lora(base, d / "rs", seed=7, use_rslora=True, targets=("k_proj", "o_proj"))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}")
        for name, path in dirs.items():
            reg.publish(path, name=f"acme/{name}", version="1.0.0", base=base)
        dep = ah.Deployment(str(base), registry=reg)
        for name in dirs:
            dep.attach(f"acme/{name}", name=name)
        yield {"base": base, "dirs": dirs, "dep": dep, "registry": reg, "tmp": d}
        reg.close()


def serving(dep: ah.Deployment, **kw: Any) -> _Serving:
    return _Serving(create_app(dep, base_id="tiny", max_batch=32, **kw))


async def _post(client: httpx.AsyncClient, body: dict[str, Any], path: str = "/v1/completions") -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _gather(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*[_post(client, b) for b in bodies])

    return asyncio.run(main())


def _tokens(choice: dict[str, Any]) -> list[str]:
    return choice["logprobs"]["tokens"]


def same_tokens(got: list[str], solo: dict[str, Any]) -> None:
    """``got`` equals the solo choice's tokens, or first differs where the solo row's top two
    log-probabilities were within TIE (a near-tie that float noise may flip)."""
    want = [t.strip() for t in _tokens(solo)]  # word-level tokens: " w5" in context is "w5"
    got = [t.strip() for t in got]
    for k, (a, b) in enumerate(zip(got, want)):
        if a != b:
            top = sorted(solo["logprobs"]["top_logprobs"][k].values(), reverse=True)
            assert len(top) > 1 and top[0] - top[1] < TIE, (k, got, want)
            return
    assert len(got) == len(want), (got, want)


# --------------------------------------------------------------------------- scheduling


def test_short_request_finishes_while_a_long_one_runs(world):
    """A 4-token request sent while a 256-token request is decoding is answered while the
    long one is still running (the static batcher would hold it until the long one ends)."""
    long_body = {"model": "good", "prompt": prompt(1), "max_tokens": 256, "temperature": 0, "stream": True,
                 "stream_options": {"include_usage": True}}
    seen: dict[str, Any] = {"chunks": 0, "finished": False, "usage": None}
    short_arrived = threading.Event()
    at_short: dict[str, Any] = {}

    async def main(url: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            async def long() -> None:
                async with client.stream("POST", "/v1/completions", json=long_body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            seen["usage"] = chunk["usage"]
                        for c in chunk["choices"]:
                            seen["chunks"] += 1
                            if c["finish_reason"]:
                                seen["finished"] = True

            task = asyncio.create_task(long())
            while seen["chunks"] < 3:  # the long one is decoding
                await asyncio.sleep(0.005)
            short = await _post(client, {"model": "other", "prompt": prompt(2), "max_tokens": 4, "temperature": 0})
            at_short.update(chunks=seen["chunks"], finished=seen["finished"])
            short_arrived.set()
            await task
            return short

    with serving(world["dep"]) as s:
        short = asyncio.run(main(s.url))
    assert short["usage"]["completion_tokens"] == 4
    assert seen["usage"]["completion_tokens"] == 256, seen  # the long one really ran to its end
    assert not at_short["finished"] and at_short["chunks"] < 256, at_short


def test_temperature_0_equals_alone_and_seeded_rows_whoever_shares_the_batch(world):
    """Greedy rows of mixed adapters and lengths served together (prefill chunked at 4 tokens)
    give the tokens each gives alone, and what Deployment.generate gives alone; a seeded
    sampled row gives the same text beside any companions."""
    dep = world["dep"]
    names = ["good", "other", "tiny", "rs", "good", "other", "rs", "tiny"]
    greedy = [{"model": m, "prompt": prompt(i) * (1 + i % 3), "max_tokens": 3 + 5 * (i % 4), "temperature": 0,
               "logprobs": 2} for i, m in enumerate(names)]
    seeded = {"model": "good", "prompt": prompt(3), "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 42}
    with serving(dep, max_prefill_tokens=4) as s:
        solo = [_gather(s.url, [b])[0]["choices"][0] for b in greedy]
        solo_seeded = _gather(s.url, [seeded])[0]["choices"][0]["text"]
        together = _gather(s.url, [*greedy, seeded])
        companions = [{"model": "other", "prompt": prompt(9), "max_tokens": 20, "temperature": 1.7, "seed": 7},
                      {"model": "tiny", "prompt": prompt(8), "max_tokens": 2, "temperature": 0}]
        beside = _gather(s.url, [companions[0], seeded, companions[1]])
    for body, alone, reply in zip(greedy, solo, together):
        same_tokens(_tokens(reply["choices"][0]), alone)
        ref = dep.generate([body["prompt"]], None if body["model"] == "tiny" else body["model"],
                           max_new_tokens=body["max_tokens"])[0]
        same_tokens([dep.tokenizer.decode([t]) for t in ref["token_ids"]], alone)
    assert together[-1]["choices"][0]["text"] == solo_seeded == beside[1]["choices"][0]["text"]
    ref = dep.generate([seeded["prompt"]], "good", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=42)[0]
    assert ref["text"] == solo_seeded


def test_stream_equals_answer_and_never_passes_a_stop(world):
    """Streamed deltas (detokenized incrementally) add up to the non-streamed text, cut before
    the stop sequence."""
    dep = world["dep"]
    body = {"model": "rs", "prompt": prompt(4), "max_tokens": 30, "temperature": 0}
    with serving(dep) as s:
        full = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        words = full.split()
        stop = " ".join(words[3:5])
        answer = httpx.post(s.url + "/v1/completions", json={**body, "stop": [stop]}, timeout=60).json()
        text = ""
        with httpx.stream("POST", s.url + "/v1/completions", json={**body, "stop": [stop], "stream": True},
                          timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    cut = full[: full.index(stop)]
    assert answer["choices"][0]["text"] == cut == text
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_incremental_text_equals_whole_decode(tmp_path):
    """A byte-level BPE tokenizer (multi-byte characters split over tokens, spaces merged into
    words): decoding token by token gives exactly the whole decode, never a half character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["héllo wörld, naïve café", "日本語のテキスト", "emoji 🎉🎉 party", "plain words here"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=262, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    text = "café 日本 🎉 naïve wörld héllo, plain"
    ids = tok.encode(text).ids
    inc = IncrementalText(lambda xs: tok.decode(xs))
    deltas = [inc.add(t) for t in ids]
    assert inc.text == tok.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0  # some tokens were half a character: held back


# --------------------------------------------------------------------------- n and logprobs


def test_n_choices_in_completions_and_chat(world):
    dep = world["dep"]
    seeded = {"model": "good", "prompt": [prompt(5), prompt(6)], "max_tokens": 8, "temperature": 1.0, "seed": 11,
              "n": 3}
    with serving(dep) as s:
        reply = httpx.post(s.url + "/v1/completions", json=seeded, timeout=60).json()
        singles = [httpx.post(s.url + "/v1/completions", timeout=60,
                              json={**seeded, "prompt": p, "n": 1, "seed": 11 + j}).json()["choices"][0]["text"]
                   for p in (prompt(5), prompt(6)) for j in range(3)]
        chat = httpx.post(s.url + "/v1/chat/completions", timeout=60,
                          json={"model": "other", "messages": [{"role": "user", "content": "w5 w6 w7"}], "n": 2,
                                "max_tokens": 5, "temperature": 0}).json()
        too_many = httpx.post(s.url + "/v1/completions", json={**seeded, "n": 17}, timeout=60)
    assert [c["index"] for c in reply["choices"]] == list(range(6))
    assert [c["text"] for c in reply["choices"]] == singles  # choice j of a seeded request draws from seed + j
    assert len(set(singles[:3])) > 1
    assert reply["usage"]["completion_tokens"] == sum(len(t.split()) for t in singles)
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    assert chat["choices"][0]["message"] == chat["choices"][1]["message"]
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"


def test_logprobs_are_the_adapters_distribution(world):
    """Completions ``logprobs: 3`` and chat ``logprobs/top_logprobs``: OpenAI's shapes, and
    values equal to a full forward of the adapter over prompt + completion."""
    dep = world["dep"]
    body = {"model": "other", "prompt": prompt(2), "max_tokens": 6, "temperature": 0.8, "seed": 3, "logprobs": 3}
    with serving(dep) as s:
        reply = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()
        chat_body = {"model": "good", "messages": [{"role": "user", "content": "w9 w3"}], "max_tokens": 4,
                     "temperature": 0, "logprobs": True, "top_logprobs": 2}
        chat = httpx.post(s.url + "/v1/chat/completions", timeout=60, json=chat_body).json()
        chat_chunks = []
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={**chat_body, "stream": True},
                          timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chat_chunks.extend(e for c in json.loads(line[6:])["choices"] if c["logprobs"]
                                       for e in c["logprobs"]["content"])
        chunks = []
        with httpx.stream("POST", s.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunks.extend(c["logprobs"] for c in json.loads(line[6:])["choices"] if c["logprobs"])
    with serving(dep, scheduler="static") as s:
        static = httpx.post(s.url + "/v1/completions", json=body, timeout=60)
    choice = reply["choices"][0]
    lp = choice["logprobs"]
    ids = [int(t.strip()[1:]) for t in lp["tokens"]]  # word-level: "w17" (" w17" after the first) is token 17
    assert len(ids) == reply["usage"]["completion_tokens"] and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [len("".join(lp["tokens"][:k])) for k in range(len(ids))]
    assert all(len(top) == 3 for top in lp["top_logprobs"])
    seq = torch.tensor([body["prompt"] + ids])
    ref = torch.log_softmax(dep.forward(seq, "other")[0].float(), -1)
    for k, tid in enumerate(ids):
        row = ref[len(body["prompt"]) - 1 + k]
        assert abs(lp["token_logprobs"][k] - float(row[tid])) < 1e-4
        best = row.topk(3)
        space = " " if k else ""
        assert {f"{space}w{i}": pytest.approx(v, abs=1e-4)
                for i, v in zip(best.indices.tolist(), best.values.tolist())} == lp["top_logprobs"][k]
    content = chat["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == chat["choices"][0]["message"]["content"]
    for c in content:
        assert c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2
        assert c["top_logprobs"][0]["token"] == c["token"]  # greedy: the chosen token is the most likely
        assert c["top_logprobs"][0]["logprob"] == c["logprob"] >= c["top_logprobs"][1]["logprob"]
    assert chat_chunks == content
    # streamed: each chunk carries the tokens its text completes; together, the same entries
    assert {key: [v for c in chunks for v in c[key]] for key in lp} == lp
    assert static.status_code == 400 and "continuous" in static.json()["error"]["message"]


# --------------------------------------------------------------------------- variants


def _variant(kind: str, base: Path, out: Path) -> Path:
    import peft
    from transformers import AutoModelForCausalLM

    if kind == "lora":
        return save_lora(base, out, seed=21)
    if kind == "rslora":
        return save_lora(base, out, seed=22, r=8, use_rslora=True)
    if kind == "dora":
        return save_lora(base, out, seed=23, use_dora=True)
    if kind == "lora_bias":
        return save_lora(base, out, seed=24, lora_bias=True)
    if kind == "modules_to_save":
        return save_lora(base, out, seed=25, modules_to_save=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(base)
    ia3 = peft.get_peft_model(model, peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                    feedforward_modules=["down_proj"]))
    g = torch.Generator().manual_seed(26)
    with torch.no_grad():
        for name, p in ia3.named_parameters():
            if "ia3_" in name:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.3)
    ia3.save_pretrained(out)
    return out


def _peft_greedy(base: Path, path: Path, ids: list[int], steps: int) -> list[int]:
    """PEFT's own model, uncached full forwards, greedy, stopping at end of sequence."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            t = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if t == EOS:
                break
            out.append(t)
            seq.append(t)
    return out


REASON = {"dora": "DoRA", "lora_bias": "lora_bias", "modules_to_save": "modules_to_save", "ia3": "IA3"}


def test_every_variant_runs_in_a_mixed_batch_or_is_refused_before_loading(world, tmp_path):
    """LoRA, rsLoRA, DoRA, a lora_B bias, modules_to_save and IA3: each either serves in one
    mixed continuous batch with the tokens PEFT's model gives it alone, or attach refuses it
    with the reason and nothing is attached."""
    base, reg = world["base"], world["registry"]
    dep = ah.Deployment(str(base), registry=reg)
    served: dict[str, Path] = {}
    for kind in ("lora", "rslora", "dora", "lora_bias", "modules_to_save", "ia3"):
        path = _variant(kind, base, tmp_path / kind)
        reg.publish(path, name=f"variants/{kind.replace('_', '-')}", version="1.0.0", base=base)
        try:
            dep.attach(f"variants/{kind.replace('_', '-')}", name=kind)
        except ah.IncompatibleAdapterError as exc:
            assert kind in REASON and REASON[kind].lower() in str(exc).lower(), (kind, exc)
            assert kind not in dep.adapters
            continue
        served[kind] = path
    assert {"lora", "rslora"} <= set(served)
    bodies = [{"model": kind, "prompt": prompt(i), "max_tokens": 6, "temperature": 0, "logprobs": 2}
              for i, kind in enumerate([*served, *served])]
    with serving(dep) as s:
        replies = _gather(s.url, bodies)
        solo = [_gather(s.url, [b])[0]["choices"][0] for b in bodies]
    for body, reply, alone in zip(bodies, replies, solo):
        same_tokens(_tokens(reply["choices"][0]), alone)
        want = [f"w{t}" for t in _peft_greedy(base, served[body["model"]], body["prompt"], 6)]
        same_tokens(want, alone)


def test_a_cache_it_cannot_merge_is_one_error_and_the_worker_runs_on():
    """A sliding-window model's cache (DynamicSlidingWindowLayer) is not merged approximately:
    serving it under the continuous scheduler is refused at start; a worker made anyway
    answers each request with one error naming the way out and runs on."""
    from transformers import MistralConfig, MistralForCausalLM

    from adapterhub_sdk.server.continuous import ContinuousWorker
    from adapterhub_sdk.server.worker import DoneEvent, ErrorEvent, Job, Prompt

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=4)
    dep = ah.Deployment(MistralForCausalLM(cfg).eval())
    worker = ContinuousWorker(dep)
    answers: list[Any] = []
    done = threading.Event()

    def emit(event: Any) -> None:
        if isinstance(event, (DoneEvent, ErrorEvent)):
            answers.append(event)
            if len(answers) == 2:
                done.set()

    for i in range(2):
        worker.submit(Job(prompt=Prompt("ids", [3, 4, 5, 6, 7]), adapter=None, label="base", max_tokens=4,
                          temperature=0, top_p=1.0, seed=None, stop=[], stream=False, index=i, emit=emit))
    try:
        assert done.wait(60)
        assert worker.alive
    finally:
        worker.stop()
    for event in answers:
        assert isinstance(event, ErrorEvent), event
        assert "DynamicSlidingWindowLayer" in event.error.message and "--scheduler static" in event.error.message
    # and serving it is refused at start, with the way out; the static scheduler serves it
    from adapterhub_sdk.kv_batch import UnsupportedCacheError

    with pytest.raises(UnsupportedCacheError, match="DynamicSlidingWindowLayer") as info:
        create_app(dep)
    assert "--scheduler static" in (info.value.hint or "")
    with _Serving(create_app(dep, scheduler="static")) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "base", "prompt": [3, 4, 5], "max_tokens": 2},
                       timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text

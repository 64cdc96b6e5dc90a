"""Server throughput and latency under a mixed-adapter load: one `adapterhub serve` with N
adapters on one base, against the peer setup of one server process per adapter (each
with its own copy of the base). A local asyncio load generator sends a bounded number of
completion requests, round-robin over the adapters, C at a time.

    .venv/bin/python benchmarks/bench_server.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, median, percentile, table, work_dir, write_results

ADAPTERHUB = str(Path(sys.executable).with_name("adapterhub"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(work: Path, n_adapters: int) -> tuple[Path, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    import adapterhub_sdk as ah

    base = work / "base"
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = ["the", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "red", "blue", "a", "big", "small"]
    text = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(400)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(base)
    fast.save_pretrained(base)
    url = f"sqlite:///{work / 'registry.db'}"
    reg = ah.Registry.open(url)
    for i in range(n_adapters):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        out = work / f"lora{i}"
        model.save_pretrained(out)
        reg.publish(out, name=f"bench/a{i}", version="1.0.0", base=base)
    reg.close()
    return base, url


class Server:
    def __init__(self, base: Path, url: str, adapters: list[str], threads: int, log: Path):
        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ADAPTERHUB_LOAD_PLUGINS": ""}
        cmd = [ADAPTERHUB, "--registry", url, "serve", "--base", str(base), "--port", str(self.port)]
        for a in adapters:
            cmd += ["--adapter", a]
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self) -> None:
        import httpx

        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def _load(targets: list[tuple[str, str]], total: int, concurrency: int, max_tokens: int) -> dict:
    """``targets``: (url, model) pairs used round-robin. Returns wall time and latencies."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            url, model = targets[i % len(targets)]
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/completions", json={
                "model": model, "prompt": "the cat sat on the", "max_tokens": max_tokens, "temperature": 0})
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "rps": total / wall, "p50_ms": 1000 * median(latencies),
            "p99_ms": 1000 * percentile(latencies, 99), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.adapters
    total, conc, max_tokens = (48, 8, 8) if args.quick else (160, 16, 16)
    work = work_dir("server")
    os.environ["ADAPTERHUB_HOME"] = str(work / "home")
    base, url = _build(work, n)
    specs = [f"bench/a{i}@1.0.0" for i in range(n)]
    ours = Server(base, url, specs, threads=2, log=work / "ours.log")
    peers = [Server(base, url, [s], threads=1, log=work / f"peer{i}.log") for i, s in enumerate(specs)]
    results: dict[str, list[dict]] = {"ours": [], "peer": []}
    try:
        for s in [ours, *peers]:
            s.wait()
        ours_targets = [(f"http://127.0.0.1:{ours.port}", f"bench/a{i}") for i in range(n)]
        peer_targets = [(f"http://127.0.0.1:{p.port}", f"bench/a{i}") for i, p in enumerate(peers)]
        asyncio.run(_load(ours_targets, conc, conc, max_tokens))  # warm up both
        asyncio.run(_load(peer_targets, conc, conc, max_tokens))
        for r in range(args.rounds):
            order = [("ours", ours_targets), ("peer", peer_targets)]
            if r % 2:
                order.reverse()
            for label, targets in order:
                res = asyncio.run(_load(targets, total, conc, max_tokens))
                results[label].append(res)
                print(f"round {r + 1} {label}: {res['rps']:.1f} req/s, p50 {res['p50_ms']:.0f} ms, "
                      f"p99 {res['p99_ms']:.0f} ms, errors {res['errors']}", flush=True)
        rss_ours = ours.rss()
        rss_peers = sum(p.rss() for p in peers)
    finally:
        for s in [ours, *peers]:
            s.stop()
    summary = {}
    for label in ("ours", "peer"):
        rows = results[label]
        summary[label] = {k: median([r[k] for r in rows]) for k in ("rps", "p50_ms", "p99_ms")}
    summary["ratio_rps"] = summary["ours"]["rps"] / summary["peer"]["rps"]
    summary["rss_ours"] = rss_ours
    summary["rss_peers"] = rss_peers
    print(table(["setup", "req/s", "p50 ms", "p99 ms", "RSS"], [
        [f"ours: 1 process, {n} adapters", summary["ours"]["rps"], summary["ours"]["p50_ms"],
         summary["ours"]["p99_ms"], f"{rss_ours / 2**20:.0f} MB"],
        [f"peer: {n} processes, 1 adapter each", summary["peer"]["rps"], summary["peer"]["p50_ms"],
         summary["peer"]["p99_ms"], f"{rss_peers / 2**20:.0f} MB"],
    ]))
    print(f"throughput ratio ours/peer: {summary['ratio_rps']:.2f}x")
    write_results("bench_server", {"machine": machine(), "settings": {
        "adapters": n, "requests": total, "concurrency": conc, "max_tokens": max_tokens,
        "model": "Llama hidden 256, 4 layers, BPE vocab 300, LoRA r8 q,v", "rounds": args.rounds,
        "threads": "ours OMP_NUM_THREADS=2; each peer process 1"}, "rounds": results, "summary": summary})


if __name__ == "__main__":
    main()

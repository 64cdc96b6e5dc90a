"""One request alone: per-token time of the continuous scheduler against ``Deployment.generate``.

Setup: bench_serving_load.py's serving base (Llama hidden 256, 4 layers, BPE vocab 300,
float32, eos/pad never the argmax) with one of its LoRA adapters (r=8, q,v), one torch thread.
The same greedy request (a 32-token prompt, ``--tokens`` new tokens, default 128) runs through
``Deployment.generate`` and through a :class:`ContinuousWorker` (jobs submitted directly, no
HTTP: the scheduler's own cost), non-streaming and streaming, interleaved for ``--rounds``
rounds; reported: the median per-token wall time and CPU time of each (whole request / tokens,
prefill included for both; CPU time of this process, or of the server process over HTTP, is
what a loaded machine inflates least), their ratios, and the load average around each round.
``--http`` adds ``adapterhub serve`` processes with either scheduler (static: one
``Deployment.generate`` per batch), a streamed and a whole request each. ``--profile``
writes a cProfile of the continuous runs instead.

    .venv/bin/python benchmarks/bench_single_row.py [--rounds 7] [--tokens 128] [--shape tiny]
        [--http] [--compare-rev REV] [--profile] [--out NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import _common as C  # noqa: E402
from bench_serving_load import build, quiet  # noqa: E402


def run_worker(worker: Any, ids: list[int], adapter: str, tokens: int, stream: bool) -> tuple[float, int]:
    from adapterhub_sdk.server.worker import DoneEvent, ErrorEvent, Job, Prompt

    done = threading.Event()
    out: dict[str, Any] = {}

    def emit(event: Any) -> None:
        if isinstance(event, (DoneEvent, ErrorEvent)):
            out["event"] = event
            done.set()

    job = Job(prompt=Prompt("ids", ids), adapter=adapter, label=adapter, max_tokens=tokens, temperature=0.0,
              top_p=1.0, seed=None, stop=[], stream=stream, index=0, emit=emit)
    t0 = time.perf_counter()
    worker.submit(job)
    done.wait(600)
    dt = time.perf_counter() - t0
    event = out["event"]
    assert isinstance(event, DoneEvent), event
    return dt, event.completion_tokens


def old_worker_class(rev: str) -> Any:
    """``ContinuousWorker`` from ``adapterhub_sdk/server/continuous.py`` at git revision ``rev``."""
    import importlib.util
    import subprocess
    import tempfile

    import adapterhub_sdk.server  # noqa: F401 - the parent package of the module loaded below

    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{rev}:adapterhub_sdk/server/continuous.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "continuous_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("adapterhub_sdk.server._continuous_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.ContinuousWorker


def build_tiny(work: Path) -> tuple[Path, str, Any]:
    """A Llama of hidden 32, 2 layers, with bench_serving_load's tokenizer and one LoRA (r=8, q,v)."""
    import torch
    from bench_serving_load import tokenizer
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterhub_sdk as ah

    fast = tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=1024,
                      tie_word_embeddings=False, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[fast.eos_token_id].zero_()
        model.lm_head.weight[fast.pad_token_id].zero_()
    base = work / "base-tiny"
    model.save_pretrained(base)
    fast.save_pretrained(base)
    url = f"sqlite:///{work / 'registry-tiny.db'}"
    reg = ah.Registry.open(url)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape) * 0.05)
    peft_model.save_pretrained(str(work / "lora-tiny"))
    reg.publish(work / "lora-tiny", name="bench/a0", version="1.0.0", base=base)
    reg.close()
    return base, url, fast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compare-rev", metavar="REV",
                    help="also the continuous worker as it was at git revision REV (its continuous.py loaded "
                         "beside today's), in this process: before/after under the same load")
    ap.add_argument("--http", action="store_true",
                    help="also over HTTP: `adapterhub serve` processes (static and continuous scheduler), "
                         "one streamed and one whole request at a time from this process")
    ap.add_argument("--shape", choices=["serving", "tiny"], default="serving",
                    help="tiny: hidden 32, 2 layers (the scheduler's own Python work dominates)")
    ap.add_argument("--out", default="bench_single_row")
    args = ap.parse_args()
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    import adapterhub_sdk as ah
    from adapterhub_sdk.server.continuous import ContinuousWorker

    work = C.work_dir("single_row")
    base, url, fast = build(work, 1) if args.shape == "serving" else build_tiny(work)
    reg = ah.Registry.open(url)
    dep = ah.Deployment(str(base), registry=reg)
    dep.attach("bench/a0", name="a0")
    ids = fast(" ".join(["the cat sat on the mat"] * 8))["input_ids"][:32]
    worker = ContinuousWorker(dep)
    prof: Any = None
    if args.profile:  # the worker's own thread is what is profiled
        import cProfile

        prof = cProfile.Profile()
        inner = worker._run

        def profiled() -> None:
            prof.enable()
            try:
                inner()
            finally:
                prof.disable()

        worker._run = profiled  # type: ignore[method-assign]
    worker.start()

    def gen() -> tuple[float, int]:
        t0 = time.perf_counter()
        res = dep.generate([ids], "a0", max_new_tokens=args.tokens)[0]
        return time.perf_counter() - t0, res["completion_tokens"]

    cases = {"generate": gen,
             "continuous": lambda: run_worker(worker, ids, "a0", args.tokens, False),
             "continuous_stream": lambda: run_worker(worker, ids, "a0", args.tokens, True)}
    others: list[Any] = []
    if args.compare_rev:
        old = old_worker_class(args.compare_rev)(dep)
        old.start()
        others.append(old)
        cases["rev_continuous"] = lambda: run_worker(old, ids, "a0", args.tokens, False)
        cases["rev_continuous_stream"] = lambda: run_worker(old, ids, "a0", args.tokens, True)
    servers: list[Any] = []

    def cpu_of(pid: int | None) -> float:
        """CPU seconds used so far by process ``pid`` (None: this one)."""
        if pid is None:
            return time.process_time()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    pids: dict[str, int | None] = {name: None for name in cases}
    if args.http:
        import httpx
        from _loadgen import Server, free_port

        def over_http(url: str, stream: bool) -> tuple[float, int]:
            body = {"model": "a0", "prompt": ids, "max_tokens": args.tokens, "temperature": 0, "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {})}
            t0 = time.perf_counter()
            if not stream:
                r = httpx.post(url + "/v1/completions", json=body, timeout=600)
                return time.perf_counter() - t0, int(r.json()["usage"]["completion_tokens"])
            n = 0
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"usage": {' in line:
                        n = int(__import__("json").loads(line[6:])["usage"]["completion_tokens"])
            return time.perf_counter() - t0, n

        for sched in ("static", "continuous"):
            port = free_port()
            cmd = [str(Path(sys.executable).parent / "adapterhub"), "--registry", url, "serve", "--base", str(base),
                   "--port", str(port), "--scheduler", sched, "--adapter", "a0=bench/a0"]
            server = Server(cmd, port, work / f"{sched}.log", args.threads)
            servers.append(server)
            server.wait()
            for stream in (False, True):
                name = f"http_{sched}{'_stream' if stream else ''}"
                cases[name] = lambda u=server.url, st=stream: over_http(u, st)
                pids[name] = server.proc.pid
    for fn in cases.values():  # warm-up
        fn()
    if args.profile:
        import pstats

        prof.clear()
        for _ in range(args.rounds):
            cases["continuous"]()
        worker.stop()
        pstats.Stats(prof).sort_stats("cumtime").print_stats(r"adapterhub_sdk|prometheus|tokeniz|threading|queue", 40)  # noqa: E501
        return
    per: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}  # CPU ms per token: what load does not inflate
    loads = []
    for r in range(args.rounds):
        order = list(cases)[r % len(cases):] + list(cases)[: r % len(cases)]
        loads.append(os.getloadavg())
        for name in order:
            c0 = cpu_of(pids[name])
            dt, n = cases[name]()
            c1 = cpu_of(pids[name])
            assert n == args.tokens, (name, n)
            per[name].append(dt / n * 1000)
            cpu[name].append((c1 - c0) / n * 1000)
    loads.append(os.getloadavg())
    worker.stop()
    for other in others:
        other.stop()
    for server in servers:
        server.stop()
    med = {k: C.median(v) for k, v in per.items()}
    med_cpu = {k: C.median(v) for k, v in cpu.items()}
    ratios = {k: C.median([a / b for a, b in zip(per[k], per["generate"])]) for k in cases if k != "generate"}
    cpu_ratios = {k: C.median([a / b for a, b in zip(cpu[k], cpu["generate"])]) for k in cases if k != "generate"}
    print(C.table(["case", "wall ms/token", "CPU ms/token"],
                  [[k, f"{v:.3f}", f"{med_cpu[k]:.3f}"] for k, v in med.items()]))
    print("wall ratios to generate (median of per-round):", {k: round(v, 3) for k, v in ratios.items()})
    print("CPU ratios to generate (median of per-round):", {k: round(v, 3) for k, v in cpu_ratios.items()})
    print("loadavg:", loads[0], "->", loads[-1])
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True).stdout.strip()
    C.write_results(args.out, {"benchmark": "bench_single_row", "settings": vars(args), "code": {"head": head},
                               "ms_per_token": med, "ratio_to_generate": ratios, "per_round_ms": per,
                               "cpu_ms_per_token": med_cpu, "cpu_ratio_to_generate": cpu_ratios,
                               "per_round_cpu_ms": cpu,
                               "loadavg": loads})


if __name__ == "__main__":
    main()

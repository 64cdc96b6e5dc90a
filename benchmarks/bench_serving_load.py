"""Serving under an open-loop load: the static batcher against the continuous scheduler, one
process per adapter, and ``transformers serve`` (the base alone), on loopback; and the decode
step of 16 rows on 16 adapters against the base-only step.

Setup. A Llama base from ``LlamaConfig`` (hidden 256, intermediate 704, 4 layers, 8 heads,
context 1024, float32) with a byte-level BPE tokenizer (vocab 300) whose ``<eos>`` and
``<pad>`` rows of the (untied) LM head are zero: their logit is exactly 0 while the largest of
the 298 others is positive, so greedy decoding never ends early and every request runs to its
``max_tokens`` (checked: ``not_max_tokens`` counts the ones that did not). 16 LoRA adapters
(r=8, alpha 16, q,v; one seed each) saved by PEFT and published to a fresh SQLite registry.

Workload (one seed, the same for every setup): N requests with Poisson arrivals, each naming
one of the 16 adapters at random, prompt length and ``max_tokens`` each drawn log-uniformly
from 4-256 tokens, greedy, streamed (``stream_options.include_usage``). Reported per run:
requests/s and output tokens/s (completed requests and their tokens over the time from the
first arrival to the last completion), p50/p99 TTFT (first chunk with text) and end-to-end
latency, both from the scheduled arrival; ``os.getloadavg()`` before and after.

1. Saturation: the static batcher under a closed loop of ``--concurrency`` (default 32, twice
   ``--max-batch``) requests in flight over the same workload: its maximum requests/s (median
   of ``--sat-rounds``); the continuous scheduler's is measured the same way, for the record.
2. Offered load = ``--load`` (0.7) x that maximum: each round runs every setup on the same
   arrival schedule, order rotating; medians over ``--rounds``, and the per-round ratios.
   Setups: ``static`` (``adapterhub serve --scheduler static``, or plain ``serve`` before the
   option exists), ``continuous`` (``--scheduler continuous``, when it exists),
   ``per_adapter`` (``--procs`` processes, default 16, each serving ``16/procs`` adapters with
   the continuous scheduler,
   one each) and ``transformers`` (``transformers serve BASE``, every request
   on the base: no adapters). Every server process runs with ``--threads`` torch threads
   (OMP_NUM_THREADS, default 1: on this shared 2-core machine at load ~7 a 16-row decode step
   of this base took ~35 ms with 1 thread and ~550 ms with 2, the threads spinning at their
   barriers while other processes hold the cores). Start times
   (spawn to /health) are recorded: for per_adapter, until the last of its processes answers.
3. Micro-benchmark (in process, ``torch.set_num_threads(--threads)``): one decode step of 16 rows x 1
   token over a KV cache of 128, rows on 16 different adapters (inside ``Deployment.use``)
   against the same step with no adapter, interleaved step by step, ``cache.crop(-1)`` after
   each; the median of per-pair ratios. On the serving base and (``--micro-shape deploy``)
   on bench_deploy.py's base with 4 layers (hidden 1024, vocab 32000, r=16 on q,k,v,o).

    .venv/bin/python benchmarks/bench_serving_load.py [--quick]

``--quick`` (a smoke run, ~2 min on a quiet machine; do not quote it): 4 adapters, 2 processes,
16 requests up to 16 tokens, one round, no transformers serve, a short micro-benchmark on the
serving base.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
from _loadgen import Request, Server, at_rate, free_port, run_load, workload

BIN = Path(sys.executable).parent
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "red", "blue", "a", "big", "small",
         "house", "tree", "under", "over", "green", "bird", "sang", "loud", "quiet", "river"]


def quiet() -> None:
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.filterwarnings("ignore")


def tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8)) for i in range(400)]
    # no byte alphabet: every token is letters or a space, so any sampled token is whole text
    # (a lone byte of a UTF-8 sequence would be held back by incremental detokenizers)
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)


def build(work: Path, n_adapters: int, *, shape: str = "serving") -> tuple[Path, str, Any]:
    """A base, its tokenizer and ``n_adapters`` published LoRA adapters (bench/a0..)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterhub_sdk as ah

    fast = tokenizer()
    torch.manual_seed(0)
    if shape == "serving":
        dims: dict[str, Any] = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8,
                "num_key_value_heads": 8, "vocab_size": len(fast)}
        lora: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    else:  # bench_deploy.py's base with 4 layers
        dims = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
                "num_key_value_heads": 16, "vocab_size": 32000}
        lora = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    cfg = LlamaConfig(**dims, max_position_embeddings=1024, tie_word_embeddings=False,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # <eos>, <pad>: logit exactly 0, never the argmax (see the docstring)
        model.lm_head.weight[fast.eos_token_id].zero_()
        model.lm_head.weight[fast.pad_token_id].zero_()
    base = work / f"base-{shape}"
    model.save_pretrained(base)
    fast.save_pretrained(base)
    url = f"sqlite:///{work / f'registry-{shape}.db'}"
    reg = ah.Registry.open(url)
    peft_model = get_peft_model(model, LoraConfig(**lora))
    for i in range(n_adapters):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        out = work / f"lora-{shape}-{i:02d}"
        peft_model.save_pretrained(str(out))
        reg.publish(out, name=f"bench/a{i}", version="1.0.0", base=base)
    reg.close()
    return base, url, fast


# --------------------------------------------------------------------------- servers


def schedulers() -> list[str]:
    """The ``--scheduler`` choices ``adapterhub serve`` offers ([] before the option exists)."""
    out = subprocess.run([str(BIN / "adapterhub"), "serve", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    for line in out.splitlines():
        if "--scheduler" in line and "[" in line:
            return [c.strip() for c in line.split("[", 1)[1].split("]", 1)[0].split("|")]
    return []


def ours(base: Path, url: str, specs: list[str], log: Path, *, scheduler: str | None, threads: int,
         max_batch: int) -> Server:
    port = free_port()
    cmd = [str(BIN / "adapterhub"), "--registry", url, "serve", "--base", str(base), "--port", str(port),
           "--max-batch", str(max_batch)]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    for s in specs:
        cmd += ["--adapter", s]
    return Server(cmd, port, log, threads)


def transformers_serve(base: Path, log: Path, threads: int) -> Server:
    port = free_port()
    cmd = [str(BIN / "transformers"), "serve", str(base), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu"]
    return Server(cmd, port, log, threads)


class Setup:
    """One way of serving the workload: its processes and the (url, model) of each adapter."""

    def __init__(self, name: str, servers: list[Server], targets: list[tuple[str, str]], note: str = ""):
        self.name, self.servers, self.targets, self.note = name, servers, targets, note
        self.start_s: float | None = None

    def wait(self) -> float:
        t0 = time.perf_counter()
        for s in self.servers:
            s.wait()
        spawn = min(s.t_spawn for s in self.servers)
        self.start_s = max(s.t_spawn + (s.start_s or 0) for s in self.servers) - spawn
        print(f"{self.name}: up in {self.start_s:.1f} s ({len(self.servers)} process(es); waited "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        return self.start_s

    def rss(self) -> int:
        return sum(s.rss() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


# --------------------------------------------------------------------------- micro-benchmark


def micro(base: Path, url: str, n: int, steps: int, seq: int = 128, threads: int = 1) -> dict[str, Any]:
    import torch

    import adapterhub_sdk as ah
    from adapterhub_sdk.generation import _cache_kwargs, _cache_of

    torch.set_num_threads(threads)
    reg = ah.Registry.open(url)
    dep = ah.Deployment(str(base), registry=reg)
    names = [dep.attach(f"bench/a{i}@1.0.0").name for i in range(n)]
    rows = [names[i % n] for i in range(16)]
    cache_kw, extra = _cache_kwargs(dep.model)
    vocab = int(dep.model.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (16, seq), generator=g)
    step = torch.randint(0, vocab, (16, 1), generator=g)

    def call(who: str, **kw: Any) -> Any:
        with torch.no_grad():
            if who == "base":
                return dep.model(**kw, use_cache=True, **extra)
            with dep.use(rows):
                return dep.model(**kw, use_cache=True, **extra)

    caches = {who: _cache_of(call(who, input_ids=ids)) for who in ("adapters", "base")}
    times: dict[str, list[float]] = {"adapters": [], "base": []}
    logits: dict[str, Any] = {}
    warm = 5
    for k in range(steps + warm):
        for who in (("adapters", "base") if k % 2 == 0 else ("base", "adapters")):
            t0 = time.perf_counter()
            out = call(who, input_ids=step, **{cache_kw: caches[who]})
            dt = time.perf_counter() - t0
            caches[who].crop(-1)
            logits[who] = out.logits[:, -1]
            if k >= warm:
                times[who].append(dt)
    pairs = [a / b for a, b in zip(times["adapters"], times["base"])]
    effect = float((logits["adapters"] - logits["base"]).abs().max())
    reg.close()
    return {"adapters": n, "rows": 16, "kv_cache": seq, "steps": steps, "threads": threads,
            "adapters_step_ms": 1e3 * C.median(times["adapters"]), "base_step_ms": 1e3 * C.median(times["base"]),
            "ratio_median_of_pairs": C.median(pairs),
            "ratio_of_medians": C.median(times["adapters"]) / C.median(times["base"]),
            "pair_ratio_p10_p90": [C.percentile(pairs, 10), C.percentile(pairs, 90)],
            "max_abs_logit_diff_vs_base": effect, "loadavg_after": os.getloadavg()}


# --------------------------------------------------------------------------- the run


def keep(res: dict[str, Any], full: bool) -> dict[str, Any]:
    return res if full else {k: v for k, v in res.items() if k != "requests"}


def line(label: str, res: dict[str, Any]) -> str:
    la, lb = res["loadavg_before"][0], res["loadavg_after"][0]
    return (f"{label}: {res['rps']:.2f} req/s, {res['tok_s']:.0f} tok/s, TTFT p50 {res['p50_ttft_ms']:.0f} / p99 "
            f"{res['p99_ttft_ms']:.0f} ms, e2e p50 {res['p50_e2e_ms']:.0f} / p99 {res['p99_e2e_ms']:.0f} ms, "
            f"errors {res['errors']}, short {res['not_max_tokens']}, load {la:.1f}->{lb:.1f}")


METRICS = ("rps", "tok_s", "p50_ttft_ms", "p99_ttft_ms", "p50_e2e_ms", "p99_e2e_ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int, help="requests per run (default 160; quick 16)")
    ap.add_argument("--rounds", type=int, help="open-loop rounds (default 3; quick 1)")
    ap.add_argument("--sat-rounds", type=int, default=None, help="saturation rounds (default 2; quick 1)")
    ap.add_argument("--adapters", type=int, help="adapters (default 16; quick 4)")
    ap.add_argument("--procs", type=int, help="processes of the per-adapter setup (default: one per adapter)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a share of static's maximum")
    ap.add_argument("--max-output", type=int, help="largest max_tokens drawn (default 256; quick 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server process and in the micro")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--setups", default="static,continuous,per_adapter,transformers")
    ap.add_argument("--micro-steps", type=int, help="decode steps per side (default 60; quick 10)")
    ap.add_argument("--micro-shape", default=None, help="serving,deploy (default both; quick serving)")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--out", default=None, help="results name (default bench_serving_load[_quick])")
    args = ap.parse_args()
    q = args.quick
    out_name = args.out or ("bench_serving_load_quick" if q else "bench_serving_load")
    n_req = args.requests or (16 if q else 160)
    rounds = args.rounds or (1 if q else 3)
    sat_rounds = args.sat_rounds or (1 if q else 2)
    n_ad = args.adapters or (4 if q else 16)
    procs = args.procs or (2 if q else n_ad)
    max_out = args.max_output or (16 if q else 256)
    micro_steps = args.micro_steps or (10 if q else 60)
    shapes = (args.micro_shape or ("serving" if q else "serving,deploy")).split(",")
    wanted = args.setups.split(",")
    if q and args.setups == ap.get_default("setups"):
        wanted = ["static", "continuous", "per_adapter"]
    quiet()
    t_all = time.perf_counter()
    work = C.work_dir("serving_load")
    os.environ["ADAPTERHUB_HOME"] = str(work / "home")
    base, url, tok = build(work, n_ad)
    print(f"built base and {n_ad} adapters in {time.perf_counter() - t_all:.0f} s", flush=True)
    text_ids = tok(" ".join(WORDS[(i * 5 + i // 7) % len(WORDS)] for i in range(3000)))["input_ids"]
    reqs = workload(n_req, targets=n_ad, seed=args.seed, text_ids=text_ids, decode=tok.decode,
                    prompt_range=(4, 256), output_range=(4, max_out))
    specs = [f"bench/a{i}@1.0.0" for i in range(n_ad)]
    choices = schedulers()
    skipped: dict[str, str] = {}
    setups: dict[str, Setup] = {}
    def targets_for(server: Server) -> list[tuple[str, str]]:
        return [(server.url, f"bench/a{i}") for i in range(n_ad)]

    if "static" in wanted:
        sched = "static" if "static" in choices else None
        s = ours(base, url, specs, work / "static.log", scheduler=sched, threads=args.threads, max_batch=args.max_batch)
        setups["static"] = Setup("static", [s], targets_for(s),
                                 "--scheduler static" if sched else "adapterhub serve (no --scheduler option yet)")
    if "continuous" in wanted:
        if "continuous" in choices:
            s = ours(base, url, specs, work / "continuous.log", scheduler="continuous", threads=args.threads,
                     max_batch=args.max_batch)
            setups["continuous"] = Setup("continuous", [s], targets_for(s), "--scheduler continuous")
        else:
            skipped["continuous"] = f"adapterhub serve offers no --scheduler continuous (choices: {choices or 'none'})"
    for setup in setups.values():
        setup.wait()
    if "per_adapter" in wanted:
        per = max(1, -(-n_ad // procs))
        groups = [list(range(k, min(n_ad, k + per))) for k in range(0, n_ad, per)]
        psched = "continuous" if "continuous" in choices else None
        servers = [ours(base, url, [specs[i] for i in g], work / f"proc{k}.log", scheduler=psched, threads=args.threads,
                        max_batch=args.max_batch) for k, g in enumerate(groups)]
        tgt = [("", "")] * n_ad
        for srv, g in zip(servers, groups):
            for i in g:
                tgt[i] = (srv.url, f"bench/a{i}")
        setups["per_adapter"] = Setup("per_adapter", servers, tgt, f"{len(servers)} processes x {per} adapter(s), "
                                     f"{psched or 'default'} scheduler")
        try:
            setups["per_adapter"].wait()
        except RuntimeError as exc:
            skipped["per_adapter"] = str(exc)[:600]
            setups.pop("per_adapter").stop()
    if "transformers" in wanted:
        s = transformers_serve(base, work / "transformers.log", args.threads)
        try:
            setups["transformers"] = Setup("transformers", [s], [(s.url, str(base))] * n_ad,
                                           "transformers serve BASE (no adapters)")
            setups["transformers"].wait()
            probe = run_load([(s.url, str(base))], [Request(0, 0.0, 0, "the cat sat", 3, 4)], concurrency=1)
            if probe["ok"] != 1:
                raise RuntimeError(f"a probe completion failed: {probe['first_errors']}")
        except RuntimeError as exc:
            skipped["transformers"] = str(exc)[:600]
            setups.pop("transformers", None)
            s.stop()
    print(f"setups: {', '.join(setups)}; skipped: {skipped or 'none'}", flush=True)
    results: dict[str, Any] = {"skipped": skipped, "start_s": {k: v.start_s for k, v in setups.items()},
                               "notes": {k: v.note for k, v in setups.items()}}
    try:
        warm = [Request(i, 0.0, i % n_ad, "the cat sat on the mat", 6, 8) for i in range(2 * n_ad)]
        for setup in setups.values():
            run_load(setup.targets, warm, concurrency=8)
        sat: dict[str, list[dict[str, Any]]] = {}
        for r in range(sat_rounds):
            for sname in [n for n in ("static", "continuous") if n in setups][:: 1 if r % 2 == 0 else -1]:
                res = run_load(setups[sname].targets, reqs, concurrency=args.concurrency)
                sat.setdefault(sname, []).append(res)
                print(line(f"saturation {r + 1} {sname} (closed loop, {args.concurrency} in flight)", res), flush=True)
        ref = "static" if "static" in sat else next(iter(sat), None)
        max_rps = C.median([x["rps"] for x in sat[ref]]) if ref else 1.0
        offered = args.load * max_rps
        print(f"offered load: {args.load} x {max_rps:.2f} = {offered:.2f} req/s", flush=True)
        schedule = at_rate(reqs, offered)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
        names = list(setups)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                res = run_load(setups[name].targets, schedule)
                runs[name].append(res)
                print(line(f"round {r + 1} {name}", res), flush=True)
            C.write_results(f"{out_name}_partial", {  # a run cut short keeps its rounds
                "sat": {k: [keep(x, False) for x in v] for k, v in sat.items()}, **results,
                "runs": {k: [keep(x, False) for x in v] for k, v in runs.items()}})
        results["rss"] = {k: v.rss() for k, v in setups.items()}
    finally:
        for setup in setups.values():
            setup.stop()
    summary: dict[str, Any] = {"static_max_rps": max_rps, "offered_rps": offered, "saturation": {
        k: {m: C.median([x[m] for x in v]) for m in METRICS} for k, v in sat.items()}}
    for rname, rs in runs.items():
        summary[rname] = {m: C.median([x[m] for x in rs]) for m in METRICS}
        summary[rname]["errors"] = sum(x["errors"] for x in rs)
        summary[rname]["not_max_tokens"] = sum(x["not_max_tokens"] for x in rs)
    if "static" in runs and "continuous" in runs:
        st, co = runs["static"], runs["continuous"]
        summary["goals"] = {
            "p99_e2e_continuous_over_static": summary["continuous"]["p99_e2e_ms"] / summary["static"]["p99_e2e_ms"],
            "p99_e2e_per_round": [c["p99_e2e_ms"] / s["p99_e2e_ms"] for s, c in zip(st, co)],
            "p99_e2e_goal": "<= 0.333",
            "rps_continuous_over_static": summary["continuous"]["rps"] / summary["static"]["rps"],
            "rps_per_round": [c["rps"] / s["rps"] for s, c in zip(st, co)],
            "rps_goal": ">= 1.0"}
    rows = [[k, v.note, v.start_s, summary[k]["rps"], summary[k]["tok_s"], summary[k]["p50_ttft_ms"],
             summary[k]["p99_ttft_ms"], summary[k]["p50_e2e_ms"], summary[k]["p99_e2e_ms"],
             f"{results['rss'][k] / 2**20:.0f} MB"] for k, v in setups.items()]
    print(C.table(["setup", "how", "start s", "req/s", "tok/s", "TTFT p50", "TTFT p99", "e2e p50", "e2e p99",
                   "RSS"], rows))
    if "goals" in summary:
        g = summary["goals"]
        print(f"goals at {args.load:.0%} load: p99 e2e continuous/static {g['p99_e2e_continuous_over_static']:.3f} "
              f"(<= 0.333), throughput {g['rps_continuous_over_static']:.3f} (>= 1)")
    micro_res: dict[str, Any] = {}
    if not args.no_micro:
        for shape in shapes:
            if shape == "serving":
                b, u = base, url
            else:
                b, u, _ = build(work, 16, shape=shape)
            micro_res[shape] = m = micro(b, u, min(16, n_ad) if shape == "serving" else 16, micro_steps,
                                              threads=args.threads)
            print(f"decode step ({shape}): 16 rows x {m['adapters']} adapters {m['adapters_step_ms']:.2f} ms, "
                  f"base {m['base_step_ms']:.2f} ms, ratio {m['ratio_median_of_pairs']:.3f} (median of pairs; "
                  f"of medians {m['ratio_of_medians']:.3f}; goal <= 1.3)", flush=True)
    git = ["git", "-C", str(C.ROOT)]
    code = {"head": subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
            "uncommitted_in_serving": subprocess.run(
                [*git, "status", "--short", "adapterhub_sdk/server", "adapterhub_sdk/cli/serve.py",
                 "adapterhub_sdk/generation.py", "adapterhub_sdk/deploy.py", "adapterhub_sdk/multilora.py"],
                capture_output=True, text=True).stdout.split("\n")}
    settings = {"code": code, "requests": n_req, "rounds": rounds, "sat_rounds": sat_rounds, "adapters": n_ad, "procs": procs,
                "concurrency": args.concurrency, "max_batch": args.max_batch, "load": args.load,
                "prompt_tokens": "log-uniform 4-256", "max_tokens": f"log-uniform 4-{max_out}", "seed": args.seed,
                "temperature": 0, "scheduler_choices": choices, "quick": q, "threads": args.threads,
                "model": "Llama hidden 256, 4 layers, BPE vocab 300, context 1024, eos/pad LM-head rows zero; "
                         "LoRA r8 q,v"}
    path = C.write_results(out_name, {
        "settings": settings, "summary": summary, "micro": micro_res, **results,
        "saturation_runs": {k: [keep(x, False) for x in v] for k, v in sat.items()},
        "runs": {k: [keep(x, not q) for x in v] for k, v in runs.items()},
        "total_s": time.perf_counter() - t_all})
    print(f"results: {path} ({time.perf_counter() - t_all:.0f} s in all)")


if __name__ == "__main__":
    main()

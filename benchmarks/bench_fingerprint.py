"""Fingerprint throughput on a sharded safetensors base, as a user runs it: fresh processes.

Builds a TinyLlama-1.1B-shaped base (bf16, random bytes: 22 layers, hidden 2048,
intermediate 5632, 4 KV heads, vocab 32000; ~2.2 GB) in 5 shards with a
``model.safetensors.index.json``, reads every file once so the page cache is warm, then
per round (order rotated, >= 5 rounds, medians and per-round ratios reported), each
contender a fresh process, its wall time and CPU seconds (user + system, all threads,
from ``getrusage`` of the waited-for child) measured from outside:

* ours:    ``adapterhub fingerprint DIR --no-cache --json`` (the CLI entry point)
* pool:    ``peer_sha256.py pool FILES``: ``hashlib.sha256`` of each file on a
           ``ThreadPoolExecutor`` (the peer a user writes; the target is >= 0.95x it)
* chunks:  ``peer_sha256.py chunks FILES``: the same over 8 MiB chunks (``os.preadv``)
* one:     ``peer_sha256.py one FILES``: one thread, 1 MiB ``readinto``
* blake3:  ``peer_sha256.py blake3 FILES``: BLAKE3, multithreaded (context: another hash)
* openssl: ``openssl dgst -sha256 FILES`` (context)

Each round also times the start of both kinds of process on a one-tensor file
(``adapterhub fingerprint`` and ``peer_sha256.py pool``), the in-process call
``fingerprint(path, use_cache=False)`` (the hashing engine without process start), and a
scaling probe (in-memory sha256 on 1 thread vs all: what a second core offers right now).

Then the cached path: with ``ADAPTERHUB_HOME`` in a fresh temp dir, ``fingerprint(path)``
twice (``use_cache=True``); the second call is timed (target < 50 ms). Reference floor:
reading the index and stat-ing each shard, which any cache keyed on file identity needs.

    .venv/bin/python benchmarks/bench_fingerprint.py [--quick] [--rounds N] [--keep] [--base DIR]
        [--small-tensors N] [--before TREE]

``--quick`` builds a 1-layer model (~350 MB) for CI smoke runs. The base is deleted at the
end unless ``--keep``; ``--base DIR`` measures an existing base instead of building one;
``--small-tensors N`` builds one file of N small tensors instead (the per-tensor cost);
``--before TREE`` adds ``adapterhub fingerprint`` run from another source tree (e.g. an
earlier commit unpacked with ``git archive``) to every round, for a same-run before/after.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import numpy as np
import torch
from safetensors.torch import save_file

import adapterhub_sdk as ah
from adapterhub_sdk.safetensors_io import read_header as ah_read_header

VOCAB, HIDDEN, INTER, KV = 32000, 2048, 5632, 256  # TinyLlama-1.1B: 32 heads x 64, 4 KV heads


def llama_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
        ]
    out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return out


def build_base(root: Path, layers: int, n_shards: int, seed: int = 0) -> tuple[list[Path], int]:
    """Write the sharded base. Returns (shard paths, total bytes of tensor data)."""
    shapes = llama_shapes(layers)
    nbytes = [2 * int(np.prod(s)) for _, s in shapes]
    total = sum(nbytes)
    target = total / n_shards
    groups: list[list[int]] = [[]]
    acc = 0
    for i, n in enumerate(nbytes):
        if groups[-1] and acc + n / 2 > target * len(groups) and len(groups) < n_shards:
            groups.append([])
        groups[-1].append(i)
        acc += n
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    files = []
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for i in idx:
            name, shape = shapes[i]
            raw = rng.bit_generator.random_raw(nbytes[i] // 8 + 1).view(np.uint8)[: nbytes[i]]
            tensors[name] = torch.from_numpy(raw).view(torch.bfloat16).reshape(shape)
            weight_map[name] = fname
        save_file(tensors, str(root / fname), metadata={"format": "pt"})
        files.append(root / fname)
        del tensors
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 32,
        "num_key_value_heads": 4, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"}, indent=2))
    return files, total


def build_small_tensors(root: Path, n: int, seed: int = 0) -> None:
    """One file of ``n`` small bf16 tensors (4 KB, 32 KB, 256 KB in turn), as a mixture-of-experts
    checkpoint has tens of thousands: the per-tensor cost of hashing, not the per-byte one."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(n):
        numel = (2048, 16384, 131072)[i % 3]
        raw = rng.bit_generator.random_raw(numel // 4).view(np.uint8)
        tensors[f"model.layers.{i // 256}.mlp.experts.{i % 256}.weight"] = torch.from_numpy(raw).view(torch.bfloat16)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})


def hashlib_stream(files: list[Path]) -> list[str]:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    out = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
        out.append(h.hexdigest())
    return out


def ours(base: Path) -> str:
    return ah.fingerprint(base, use_cache=False, progress=False).digest


def cpu_now() -> float:
    """CPU seconds used so far by this process (all threads) and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


_PROBE = os.urandom(8 << 20)


def scaling_probe(threads: int, pieces: int = 16) -> float:
    """In-memory sha256 of ``pieces`` x 8 MiB on 1 thread vs ``threads`` threads: the speedup
    the machine offers to parallel hashing right now (other tenants' load included)."""
    def one(_: int) -> bytes:
        return hashlib.sha256(_PROBE).digest()

    t0 = time.perf_counter()
    list(map(one, range(pieces)))
    t1 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(pieces)))
    t2 = time.perf_counter()
    return (t1 - t0) / (t2 - t1)


def cache_floor(base: Path) -> int:
    """What any identity-keyed cache must do: read the index, stat each shard."""
    index = base / "model.safetensors.index.json"
    if not index.exists():  # one file
        return sum(f.stat().st_size for f in base.glob("*.safetensors"))
    wm = json.loads(index.read_text())["weight_map"]
    return sum(os.stat(base / f).st_size for f in sorted(set(wm.values())))


def adapterhub_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("adapterhub")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "adapterhub_sdk"]


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its threads, stdout) of one fresh process."""
    c0 = cpu_children()
    t0 = time.perf_counter()
    res = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, cpu_children() - c0, res.stdout


def cpu_children() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def contenders(base: Path, files: list[Path], tiny: Path) -> dict[str, list[str]]:
    peer = [sys.executable, str(C.BENCH_DIR / "peer_sha256.py")]
    shards = [str(f) for f in files]
    out = {
        "ours": [*adapterhub_cmd(), "fingerprint", str(base), "--no-cache", "--json"],
        "pool": [*peer, "pool", *shards],
        "chunks": [*peer, "chunks", *shards],
        "one": [*peer, "one", *shards],
    }
    if importlib.util.find_spec("blake3") is not None:
        out["blake3"] = [*peer, "blake3", *shards]
    if shutil.which("openssl"):
        out["openssl"] = ["openssl", "dgst", "-sha256", *shards]
    out["start_ours"] = [*adapterhub_cmd(), "fingerprint", str(tiny), "--no-cache", "--json"]
    out["start_pool"] = [*peer, "pool", str(tiny)]
    return out


LABELS = {
    "ours": "ours: adapterhub fingerprint DIR --no-cache",
    "pool": "peer: sha256 per file, thread pool",
    "chunks": "peer: sha256 per 8 MiB chunk, thread pool",
    "one": "peer: sha256 per file, one thread",
    "blake3": "context: blake3 per file, multithreaded",
    "openssl": "context: openssl dgst -sha256",
    "in_process": "ours in process: fingerprint(use_cache=False)",
    "start_ours": "start: adapterhub fingerprint <1-tensor file>",
    "start_pool": "start: peer_sha256.py pool <1-tensor file>",
    "before": "ours from --before TREE",
    "start_before": "start: ours from --before TREE",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~350 MB base for smoke runs")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cache-rounds", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the generated base under benchmarks/_work")
    ap.add_argument("--base", type=Path, help="measure this existing sharded base instead of building one")
    ap.add_argument("--small-tensors", type=int, metavar="N",
                    help="build one file of N small tensors (e.g. 30000, ~3 GB) instead of the Llama base")
    ap.add_argument("--before", type=Path, metavar="TREE",
                    help="also run adapterhub fingerprint from this source tree (PYTHONPATH=TREE), e.g. an "
                         "earlier commit's `git archive`: a same-run before/after comparison")
    args = ap.parse_args()
    layers, shards = (1, 4) if args.quick else (22, 5)

    work = C.work_dir(f"fingerprint-{os.getpid()}")
    base = args.base or work / "base"
    try:
        t0 = time.perf_counter()
        if args.base is None:
            base.mkdir()
            if args.small_tensors:
                build_small_tensors(base, args.small_tensors)
            else:
                build_base(base, layers, shards)
        files = sorted(base.glob("*.safetensors"))
        file_bytes = sum(f.stat().st_size for f in files)
        n_tensors = sum(len(ah_read_header(f).tensors) for f in files)
        gb = file_bytes / 1e9
        print(f"base: {len(files)} shards, {gb:.2f} GB, {n_tensors} tensors ({time.perf_counter() - t0:.1f}s)")
        tiny = work / "tiny.safetensors"
        save_file({"w": torch.zeros(4, 4)}, str(tiny))

        # byte-compiled files are written on the warm-up run, as an installed package has them
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["ADAPTERHUB_HOME"] = str(work / "home")
        runs = contenders(base, files, tiny)
        envs = {n: env for n in runs}
        if args.before:
            for n in ("before", "start_before"):
                runs[n] = runs["ours" if n == "before" else "start_ours"]
                envs[n] = {**env, "PYTHONPATH": str(args.before.resolve())}
        # warm the page cache, the bytecode caches and every code path once; peers must agree
        hl = hashlib_stream(files)
        fp0 = ours(base)
        for name, argv in runs.items():
            out = run_child(argv, envs[name])[2]
            if name in ("ours", "before"):
                assert json.loads(out)["fingerprint"] == fp0, "CLI and in-process fingerprints differ"
            elif name in ("pool", "one", "openssl"):
                got = [line.rsplit("= ", 1)[-1].strip() for line in out.splitlines()]
                assert got == hl, f"{name} and hashlib disagree"

        names = [*runs, "in_process"]
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        probe: list[float] = []
        load: list[float] = []
        threads = os.cpu_count() or 1
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            probe.append(scaling_probe(threads))
            for n in order:
                if n == "in_process":
                    c0 = cpu_now()
                    dt, out = C.timed(ours, base)
                    assert out == fp0, "fingerprint changed between rounds"
                    dc = cpu_now() - c0
                else:
                    dt, dc, _ = run_child(runs[n], envs[n])
                times[n].append(dt)
                cpu[n].append(dc)
            load.append(os.getloadavg()[0])
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names)
                  + f", probe {probe[-1]:.2f}x, load {load[-1]:.2f}", flush=True)

        med = {n: C.median(times[n]) for n in names}
        cpu_gb = {n: C.median(cpu[n]) / gb for n in names}
        per_round = {n: [p / o for p, o in zip(times[n], times["ours"])] for n in names}
        ratio = {n: C.median(per_round[n]) for n in names}
        target = 0.95

        rows = []
        for n in names:
            hashing = not n.startswith("start_")
            rows.append([LABELS[n], med[n], gb / med[n] if hashing else "", C.median(cpu[n]),
                         cpu_gb[n] if hashing else "", f"{ratio[n]:.2f}x" if hashing else ""])
        print()
        print(f"hashing {gb:.2f} GB, warm page cache, {args.rounds} rounds, fresh processes "
              f"(ratio = peer time / our time, median of per-round ratios)")
        print(C.table(["what", "median s", "GB/s", "CPU s", "CPU s/GB", "peer/ours"], rows))
        met = ratio["pool"] >= target
        print(f"target: ours >= {target}x the thread-pool peer: {ratio['pool']:.2f}x, "
              f"{'met' if met else 'NOT met'}; per round: {', '.join(f'{x:.2f}' for x in per_round['pool'])}")
        print(f"scaling probe (in-memory sha256, 1 vs {threads} threads): "
              f"{', '.join(f'{x:.2f}' for x in probe)} (median {C.median(probe):.2f}x); "
              f"load average per round: {', '.join(f'{x:.1f}' for x in load)}")
        print()

        # cached second call
        first, second, later, floor = [], [], [], []
        home_root = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
        old_home = os.environ.get("ADAPTERHUB_HOME")
        try:
            for r in range(args.cache_rounds):
                os.environ["ADAPTERHUB_HOME"] = str(home_root / f"home{r}")
                d1, fp1 = C.timed(ah.fingerprint, base, progress=False)
                d2, fp2 = C.timed(ah.fingerprint, base, progress=False)
                d3, _ = C.timed(ah.fingerprint, base, progress=False)
                df, _ = C.timed(cache_floor, base)
                assert fp1.digest == fp2.digest == fp0, "cached fingerprint differs"
                first.append(d1)
                second.append(d2)
                later.append(d3)
                floor.append(df)
        finally:
            if old_home is None:
                os.environ.pop("ADAPTERHUB_HOME", None)
            else:
                os.environ["ADAPTERHUB_HOME"] = old_home
        sec_ms = C.median(second) * 1e3
        print(C.table(["cached path (use_cache=True)", "median ms", "target", "met"], [
            ["2nd call (cache hit)", sec_ms, "< 50 ms", "yes" if sec_ms < 50 else "NO"],
            ["3rd call (cache hit)", C.median(later) * 1e3, "", ""],
            ["1st call (hash + cache write)", C.median(first) * 1e3, "", ""],
            ["floor: read index + stat shards", C.median(floor) * 1e3, "", ""],
        ]))

        out = C.write_results("bench_fingerprint_small_tensors" if args.small_tensors else "bench_fingerprint", {
            "quick": args.quick,
            "data": {"files": len(files), "file_bytes": file_bytes, "tensors": n_tensors, "dtype": "bf16",
                     "layers": None if args.base or args.small_tensors else layers,
                     "small_tensors": args.small_tensors},
            "rounds": args.rounds,
            "commands": {n: [str(a) for a in argv[:4]] for n, argv in runs.items()},
            "seconds": times,
            "cpu_s": cpu,
            "median_s": med,
            "cpu_s_per_gb": cpu_gb,
            "per_round_ratio_peer_over_ours": per_round,
            "ratio_peer_over_ours": ratio,
            "target": {"ratio_vs_pool": target, "met": met},
            "scaling_probe": probe,
            "loadavg_per_round": load,
            "threads": threads,
            "cached": {"second_call_ms": [x * 1e3 for x in second], "third_call_ms": [x * 1e3 for x in later],
                       "first_call_ms": [x * 1e3 for x in first], "floor_ms": [x * 1e3 for x in floor],
                       "second_call_median_ms": sec_ms, "target_ms": 50, "target_met": sec_ms < 50},
        })
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Serving many LoRA adapters on one base: ``Deployment`` against PEFT on the same files.

Builds a Llama-shaped base from ``LlamaConfig`` (float32; hidden 1024, intermediate 2816,
8 layers, 16 heads / 16 KV heads, vocab 32000, untied LM head: 168.3M parameters, 673 MB;
``--layers 4``: 116.9M, 468 MB, for a busy machine) and 33 LoRA adapters with PEFT
(r=16, alpha=32, on q,k,v,o; weights randomised, one seed each), each saved by
``save_pretrained`` and published to a fresh SQLite registry pinned to the base. PEFT's
peer loads the same adapters from directories ``Registry.pull`` wrote (pulled before any
timing). ``torch.set_num_threads(--threads)`` (default 2).

Timing on a shared 2-core machine is noisy (other processes come and go): every round runs
ours and its peer back to back, order rotating, after one dropped warm-up round, and the
reported ratio is the median over rounds of the per-round ratio (a burst of load hits both
sides of a pair); the ratio of the two medians is reported beside it.

Measured (one process; ours: a ``Deployment``; peer: a ``PeftModel`` on its own copy of the base):

1. memory: RSS (after ``gc.collect`` + ``malloc_trim``) and ``Deployment.memory()`` before
   and after attaching 32 adapters, against the sum of their registry file sizes and
   against 32 copies of the base. Reported beside it: the per-row A/B stacks a mixed
   batch leaves cached (``memory()["batch_cache_bytes"]``) after the 16-row batch of 4.
2. attach: ``Deployment.attach("bench/loraNN@1.0.0")`` (registry lookup, every blob read
   and sha256-verified in memory, fingerprint verdict, tensors prepared) against PEFT
   ``PeftModel.load_adapter(pulled_dir, adapter_name=...)``, with 1, 8, 16 and 32
   adapters already resident on each side; 5 rounds per level. The probe is detached
   (``detach`` / ``delete_adapter``, untimed) after each round.
3. switch: ours ``with dep.use(name, batch_size=16): pass`` (what selecting an adapter
   for a request costs: one row->slot list), and for a 16-row list of 16 names; peer
   ``PeftModel.set_adapter(name)``; both cycling over the 32 resident adapters.
4. forward, a batch of 16 rows on 16 different adapters (rows i uses adapter i):
   prefill of 16 x ``--prefill`` (default 128) tokens, and one decode step of 16 x 1
   token over a KV cache of that length. Ours: the model called inside
   ``dep.use(names)`` (what ``Deployment.generate`` does); base: the same model called
   outside ``use()`` (the hooks return at once: no adapter work); peer: PEFT with
   ``adapter_names=names``. All with ``use_cache=True, logits_to_keep=1`` (generation's
   arguments: the LM head runs on the last position only). Every timed prefill of ours
   starts without cached per-row stacks (a new batch: building them is in the timing);
   decode steps reuse the stacks of their batch, as a generation does. Each decode step is followed,
   untimed, by ``cache.crop(-1)`` so every step sees a cache of the same length. Logits of
   ours and PEFT are compared (max abs diff), and against the base (the adapters matter).
   Prefill: 5 rounds of one forward per side. Decode: 30 rounds of 3 steps per side,
   interleaved step by step. Then one more prefill and 5 decode steps of ours run under
   ``cProfile``: the share of the forward spent inside our forward hooks
   (``MultiLoraLinear._hook``: all the adapter work) estimates the overhead from one run,
   without comparing two separately timed forwards.

    .venv/bin/python benchmarks/bench_deploy.py [--quick] [--rounds N] [--layers N] [--threads N]

``--quick``: 2 layers, 16 x 32 prefill, 3 rounds (a smoke run; do not quote its numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import os
import pstats
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import _common as C

N_ADAPTERS = 32  # resident; one more is the attach probe
LEVELS = (1, 8, 16, 32)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def quiet() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def build(work: Path, layers: int, n: int) -> tuple[Path, list[Path], dict[str, Any]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shapes = {"vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": layers,
              "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 1024}
    model = LlamaForCausalLM(LlamaConfig(**shapes, tie_word_embeddings=False)).eval()
    base_dir = work / "base"
    model.save_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    dirs = []
    for k in range(n):
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        d = work / "adapters" / f"lora{k:02d}"
        peft_model.save_pretrained(d)
        dirs.append(d)
    del peft_model, model
    gc.collect()
    return base_dir, dirs, shapes


_libc = None


def rss() -> int:
    """Resident bytes after a GC and returning freed heap to the OS (glibc ``malloc_trim``)."""
    import psutil

    global _libc
    gc.collect()
    try:
        _libc = _libc or ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def clock() -> float:
    return time.perf_counter()


def hook_share(call, **kw) -> tuple[float, float, Any]:
    """(seconds in MultiLoraLinear._hook, seconds of the whole call, output) for one profiled call."""
    prof = cProfile.Profile()
    prof.enable()
    t0 = clock()
    out = call(**kw)
    total = clock() - t0
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    hook = sum(v[3] for k, v in stats.items() if k[2] == "_hook" and k[0].endswith("deploy.py"))
    return hook, total, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 5, quick 3)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 8, quick 2)")
    ap.add_argument("--prefill", type=int, default=None, help="prefill tokens per row (default 128, quick 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep benchmarks/_work/deploy")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    layers = args.layers or (2 if args.quick else 8)
    seq = args.prefill or (32 if args.quick else 128)
    quiet()
    work = C.work_dir("deploy")
    os.environ["ADAPTERHUB_HOME"] = str(work / "home")
    import torch

    torch.set_num_threads(args.threads)
    import adapterhub_sdk as ah
    from adapterhub_sdk.generation import _cache_kwargs, _cache_of

    t_start = clock()
    try:
        base_dir, dirs, shapes = build(work, layers, N_ADAPTERS + 1)
        reg = ah.Registry.open(f"sqlite:///{work / 'registry.db'}", blobs=work / "blobs")
        specs, pulled, file_bytes = [], [], []
        for k, d in enumerate(dirs):
            res = reg.publish(d, name=f"bench/lora{k:02d}", version="1.0.0", base=base_dir)
            specs.append(f"{res.name}@{res.version}")
            pulled.append(reg.pull(specs[-1], work / "pulled" / f"lora{k:02d}"))
            file_bytes.append(reg.show(specs[-1]).size)
        names = [f"lora{k:02d}" for k in range(N_ADAPTERS + 1)]
        probe_spec, probe_dir = specs[N_ADAPTERS], pulled[N_ADAPTERS]
        print(f"built base ({layers} layers) and {len(dirs)} adapters of {file_bytes[0] / 1e6:.2f} MB "
              f"in {clock() - t_start:.0f} s")

        # ------------------------------------------------------------ 1. memory
        dep = ah.Deployment(str(base_dir), registry=reg)
        mem0 = dep.memory()
        rss0 = rss()
        attach_cold = []
        for k in range(N_ADAPTERS):
            t0 = clock()
            dep.attach(specs[k], name=names[k])
            attach_cold.append(clock() - t0)
        rss1 = rss()
        mem1 = dep.memory()
        files32 = sum(file_bytes[:N_ADAPTERS])
        tensor_bytes32 = mem1["adapter_bytes"]
        memory = {
            "base_bytes": mem0["base_bytes"], "adapter_bytes_32": tensor_bytes32, "file_bytes_32": files32,
            "ratio_memory_vs_files": tensor_bytes32 / files32,
            "rss_before": rss0, "rss_after": rss1, "rss_delta": rss1 - rss0,
            "ratio_rss_vs_files": (rss1 - rss0) / files32,
            "copies_32_of_base_bytes": 32 * mem0["base_bytes"],
            "attach_seconds_cold_sequence": attach_cold,
        }
        print(f"memory: 32 adapters {tensor_bytes32 / 1e6:.1f} MB (memory()), RSS +{(rss1 - rss0) / 1e6:.1f} MB, "
              f"files {files32 / 1e6:.1f} MB, base {mem0['base_bytes'] / 1e6:.0f} MB")
        for k in range(1, N_ADAPTERS):  # back to one resident adapter
            dep.detach(names[k])

        # ------------------------------------------------------------ 2. attach vs resident count
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), pulled[0],
                                       adapter_name=names[0]).eval()
        resident = 1
        attach: dict[int, dict[str, list[float]]] = {}
        for level in LEVELS:
            for k in range(resident, level):
                dep.attach(specs[k], name=names[k])
                pm.load_adapter(pulled[k], adapter_name=names[k])
            resident = level
            assert len(dep.adapters) == level and len(pm.peft_config) == level
            ours, peer = [], []
            for r in range(rounds + 1):  # round 0 warms up (first probe, allocator) and is dropped
                order = ("ours", "peer") if r % 2 else ("peer", "ours")
                for who in order:
                    if who == "ours":
                        t0 = clock()
                        dep.attach(probe_spec, name="probe")
                        dt = clock() - t0
                        dep.detach("probe")
                        (ours if r else []).append(dt)
                    else:
                        t0 = clock()
                        pm.load_adapter(probe_dir, adapter_name="probe")
                        dt = clock() - t0
                        pm.delete_adapter("probe")
                        (peer if r else []).append(dt)
            attach[level] = {"ours": ours, "peer": peer}
            print(f"attach with {level:2d} resident: ours {C.median(ours) * 1e3:.1f} ms, "
                  f"PEFT load_adapter {C.median(peer) * 1e3:.1f} ms")
        pm.set_adapter(names[0])

        # ------------------------------------------------------------ 3. switching
        reps_ours, reps_peer = 2000, 200
        mixed16 = names[:16]
        sw: dict[str, list[float]] = {"ours_one": [], "ours_mixed16": [], "peer": []}
        for _ in range(rounds):
            t0 = clock()
            for i in range(reps_ours):
                with dep.use(names[i % N_ADAPTERS], batch_size=16):
                    pass
            sw["ours_one"].append((clock() - t0) / reps_ours)
            t0 = clock()
            for _i in range(reps_ours):
                with dep.use(mixed16):
                    pass
            sw["ours_mixed16"].append((clock() - t0) / reps_ours)
            t0 = clock()
            for i in range(reps_peer):
                pm.set_adapter(names[i % N_ADAPTERS])
            sw["peer"].append((clock() - t0) / reps_peer)
        print(f"switch: ours use(name) {C.median(sw['ours_one']) * 1e6:.1f} us, use(16 names) "
              f"{C.median(sw['ours_mixed16']) * 1e6:.1f} us, PEFT set_adapter {C.median(sw['peer']) * 1e6:.1f} us")
        pm.set_adapter(names[0])

        # ------------------------------------------------------------ 4. forward, 16 rows x 16 adapters
        cache_kw, _ = _cache_kwargs(dep.model)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, shapes["vocab_size"], (16, seq), generator=g)
        step_ids = torch.randint(0, shapes["vocab_size"], (16, 1), generator=g)
        common = {"use_cache": True, "logits_to_keep": 1}

        def ours_call(**kw):
            with torch.no_grad(), dep.use(mixed16):
                return dep.model(**kw, **common)

        def forget_stacks() -> None:
            """Make the next ours call a new batch: it builds its per-row stacks inside the timing."""
            for w in dep._wrapped.values():
                w.cached = None

        def base_call(**kw):
            with torch.no_grad():
                return dep.model(**kw, **common)

        def peer_call(**kw):
            with torch.no_grad():
                return pm(**kw, adapter_names=mixed16, **common)

        calls = {"ours": ours_call, "base": base_call, "peer": peer_call}
        prefill: dict[str, list[float]] = {k: [] for k in calls}
        caches: dict[str, Any] = {}
        logits: dict[str, Any] = {}
        for r in range(rounds + 1):  # round 0 warms up, keeps each side's KV cache and logits
            order = list(calls)[r % 3:] + list(calls)[: r % 3]
            for who in order:
                if who == "ours":
                    forget_stacks()
                t0 = clock()
                out = calls[who](input_ids=ids)
                dt = clock() - t0
                if r == 0:
                    caches[who], logits[who] = _cache_of(out), out.logits[:, -1].clone()
                else:
                    prefill[who].append(dt)
                del out
            print(f"prefill round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in prefill.items() if v))
        diff_prefill = float((logits["ours"] - logits["peer"]).abs().max())
        effect_prefill = float((logits["ours"] - logits["base"]).abs().max())

        decode: dict[str, list[float]] = {k: [] for k in calls}
        step_logits: dict[str, Any] = {}
        steps_per_round = 3
        for r in range(6 * rounds + 1):  # round 0 warms up and keeps each side's logits
            order = list(calls)[r % 3:] + list(calls)[: r % 3]
            total = dict.fromkeys(calls, 0.0)
            for _ in range(steps_per_round):  # interleaved step by step: a burst of load hits all sides
                for who in order:
                    cache = caches[who]
                    assert cache.get_seq_length() == seq
                    t0 = clock()
                    out = calls[who](input_ids=step_ids, **{cache_kw: cache})
                    total[who] += clock() - t0
                    cache.crop(-1)
                    if r == 0:
                        step_logits[who] = out.logits[:, -1].clone()
                    del out
            if r:
                for who in calls:
                    decode[who].append(total[who] / steps_per_round)
        diff_decode = float((step_logits["ours"] - step_logits["peer"]).abs().max())
        memory["batch_cache_bytes_after_16_row_batch"] = dep.memory()["batch_cache_bytes"]
        forget_stacks()
        hook_pre, total_pre, out = hook_share(ours_call, input_ids=ids)
        del out
        hook_dec = total_dec = 0.0
        for _ in range(5):
            h, t, out = hook_share(ours_call, input_ids=step_ids, **{cache_kw: caches["ours"]})
            hook_dec, total_dec = hook_dec + h, total_dec + t
            caches["ours"].crop(-1)
            del out
        profile = {"prefill": {"hook_s": hook_pre, "forward_s": total_pre, "share": hook_pre / total_pre},
                   "decode_5_steps": {"hook_s": hook_dec, "forward_s": total_dec, "share": hook_dec / total_dec}}
        print(f"adapter work inside the hooks (cProfile): prefill {hook_pre:.3f} of {total_pre:.2f} s "
              f"({hook_pre / total_pre:.1%}), 5 decode steps {hook_dec * 1e3:.0f} of {total_dec * 1e3:.0f} ms "
              f"({hook_dec / total_dec:.1%})")
        effect_decode = float((step_logits["ours"] - step_logits["base"]).abs().max())

        # ------------------------------------------------------------ report
        def paired(xs: list[float], ys: list[float]) -> float:
            """Median of per-round ratios: each pair ran back to back under the same load."""
            return C.median([x / y for x, y in zip(xs, ys)])

        med_pre = {k: C.median(v) for k, v in prefill.items()}
        med_dec = {k: C.median(v) for k, v in decode.items()}
        per_round_pre = [o / b for o, b in zip(prefill["ours"], prefill["base"])]
        per_round_dec = [o / b for o, b in zip(decode["ours"], decode["base"])]
        sw_ours = C.median(sw["ours_one"])
        sw_mixed = C.median(sw["ours_mixed16"])

        def row(measure: str, target: str, ours: list[float], peer: list[float], scale: float, bound: float):
            ratio = paired(ours, peer)
            return [measure, target, C.median(ours) * scale, C.median(peer) * scale, ratio,
                    C.median(ours) / C.median(peer), ratio <= bound]

        rows = [
            row("attach, 1 resident (ms)", "ratio <= 1.0", attach[1]["ours"], attach[1]["peer"], 1e3, 1.0),
            *[[*row(f"attach, {lv} resident (ms)", "ours flat", attach[lv]["ours"], attach[lv]["peer"], 1e3, 1.0)[:6],
               ""] for lv in LEVELS[1:]],
            ["switch adapter (us): use(name) / set_adapter", "<= 1000 us", sw_ours * 1e6, C.median(sw["peer"]) * 1e6,
             "", sw_ours / C.median(sw["peer"]), sw_ours <= 1e-3],
            ["switch, use(16 names) (us)", "<= 1000 us", sw_mixed * 1e6, "", "", "", sw_mixed <= 1e-3],
            row(f"prefill 16x{seq}, 16 adapters vs base (s)", "<= 1.15x", prefill["ours"], prefill["base"], 1, 1.15),
            row(f"prefill 16x{seq}, vs PEFT adapter_names (s)", "ours <= PEFT", prefill["ours"], prefill["peer"], 1, 1.0),
            row(f"decode 16x1 (cache {seq}), vs base (ms)", "<= 1.3x", decode["ours"], decode["base"], 1e3, 1.3),
            row(f"decode 16x1 (cache {seq}), vs PEFT (ms)", "ours <= PEFT", decode["ours"], decode["peer"], 1e3, 1.0),
            ["32 adapters, memory() vs files (MB)", "<= 1.1x", tensor_bytes32 / 1e6, files32 / 1e6,
             tensor_bytes32 / files32, "", tensor_bytes32 / files32 <= 1.1],
            ["32 adapters, RSS delta vs files (MB)", "<= 1.1x", (rss1 - rss0) / 1e6, files32 / 1e6,
             (rss1 - rss0) / files32, "", (rss1 - rss0) / files32 <= 1.1],
        ]
        print()
        print("ratio: median of per-round ours/peer ratios (paired); 'of medians': median ours / median peer")
        print(C.table(["measure", "target", "ours", "peer", "ratio", "of medians", "met"],
                      [[*r[:6], ("yes" if r[6] else "NO") if isinstance(r[6], bool) else r[6]] for r in rows]))
        series = {who: ", ".join(f"{C.median(attach[lv][who]) * 1e3:.1f}" for lv in LEVELS) for who in ("ours", "peer")}
        print(f"attach series (median ms), resident 1/8/16/32: ours {series['ours']}; PEFT {series['peer']}")
        print(f"fastest ours / fastest base: prefill {min(prefill['ours']) / min(prefill['base']):.3f}, decode "
              f"{min(decode['ours']) / min(decode['base']):.3f}")
        print(f"per-round ours/base: prefill {', '.join(f'{x:.3f}' for x in per_round_pre)}; "
              f"decode {', '.join(f'{x:.3f}' for x in per_round_dec)}")
        print(f"max |ours - PEFT| logits: prefill {diff_prefill:.2e}, decode {diff_decode:.2e}; "
              f"max |ours - base|: prefill {effect_prefill:.3f}, decode {effect_decode:.3f}")
        print(f"per-row stacks kept for the 16-row batch: {memory['batch_cache_bytes_after_16_row_batch'] / 1e6:.1f} MB")
        print(f"32 copies of the base: {32 * mem0['base_bytes'] / 1e9:.1f} GB; base {mem0['base_bytes'] / 1e6:.0f} MB")
        out = C.write_results("bench_deploy", {
            "quick": args.quick, "rounds": rounds, "threads": args.threads,
            "model": {**shapes, "dtype": "float32", "n_params": dep.fingerprint.n_params},
            "lora": {"r": 16, "alpha": 32, "targets": TARGETS, "adapters": N_ADAPTERS + 1,
                     "file_bytes_each": file_bytes[0]},
            "memory": memory,
            "attach_seconds": {str(k): v for k, v in attach.items()},
            "attach_median_ms": {str(k): {w: C.median(v[w]) * 1e3 for w in v} for k, v in attach.items()},
            "switch_seconds_per_call": sw,
            "prefill": {"shape": [16, seq], "seconds": prefill, "median_s": med_pre,
                        "ratio_vs_base": paired(prefill["ours"], prefill["base"]),
                        "ratio_vs_peft": paired(prefill["ours"], prefill["peer"]),
                        "ratio_vs_base_per_round": per_round_pre,
                        "max_abs_diff_vs_peft": diff_prefill, "max_abs_effect_vs_base": effect_prefill},
            "decode": {"shape": [16, 1], "cache_len": seq, "steps_per_round": steps_per_round,
                       "seconds": decode, "median_s": med_dec,
                       "ratio_vs_base": paired(decode["ours"], decode["base"]),
                       "ratio_vs_peft": paired(decode["ours"], decode["peer"]),
                       "ratio_vs_base_per_round": per_round_dec,
                       "max_abs_diff_vs_peft": diff_decode, "max_abs_effect_vs_base": effect_decode},
            "hook_profile": profile,
            "table": [{"measure": r[0], "target": r[1], "ours": r[2], "peer": r[3], "ratio_paired": r[4],
                       "ratio_of_medians": r[5], "met": r[6]} for r in rows],
            "wall_seconds": clock() - t_start,
        })
        print(f"\nwrote {out.relative_to(C.ROOT)} in {clock() - t_start:.0f} s")
        with contextlib.suppress(Exception):
            reg.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

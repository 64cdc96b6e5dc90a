"""Decode-step cost of mixed batches of LoRA-family variants and IA3 (issue 12).

A Llama-shaped base from ``LlamaConfig`` (float32; hidden 512, intermediate 1408, 4 layers,
8 heads / 8 KV heads, vocab 8000: 21.4M parameters) and 16 adapters made by PEFT
(``get_peft_model``, every trained tensor randomised, ``save_pretrained``), published to a
fresh SQLite registry and attached to one ``Deployment``. Two compositions of a 16-row
batch, row i on adapter i:

- ``plain``: 16 LoRA adapters (r=16 on q, k, v, o);
- ``variants``: 4 LoRA, 4 DoRA, 4 IA3 (k, v, down_proj feed-forward), 2 lora_bias, 2 LoRA
  with ``modules_to_save=["lm_head"]``.

Timed: one decode step of 16 x 1 token over a KV cache of ``--context`` tokens (default
64), ``use_cache=True, logits_to_keep=1`` as generation calls it, inside ``dep.use(names)``,
against the same model called outside ``use()`` (base: the hooks return at once). Rounds
interleave base / plain / variants step by step after one dropped warm-up round; each step is
followed, untimed, by ``cache.crop(-1)``. Reported: medians and the median per-round ratio
to the base step. ``cat /proc/loadavg`` is recorded before and after.

    .venv/bin/python benchmarks/bench_variants.py [--rounds N] [--threads N] [--sets plain,variants] [--out FILE]

Run with ``PYTHONPATH`` at an older checkout to measure that code's ``plain`` (its
``variants`` are skipped when it refuses them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

SHAPES = {"vocab_size": 8000, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
          "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 512}


def _adapter(base: Path, out: Path, config: Any, seed: int) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=g)
                if "ia3_l" in name or "magnitude" in name:
                    p.copy_(p * (1 + 0.1 * noise) if "magnitude" in name else 1 + 0.1 * noise)
                elif "modules_to_save" in name:
                    p.add_(0.02 * noise)
                else:
                    p.copy_(0.02 * noise)
    model.save_pretrained(out)
    return out


def build(work: Path) -> tuple[Path, dict[str, list[tuple[str, Path]]]]:
    from peft import IA3Config, LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = work / "base"
    LlamaForCausalLM(LlamaConfig(**SHAPES)).eval().save_pretrained(base)
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    plain = [(f"plain{i}", _adapter(base, work / f"plain{i}", LoraConfig(r=16, lora_alpha=32, target_modules=qkvo),
                                    i)) for i in range(16)]
    kinds = ([LoraConfig(r=16, lora_alpha=32, target_modules=qkvo)] * 4
             + [LoraConfig(r=16, lora_alpha=32, target_modules=qkvo, use_dora=True)] * 4
             + [IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])] * 4
             + [LoraConfig(r=16, lora_alpha=32, target_modules=qkvo, lora_bias=True)] * 2
             + [LoraConfig(r=16, lora_alpha=32, target_modules=qkvo, modules_to_save=["lm_head"])] * 2)
    variants = [(f"var{i}", _adapter(base, work / f"var{i}", cfg, 100 + i)) for i, cfg in enumerate(kinds)]
    return base, {"plain": plain, "variants": variants}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sets", default="plain,variants", help="compositions to attach and time (comma list)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import adapterhub_sdk as ah

    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, sets = build(work)
        reg = ah.Registry.open(f"sqlite:///{work / 'r.db'}", blobs=work / "blobs")
        dep = ah.Deployment(str(base), registry=reg)
        served: dict[str, list[str]] = {}
        skipped: dict[str, str] = {}
        for label, adapters in sets.items():
            if label not in args.sets.split(","):
                continue
            try:
                for name, path in adapters:
                    reg.publish(path, name=f"bench/{name}", version="1.0.0", base=base)
                    dep.attach(f"bench/{name}", name=name)
                served[label] = [name for name, _ in adapters]
            except ah.IncompatibleAdapterError as exc:
                skipped[label] = str(exc)
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, SHAPES["vocab_size"], (16, args.context), generator=g)
        step = torch.randint(0, SHAPES["vocab_size"], (16, 1), generator=g)
        common = {"use_cache": True, "logits_to_keep": 1}
        caches = {}

        def use(label: str) -> Any:
            return contextlib.nullcontext() if label == "base" else dep.use(served[label])

        with torch.no_grad():
            for label in ["base", *served]:
                with use(label):
                    caches[label] = dep.model(input_ids=prompt, **common).past_key_values

        def one(label: str) -> float:
            cache = caches[label]
            with torch.no_grad(), use(label):
                t = time.perf_counter()
                dep.model(input_ids=step, past_key_values=cache, **common)
                dt = time.perf_counter() - t
            cache.crop(-1)
            return dt

        times: dict[str, list[float]] = {label: [] for label in caches}
        for r in range(args.rounds + 1):
            for label in caches:
                dt = one(label)
                if r:
                    times[label].append(dt)
        out: dict[str, Any] = {"shapes": SHAPES, "context": args.context, "rounds": args.rounds,
                               "threads": args.threads, "loadavg_before": load_before, "skipped": skipped,
                               "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
                               "ratio_to_base": {k: statistics.median(a / b for a, b in zip(v, times["base"]))
                                                 for k, v in times.items() if k != "base"}}
        out["loadavg_after"] = loadavg()
        reg.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

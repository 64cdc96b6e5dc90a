"""Publish cost of a real ~17 MB LoRA adapter, against copying + hashing its files.

Builds a Llama-shaped base from ``LlamaConfig`` (hidden 1024, intermediate 3584,
3 layers, 16 heads, vocab 8000, float32), wraps it with PEFT LoRA r=64 on q,k,v,o,gate,up,down
(weights randomised), and saves the adapter with ``save_pretrained``: an
``adapter_model.safetensors`` of ~16.9 MB plus ``adapter_config.json`` and ``README.md``.

Per round (order rotated, >= 5 rounds, medians reported):

* ours: ``Registry.publish(dir, name=..., version=<new each round>, base=None)`` into a
  fresh SQLite registry (opened, with its migrations run, before the timer starts).
  ``base=None``: no base fingerprinting or shape check is timed (see "ours + base" below).
  Publish copies each file into the blob store's temp dir inside the kernel
  (``copy_file_range``), hashes that private copy from the page cache while a second
  thread fsyncs it, reads the config and safetensors header from the copies, renames the
  blobs into place (fsyncing the directory) and commits the version row.
* peer: ``shutil.copy`` of the adapter's files into a new directory + ``hashlib.sha256`` of
  each file (1 MiB reads). No fsync.
* context, not the target's peer: the same copy + hash with ``os.fsync`` of each copied
  file and of the directory, which is what durability costs on this disk.
* context: ``publish(..., base=<base dir>)`` into a fresh registry with the base's
  fingerprint already cached (``ADAPTERHUB_HOME`` under the work dir): adds the cached
  fingerprint lookup, recording the base and the tensor-by-tensor shape check.

Then the one-shot CLI, as a user runs it: per round (order rotated), fresh processes into
one registry under ``ADAPTERHUB_HOME`` (created on a warm-up run; the repository's
plugins enabled as installed), wall time and CPU seconds of each child measured from
outside:

* ours: ``adapterhub publish DIR --name NS/NAME --version <new each round>`` (no base)
* peer: ``sh -c 'cp -r DIR OUT && sha256sum OUT/*'`` of the same files
* context: ``adapterhub --version`` (what starting the CLI costs before any work)

Then deduplication: re-publishing identical content (same name@version; a new version;
another name) must write 0 new blob bytes: bytes under ``blobs/`` are counted before and
after, and the script fails if they grow.

    .venv/bin/python benchmarks/bench_publish.py [--quick] [--rounds N]

``--quick``: fewer rounds (5) and a 1-layer adapter (~5.6 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import _common as C

import adapterhub_sdk as ah


def build(work: Path, layers: int) -> tuple[Path, Path]:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    base_dir = work / "base"
    model.save_pretrained(base_dir)
    lcfg = LoraConfig(r=64, lora_alpha=128, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    adapter_dir = work / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def sha256_file(path: Path, buf: bytearray) -> str:
    h = hashlib.sha256()
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def peer(files: list[Path], dest: Path, *, fsync: bool = False) -> dict[str, str]:
    dest.mkdir(parents=True)
    buf = bytearray(1 << 20)
    out = {}
    for f in files:
        target = dest / f.name
        shutil.copy(f, target)
        if fsync:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        out[f.name] = sha256_file(f, buf)
    if fsync:
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return out


def blob_bytes(reg: ah.Registry) -> int:
    return C.du(reg.blobs.root / "sha256")


def one_shot_cli(work: Path, adapter_dir: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of fresh ``adapterhub publish`` processes and of ``cp -r`` + ``sha256sum``."""
    exe = Path(sys.executable).with_name("adapterhub")
    ah_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "adapterhub_sdk"]
    # plugins enabled as installed; byte-compiled files written on the warm-up run, as an install has them
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONDONTWRITEBYTECODE")}
    env["ADAPTERHUB_HOME"] = str(work / "home-cli")

    def argv(v: str, r: int) -> list[str]:
        if v == "ours_cli":
            return [*ah_cmd, "publish", str(adapter_dir), "--name", "bench/cli", "--version", f"2.0.{r}"]
        if v == "peer_cli":
            return ["sh", "-c", 'cp -r "$1" "$2" && sha256sum "$2"/*', "sh", str(adapter_dir), str(work / f"cp-{r}")]
        return [*ah_cmd, "--version"]

    def child(cmd: list[str]) -> tuple[float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        c0 = kids.ru_utime + kids.ru_stime
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return dt, kids.ru_utime + kids.ru_stime - c0

    variants = ["ours_cli", "peer_cli", "start_cli"]
    for v in variants:  # warm-up: the registry, byte-compiled files, page cache
        child(argv(v, 999))
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            dt, dc = child(argv(v, r))
            times[v].append(dt)
            cpu[v].append(dc)
    return times, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1-layer adapter, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 9, quick 5)")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 9)
    layers = 1 if args.quick else 3

    work = C.work_dir(f"publish-{os.getpid()}")  # a concurrent run must not remove this one's files
    os.environ["ADAPTERHUB_HOME"] = str(work / "home")
    os.environ.pop("ADAPTERHUB_POLICY", None)
    try:
        t0 = time.perf_counter()
        base_dir, adapter_dir = build(work, layers)
        files = sorted(p for p in adapter_dir.iterdir() if p.is_file())
        sizes = {p.name: p.stat().st_size for p in files}
        total = sum(sizes.values())
        print(f"built base + adapter in {time.perf_counter() - t0:.1f}s: "
              + ", ".join(f"{n} {s / 1e6:.2f} MB" for n, s in sizes.items()))
        ah.fingerprint(base_dir)  # fill the fingerprint cache for the "ours + base" variant
        for f in files:  # page cache warm for everyone
            f.read_bytes()

        def fresh_registry(tag: str) -> ah.Registry:
            d = work / "regs" / tag
            return ah.Registry.open(f"sqlite:///{d / 'registry.db'}")

        # warm-up: imports, plugin loading, first SQLAlchemy compile of each statement
        with fresh_registry("warmup") as reg:
            reg.publish(adapter_dir, name="bench/lora", version="0.0.1")
            reg.publish(adapter_dir, name="bench/lora-b", version="0.0.1", base=base_dir)
        peer(files, work / "peer-warmup")

        variants = ["ours", "peer", "peer_fsync", "ours_base"]
        times: dict[str, list[float]] = {v: [] for v in variants}
        written: list[int] = []
        for r in range(rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                tag = f"{v}-{r}"
                if v.startswith("ours"):
                    reg = fresh_registry(tag)
                    base = base_dir if v == "ours_base" else None
                    dt, res = C.timed(reg.publish, adapter_dir, name="bench/lora", version=f"1.0.{r}", base=base)
                    assert res.created and res.bytes_written == total, res
                    assert blob_bytes(reg) == total
                    if v == "ours":
                        written.append(res.bytes_written)
                    reg.close()
                else:
                    dt, digests = C.timed(peer, files, work / "peer" / tag, fsync=v == "peer_fsync")
                    assert len(digests) == len(files)
                times[v].append(dt)
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{v} {times[v][-1] * 1e3:.1f} ms" for v in variants)
                  + f", load {os.getloadavg()[0]:.2f}")
            shutil.rmtree(work / "regs", ignore_errors=True)
            shutil.rmtree(work / "peer", ignore_errors=True)

        med = {v: C.median(times[v]) for v in variants}
        ratio = med["ours"] / med["peer"]
        per_round = [o / p for o, p in zip(times["ours"], times["peer"])]

        cli_t, cli_cpu = one_shot_cli(work, adapter_dir, rounds)
        cli_med = {v: C.median(cli_t[v]) for v in cli_t}
        cli_ratio = [o / p for o, p in zip(cli_t["ours_cli"], cli_t["peer_cli"])]

        # dedup: identical content again writes no blob bytes
        with fresh_registry("dedup") as reg:
            first = reg.publish(adapter_dir, name="bench/lora", version="1.0.0")
            b0 = blob_bytes(reg)
            again = reg.publish(adapter_dir, name="bench/lora", version="1.0.0")
            b1 = blob_bytes(reg)
            dt_new, newver = C.timed(reg.publish, adapter_dir, name="bench/lora", version="1.0.1")
            b2 = blob_bytes(reg)
            other = reg.publish(adapter_dir, name="bench/lora-copy", version="1.0.0")
            b3 = blob_bytes(reg)
            n_blobs = sum(1 for _ in reg.blobs.iter_digests())
        dedup = {
            "first_publish_bytes_written": first.bytes_written, "blob_bytes_after_first": b0,
            "same_version": {"created": again.created, "bytes_written": again.bytes_written, "blob_bytes_delta": b1 - b0},
            "new_version": {"created": newver.created, "bytes_written": newver.bytes_written,
                            "blob_bytes_delta": b2 - b1, "seconds": dt_new},
            "other_name": {"created": other.created, "bytes_written": other.bytes_written, "blob_bytes_delta": b3 - b2},
            "blobs": n_blobs,
        }
        assert b0 == total and first.bytes_written == total
        assert not again.created and again.bytes_written == 0 and b1 == b0
        assert newver.created and newver.bytes_written == 0 and b2 == b1
        assert other.created and other.bytes_written == 0 and b3 == b2
        assert n_blobs == len(files)

        print()
        print(f"publishing {total / 1e6:.2f} MB in {len(files)} files, median of {rounds} rounds "
              f"(ratio = our time / peer time)")
        print(C.table(["what", "median ms", "MB/s", "ratio", "target", "met"], [
            ["ours: publish(base=None), fresh registry", med["ours"] * 1e3, total / 1e6 / med["ours"],
             f"{ratio:.2f}x", "<= 2x", "yes" if ratio <= 2 else "NO"],
            ["peer: shutil.copy + sha256", med["peer"] * 1e3, total / 1e6 / med["peer"], "1.00x", "", ""],
            ["context: peer + fsync files and dir", med["peer_fsync"] * 1e3, total / 1e6 / med["peer_fsync"],
             f"{med['ours'] / med['peer_fsync']:.2f}x", "", ""],
            ["context: ours with base=<dir> (cached fp)", med["ours_base"] * 1e3, total / 1e6 / med["ours_base"],
             f"{med['ours_base'] / med['peer']:.2f}x", "", ""],
        ]))
        print(f"per-round ours/peer ratios: {', '.join(f'{x:.2f}' for x in per_round)} "
              f"(median {C.median(per_round):.2f})")
        print()
        print(f"one-shot CLI, fresh processes, median of {rounds} rounds (ratio = our time / peer time)")
        print(C.table(["what", "median ms", "CPU ms", "ratio"], [
            ["ours: adapterhub publish DIR (fresh process)", cli_med["ours_cli"] * 1e3,
             C.median(cli_cpu["ours_cli"]) * 1e3, f"{C.median(cli_ratio):.0f}x"],
            ["peer: cp -r DIR OUT && sha256sum OUT/*", cli_med["peer_cli"] * 1e3,
             C.median(cli_cpu["peer_cli"]) * 1e3, "1x"],
            ["context: adapterhub --version", cli_med["start_cli"] * 1e3, C.median(cli_cpu["start_cli"]) * 1e3,
             f"{cli_med['start_cli'] / cli_med['peer_cli']:.0f}x"],
        ]))
        print(f"per-round ours/peer ratios: {', '.join(f'{x:.0f}' for x in cli_ratio)}; "
              f"load {os.getloadavg()[0]:.2f}")
        print()
        print(C.table(["re-publish identical content", "created", "bytes_written", "blob bytes delta"], [
            ["same name@version", again.created, again.bytes_written, b1 - b0],
            ["new version, same files", newver.created, newver.bytes_written, b2 - b1],
            ["other name, same files", other.created, other.bytes_written, b3 - b2],
        ]))
        print(f"new-version re-publish took {dt_new * 1e3:.1f} ms; {n_blobs} blobs, {b3:,} bytes in the store")

        out = C.write_results("bench_publish", {
            "quick": args.quick, "rounds": rounds,
            "adapter": {"files": sizes, "total_bytes": total, "lora_r": 64, "layers": layers,
                        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
            "timed_publish_base": None,
            "seconds": times, "median_s": med,
            "ratio_ours_vs_peer": ratio, "ratio_per_round_median": C.median(per_round),
            "ratio_ours_vs_peer_fsync": med["ours"] / med["peer_fsync"],
            "target_ratio": 2.0, "target_met": ratio <= 2.0,
            "dedup": dedup,
            "cli": {"seconds": cli_t, "cpu_s": cli_cpu, "median_s": cli_med,
                    "ratio_ours_vs_peer_per_round": cli_ratio,
                    "ratio_ours_vs_peer_per_round_median": C.median(cli_ratio),
                    "commands": {"ours_cli": "adapterhub publish DIR --name bench/cli --version 2.0.<round>",
                                 "peer_cli": "sh -c 'cp -r DIR OUT && sha256sum OUT/*'",
                                 "start_cli": "adapterhub --version"}},
        })
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

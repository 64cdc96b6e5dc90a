"""CLI start: what a fresh ``adapterhub`` process costs, against ``pip --version`` and, for a
one-shot publish, against ``cp -r`` + ``sha256sum`` of the same files.

Setup (not timed): a small Llama-shaped base (hidden 256, 2 layers) saved by transformers,
a LoRA r=8 on q,v saved by PEFT, and a registry under ``ADAPTERHUB_HOME`` holding 20
published versions pinned to the base (so ``list`` and ``resolve`` have rows to print). The
repository's plugins stay installed and enabled as ``.ci/test`` installs them (the child
environment drops ``ADAPTERHUB_LOAD_PLUGINS``); byte-compiled files are written on a warm-up
run, as an installed package has them.

Per round, every command is run once as a fresh process, in an order rotated per round:

* peer: ``pip --version`` (the pip of this interpreter)
* ``adapterhub list``, ``adapterhub list --json``, ``adapterhub resolve --fingerprint FP``
  (target: median wall time <= 1.0x the peer's)
* ``adapterhub publish DIR --name NS/NAME --version 1.0.0 --base BASE`` of a ~70 KB adapter
  (a new adapter each round: its weights scaled, so no blob is deduplicated), against
  ``sh -c 'cp -r DIR OUT && sha256sum OUT/*'``
* context: ``python -c pass`` (the interpreter's own start)

Each child's wall time, CPU time (user + system, from ``wait4``) and peak RSS (GNU
``/usr/bin/time -f %M``) are recorded;
medians over rounds, ratios of medians and the median of per-round ratios are reported. At
the end ``python -X importtime -m adapterhub_sdk list`` is run once and its heaviest
imports are recorded, which is where the time of a slow start goes.

    .venv/bin/python benchmarks/bench_cli.py [--quick] [--rounds N]

``--quick``: 5 rounds (default 11).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _common as C

BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"  # GNU time: the peak RSS of the command alone


def build(work: Path, n_adapters: int, rounds: int) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterhub_sdk as ah

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    base = work / "base"
    model.save_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    adapter = work / "adapter"
    peft_model.save_pretrained(adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    dirs = []
    for r in range(rounds + 1):  # one per round (+ the warm-up): same shapes, other bytes
        d = work / f"adapter_{r}"
        d.mkdir()
        for f in adapter.iterdir():
            if f.name != "adapter_model.safetensors":
                (d / f.name).write_bytes(f.read_bytes())
        save_file({k: v * (1 + (r + 1) / 1000) for k, v in weights.items()}, d / "adapter_model.safetensors",
                  metadata={"format": "pt"})
        dirs.append(d)
    reg = ah.Registry.open()
    fp = reg.register_base(str(base))
    for i in range(n_adapters):
        reg.publish(str(adapter), name=f"bench/listed-{i:02d}", version="1.0.0", base=fp,
                    tasks=["sentiment"] if i % 2 else ["summarization"])
    reg.close()
    return {"base": base, "fingerprint": fp.digest, "dirs": dirs,
            "adapter_bytes": sum(f.stat().st_size for f in adapter.iterdir())}


def run_child(argv: list[str], env: dict[str, str], *, read_stdout: bool = False) -> dict[str, float]:
    """Run a fresh process: wall time, CPU time (user + system of it and its children, from
    ``wait4``) and its peak RSS, as GNU time reports it (``wait4``'s own ``ru_maxrss`` would
    count the pages this large benchmark process shared with the forked child before exec).
    With ``read_stdout`` its output is read here to the end and its lines counted."""
    fd, path = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    t0 = time.perf_counter()
    proc = subprocess.Popen([TIME, "-f", "%M", "-o", path, *argv], env=env,
                            stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines, first = 0, None
    if read_stdout:
        assert proc.stdout is not None
        for _ in iter(proc.stdout.readline, b""):
            if first is None:
                first = time.perf_counter() - t0
            lines += 1
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        rss_kb = int(Path(path).read_text().split()[-1])
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": rss_kb / 1024, "lines": lines,
            "first_line": first if first is not None else wall}


def import_profile(env: dict[str, str], top: int = 15) -> dict[str, Any]:
    """``-X importtime`` of ``adapterhub list``: the top-level imports by cumulative time and
    the modules with the most self time (microseconds)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "adapterhub_sdk", "list"], env=env,
                         capture_output=True, text=True, check=True).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, self_us, cum_us, name = line.split("|", 1)[0].split(":")[0], *line.split(":", 1)[1].split("|")
        rows.append((int(self_us), int(cum_us), name.rstrip()))
    top_level = sorted(((c, n.strip()) for s, c, n in rows if n.startswith(" ") and not n.startswith("   ")),
                       reverse=True)[:top]
    by_self = sorted(((s, n.strip()) for s, c, n in rows), reverse=True)[:top]
    loaded = {n.strip().split(".")[0] for _, _, n in rows}
    return {"total_us": sum(s for s, _, _ in rows), "modules": len(rows),
            "top_level_cumulative_us": top_level, "self_us": by_self,
            "loaded": {k: k in loaded for k in ("sqlalchemy", "alembic", "pluggy", "torch", "click")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 11, quick 5)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir under benchmarks/_work")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 11)

    work = C.work_dir("cli")
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONDONTWRITEBYTECODE")}
    env.update({"ADAPTERHUB_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"})
    os.environ.update({k: env[k] for k in ("ADAPTERHUB_HOME",)})
    os.environ.pop("ADAPTERHUB_LOAD_PLUGINS", None)
    try:
        built = build(work, 20, rounds)
        adapterhub, pip = str(BIN / "adapterhub"), str(BIN / "pip")
        fixed = {
            "pip --version": [pip, "--version"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "adapterhub list": [adapterhub, "list"],
            "adapterhub list --json": [adapterhub, "list", "--json"],
            "adapterhub resolve": [adapterhub, "resolve", "--fingerprint", built["fingerprint"]],
        }

        def per_round(r: int) -> dict[str, list[str]]:
            d = built["dirs"][r]
            out = work / "copies" / str(r)
            out.parent.mkdir(exist_ok=True)
            return {**fixed,
                    "adapterhub publish": [adapterhub, "publish", str(d), "--name", f"bench/cli-{r}",
                                           "--version", "1.0.0", "--base", str(built["base"])],
                    "cp -r + sha256sum": ["sh", "-c", f"cp -r '{d}' '{out}' && sha256sum '{out}'/*"]}

        for argv in per_round(rounds).values():  # warm-up: byte-compiled files, page cache, fingerprint cache
            run_child(argv, env)
        names = list(per_round(0))
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        loads = []
        for r in range(rounds):
            cmds = per_round(r)
            k = r % len(names)
            for n in names[k:] + names[:k]:
                samples[n].append(run_child(cmds[n], env))
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{rounds} done (load {loads[-1]:.2f})", flush=True)

        def med(n: str, key: str) -> float:
            return C.median([s[key] for s in samples[n]])

        def round_ratio(n: str, peer: str, key: str) -> float:
            return C.median([a[key] / b[key] for a, b in zip(samples[n], samples[peer])])

        pairs = [(n, "pip --version") for n in ("adapterhub list", "adapterhub list --json", "adapterhub resolve")]
        pairs.append(("adapterhub publish", "cp -r + sha256sum"))
        rows, ratios = [], {}
        for n, peer in pairs:
            ratios[n] = {"peer": peer, "wall": med(n, "wall") / med(peer, "wall"),
                         "wall_per_round": round_ratio(n, peer, "wall"),
                         "cpu": med(n, "cpu") / med(peer, "cpu"), "cpu_per_round": round_ratio(n, peer, "cpu")}
            target = 1.0 if peer == "pip --version" else None
            rows.append([n, med(n, "wall") * 1e3, med(n, "cpu") * 1e3, med(n, "maxrss_mb"), peer,
                         med(peer, "wall") * 1e3, med(peer, "cpu") * 1e3, f"{ratios[n]['wall']:.2f}x",
                         f"{ratios[n]['wall_per_round']:.2f}x", f"{ratios[n]['cpu']:.2f}x",
                         "<= 1.0x" if target else "report",
                         ("yes" if ratios[n]["wall"] <= target else "NO") if target else ""])
        ctx = "python -c pass"
        rows.append([ctx, med(ctx, "wall") * 1e3, med(ctx, "cpu") * 1e3, med(ctx, "maxrss_mb"), "", "", "", "", "", "",
                     "", ""])
        print()
        print(f"{rounds} interleaved rounds, medians; load average over the rounds "
              f"{min(loads):.2f}..{max(loads):.2f} (median {C.median(loads):.2f}); {os.cpu_count()} CPUs")
        print(C.table(["command", "wall ms", "cpu ms", "peak MB", "peer", "peer wall ms", "peer cpu ms",
                       "wall ratio", "per-round", "cpu ratio", "target", "met"], rows))
        prof = import_profile(env)
        print(f"\n-X importtime of 'adapterhub list': {prof['modules']} modules, {prof['total_us'] / 1e3:.0f} ms "
              f"self time in all; loaded: " + ", ".join(k for k, v in prof["loaded"].items() if v))
        for us, name in prof["top_level_cumulative_us"][:8]:
            print(f"  {us / 1e3:7.1f} ms  {name}")
        out = C.write_results("bench_cli", {
            "quick": args.quick, "rounds": rounds, "adapter_bytes": built["adapter_bytes"],
            "loadavg_rounds": loads,
            "medians": {n: {k: med(n, k) for k in ("wall", "cpu", "maxrss_mb")} for n in names},
            "ratios": ratios,
            "target_met": {n: ratios[n]["wall"] <= 1.0 for n, peer in pairs if peer == "pip --version"},
            "import_profile_list": prof,
            "samples": samples,
        })
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: machine facts, medians, tables, JSON output.

Timings on a shared machine are noisy: every script measures our code and a peer in the
same run, interleaved round by round, and reports medians and ratios, never absolutes alone.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"
RESULTS = BENCH_DIR / "results"

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def work_dir(name: str, *, fresh: bool = True) -> Path:
    d = WORK / name
    if fresh and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    return d


def machine() -> dict[str, Any]:
    cpu = "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "sha_ni": "sha_ni" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0]
        facts["mem_total"] = mem.split(":", 1)[1].strip()
    except OSError:
        pass
    for mod in ("torch", "sqlalchemy", "safetensors", "transformers", "peft"):
        m = sys.modules.get(mod)
        if m is not None:
            facts[mod] = getattr(m, "__version__", "?")
    try:
        import ssl

        facts["openssl"] = ssl.OPENSSL_VERSION
    except ImportError:
        pass
    try:
        facts["loadavg_at_write"] = os.getloadavg()
    except OSError:
        pass
    return facts


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    """``a`` over ``b`` from interleaved rounds: the ratio of medians, each round's ratio, and
    their median (the figure to quote: each pair ran under the same load)."""
    per = [x / y for x, y in zip(times[a], times[b])]
    return {"median_ratio": median(times[a]) / median(times[b]), "per_round": per, "per_round_median": median(per)}


def dir_files(path: Path) -> dict[str, int]:
    """The regular files directly in ``path`` and their sizes, by name."""
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def timed(fn, *args, **kw) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.3f}"
    return str(x)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "argv": sys.argv[1:], "machine": machine(), **payload}
    out.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return out


def du(path: Path) -> int:
    """Bytes in regular files under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total

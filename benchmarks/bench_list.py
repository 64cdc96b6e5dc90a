"""Listing a large registry: the first page in process, and every version through the CLI,
against raw ``sqlite3`` doing the same reads.

The registry is the one ``bench_resolve.py`` builds (100,000 versions with real-sized
manifests, 2-20 KB each; ``--versions`` for another size), built here or reused from an
earlier ``--keep`` run. Interleaved rounds (order rotated per round), medians reported:

* in process, first page: ``Registry.list(limit=50)`` on an open registry, against raw
  ``sqlite3``: the same 50 rows (name, version, digest, method, variant, base, size,
  yanked, created_at, source, with the task and alias lists by ``group_concat``), ordered by
  name then id, ``LIMIT 50`` (the peer does not order versions by semver). Target < 50 ms.
* CLI, fresh processes, stdout read to the end by this script (lines counted and checked):
  ``adapterhub list --jsonl`` (target: peak RSS < 200 MB), ``adapterhub list --json`` and
  ``adapterhub list --limit 50 --json``; the peer is a ``python -c`` script with ``sqlite3``
  streaming the same fields as one JSON object per line (what a user would write). Wall
  time, CPU time (user + system, from ``wait4``) and peak RSS (GNU ``/usr/bin/time``) of each child.

    .venv/bin/python benchmarks/bench_list.py [--quick] [--rounds N] [--versions N] [--keep] [--reuse]

``--quick``: 10,000 versions, 3 rounds (default 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
from bench_cli import run_child
from bench_resolve import build

from adapterhub_sdk import Registry

BIN = Path(sys.executable).parent
PEER_COLS = ("a.name, v.version, v.digest, v.method, v.variant, v.base_fingerprint, v.base_name, v.size, v.yanked, "
             "v.created_at, v.source, "
             "(SELECT group_concat(t.task, ',') FROM version_tasks t WHERE t.version_id = v.id), "
             "(SELECT group_concat(x.alias, ',') FROM aliases x WHERE x.version_id = v.id)")
PEER_SQL = f"SELECT {PEER_COLS} FROM adapters a JOIN versions v ON v.adapter_id = a.id ORDER BY a.name_key, v.id"
PEER_SCRIPT = f"""
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
keys = ("name", "version", "digest", "method", "variant", "base_fingerprint", "base_name", "size", "yanked",
        "created_at", "source", "tasks", "aliases")
out = sys.stdout
for row in db.execute({PEER_SQL!r}):
    d = dict(zip(keys, row))
    d["tasks"] = sorted(d["tasks"].split(",")) if d["tasks"] else []
    d["aliases"] = sorted(d["aliases"].split(",")) if d["aliases"] else []
    d["yanked"] = bool(d["yanked"])
    out.write(json.dumps(d) + "\\n")
"""


def supports(flag: str, env: dict[str, str]) -> bool:
    out = subprocess.run([str(BIN / "adapterhub"), "list", "--help"], env=env, capture_output=True, text=True)
    return flag in out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10,000 versions, 3 rounds")
    ap.add_argument("--versions", type=int, default=None, help="registry size, a multiple of 1000 (default 100000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5, quick 3)")
    ap.add_argument("--page", type=int, default=50, help="first-page size (default 50)")
    ap.add_argument("--keep", action="store_true", help="keep the registry under benchmarks/_work")
    ap.add_argument("--reuse", action="store_true", help="reuse a registry kept by an earlier --keep run")
    args = ap.parse_args()
    n_versions = args.versions or (10_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    work = C.work_dir(f"list_{n_versions}", fresh=not args.reuse)
    db = work / "registry.db"
    url = f"sqlite:///{db}"
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONDONTWRITEBYTECODE")}
    env.update({"ADAPTERHUB_REGISTRY_URL": url, "ADAPTERHUB_BLOBS": str(work / "blobs"), "HF_HUB_OFFLINE": "1"})
    try:
        t0 = time.perf_counter()
        if not (args.reuse and (work / "built.json").is_file()):
            built = build(url, n_versions // 1000, 10)
            (work / "built.json").write_text(json.dumps(built["counts"]))
        counts = json.loads((work / "built.json").read_text())
        print(f"registry ready in {time.perf_counter() - t0:.1f}s: {counts['versions']:,} versions, "
              f"{db.stat().st_size / 1e6:.0f} MB")
        has_paging = supports("--offset", env)
        has_jsonl = supports("--jsonl", env)

        reg = Registry.open(url, blobs=work / "blobs")
        raw = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA query_only=ON")
        page_sql = PEER_SQL + f" LIMIT {args.page}"

        def ours_page() -> int:
            if has_paging:
                return len(reg.list(limit=args.page))
            return len(reg.list()[:args.page])  # before paging: the whole list, then a slice

        def peer_page() -> int:
            return len(raw.execute(page_sql).fetchall())

        adapterhub = str(BIN / "adapterhub")
        cli: dict[str, list[str]] = {
            "peer: python + sqlite3, JSON lines": [sys.executable, "-c", PEER_SCRIPT, str(db)],
            "adapterhub list --json": [adapterhub, "list", "--json"],
        }
        if has_jsonl:
            cli["adapterhub list --jsonl"] = [adapterhub, "list", "--jsonl"]
        if has_paging:
            cli[f"adapterhub list --limit {args.page} --json"] = [adapterhub, "list", "--limit", str(args.page),
                                                                  "--json"]
        for argv in cli.values():  # warm-up: byte-compiled files, page cache
            run_child(argv, env, read_stdout=True)
        inproc: dict[str, list[tuple[float, float]]] = {"ours": [], "peer": []}
        samples: dict[str, list[dict[str, float]]] = {k: [] for k in cli}
        loads = []
        for r in range(rounds):
            for side, fn in (("ours", ours_page), ("peer", peer_page))[:: 1 if r % 2 == 0 else -1]:
                for _ in range(20):
                    c0 = time.process_time()
                    dt, n = C.timed(fn)
                    inproc[side].append((dt, time.process_time() - c0))
                    assert n == args.page, (side, n)
            names = list(cli)
            k = r % len(names)
            for n in names[k:] + names[:k]:
                s = run_child(cli[n], env, read_stdout=True)
                samples[n].append(s)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{rounds} done (load {loads[-1]:.2f})", flush=True)
        raw.close()
        reg.close()

        for n, ss in samples.items():  # every full listing printed every version
            if "--limit" not in n:
                want = counts["versions"] + (2 if n == "adapterhub list --json" else 0)  # '[' and ']'
                assert all(s["lines"] >= counts["versions"] for s in ss), (n, ss[0]["lines"], want)

        def med(n: str, key: str) -> float:
            return C.median([s[key] for s in samples[n]])

        peer = "peer: python + sqlite3, JSON lines"
        rows = []
        ours_p50 = C.median([x[0] for x in inproc["ours"]])
        peer_p50 = C.median([x[0] for x in inproc["peer"]])
        rows.append([f"in process: first page of {args.page}" + ("" if has_paging else " (list()[:50], no paging)"),
                     ours_p50 * 1e3, C.median([x[1] for x in inproc["ours"]]) * 1e3, "", peer_p50 * 1e3,
                     f"{ours_p50 / peer_p50:.1f}x", "< 50 ms", "yes" if ours_p50 < 0.05 else "NO"])
        for n in cli:
            if n == peer:
                continue
            target, met = "", ""
            if n == "adapterhub list --jsonl":
                target, met = "peak < 200 MB", "yes" if med(n, "maxrss_mb") < 200 else "NO"
            rows.append([n, med(n, "wall") * 1e3, med(n, "cpu") * 1e3, med(n, "maxrss_mb"), med(peer, "wall") * 1e3,
                         f"{med(n, 'wall') / med(peer, 'wall'):.1f}x", target, met])
        rows.append([peer, med(peer, "wall") * 1e3, med(peer, "cpu") * 1e3, med(peer, "maxrss_mb"), "", "", "", ""])
        print()
        print(f"{counts['versions']:,} versions; {rounds} interleaved rounds, medians; load {min(loads):.2f}.."
              f"{max(loads):.2f} (median {C.median(loads):.2f}); {os.cpu_count()} CPUs")
        print(C.table(["what", "wall ms", "cpu ms", "peak MB", "peer wall ms", "ratio", "target", "met"], rows))
        payload: dict[str, Any] = {
            "quick": args.quick, "counts": counts, "rounds": rounds, "page": args.page, "loadavg_rounds": loads,
            "has_paging": has_paging, "has_jsonl": has_jsonl,
            "first_page_ms": {"ours_p50": ours_p50 * 1e3, "peer_p50": peer_p50 * 1e3, "ratio": ours_p50 / peer_p50,
                              "ours_cpu_p50": C.median([x[1] for x in inproc["ours"]]) * 1e3,
                              "peer_cpu_p50": C.median([x[1] for x in inproc["peer"]]) * 1e3,
                              "target_ms": 50, "met": ours_p50 < 0.05},
            "cli": {n: {k: med(n, k) for k in ("wall", "cpu", "maxrss_mb", "first_line")} for n in cli},
            "cli_ratio_wall_vs_peer": {n: med(n, "wall") / med(peer, "wall") for n in cli if n != peer},
            "jsonl_peak_target_mb": 200,
            "jsonl_peak_met": (med("adapterhub list --jsonl", "maxrss_mb") < 200) if has_jsonl else None,
            "samples": samples,
        }
        suffix = f"_{n_versions}" if args.versions and n_versions != 100_000 else ""
        out = C.write_results(f"bench_list{suffix}", payload)
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

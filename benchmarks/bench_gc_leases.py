"""What blob leases cost a publish: the lease row written (its own committed transaction)
before the uploads and removed after the commit, on SQLite (WAL, fsync) and PostgreSQL.

Per round, interleaved (order alternating): one in-process ``Registry.publish`` of a small
PEFT LoRA (conftest's tiny Llama, 3 files, ~11 KB) as a new version into a registry opened
before the timer starts, with leases as shipped, and one with ``take_lease``/``end_lease``
replaced by no-ops (the publish as it was before leases). Medians and the per-round ratio;
``/proc/loadavg`` beside each round.

    .venv/bin/python benchmarks/bench_gc_leases.py [--rounds N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--postgres", default=os.environ.get("ADAPTERHUB_TEST_POSTGRES_URL"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_gc_leases.json"))
    args = ap.parse_args()
    os.environ.setdefault("ADAPTERHUB_LOAD_PLUGINS", "")
    if args.postgres:  # conftest reads it when imported
        os.environ["ADAPTERHUB_TEST_POSTGRES_URL"] = args.postgres
    import warnings

    import adapterhub_sdk as ah
    from adapterhub_sdk.registry import publish as pub

    from conftest import save_base, save_lora

    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-leases-"))
    base = save_base(work / "base")
    lora = save_lora(base, work / "lora")
    real = (pub.take_lease, pub.end_lease)
    urls = {"sqlite": f"sqlite:///{work / 'r.db'}"}
    if args.postgres:
        from conftest import _pg_database

        urls["postgres"] = _pg_database()
    results: dict = {"what": __doc__.split("\n\n")[0], "rounds": args.rounds, "backends": {}}
    for kind, url in urls.items():
        reg = ah.Registry.open(url, blobs=work / f"blobs-{kind}")
        times: dict[str, list[float]] = {"leases": [], "no_leases": []}
        loads = []
        n = 0
        for rnd in range(args.rounds + 2):  # 2 warm-up rounds
            order = ["leases", "no_leases"] if rnd % 2 == 0 else ["no_leases", "leases"]
            for mode in order:
                if mode == "leases":
                    pub.take_lease, pub.end_lease = real
                else:
                    pub.take_lease, pub.end_lease = (lambda core, digests: None), (lambda core, lease: None)
                n += 1
                t0 = time.perf_counter()
                reg.publish(lora, name="bench/leases", version=f"1.0.{n}")
                dt = time.perf_counter() - t0
                if rnd >= 2:
                    times[mode].append(dt)
            if rnd >= 2:
                loads.append(Path("/proc/loadavg").read_text().split()[0])
        pub.take_lease, pub.end_lease = real
        reg.close()
        ratios = [a / b for a, b in zip(times["leases"], times["no_leases"])]
        results["backends"][kind] = {
            "publish_ms_median": {k: round(statistics.median(v) * 1000, 2) for k, v in times.items()},
            "ratio_median": round(statistics.median(ratios), 3),
            "loadavg_1m_per_round": loads,
        }
        print(kind, json.dumps(results["backends"][kind]["publish_ms_median"]),
              "ratio", results["backends"][kind]["ratio_median"], "load", loads[0], "..", loads[-1])
    if "postgres" in urls:
        from conftest import _pg_drop

        _pg_drop(urls["postgres"])
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

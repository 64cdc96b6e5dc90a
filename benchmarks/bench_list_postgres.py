"""``Registry.list`` pages on PostgreSQL: client time per call and the server's execution time of
every statement the call sends (``EXPLAIN ANALYZE`` of the exact statements, captured on
their way to the database), on the registry ``bench_resolve.py`` builds (100,000 versions,
real-sized manifests), in a database of its own (``adapterhub_bench_list_N``) on the server.

Cases: the first page (``limit=50``), by task (about 10% of the versions carry each task),
by task deep in the listing (``offset=1000``), by task without yanked versions, by method,
one adapter by name, and ``offset=5000`` unfiltered (eleven pages read and dropped).

The registry is measured as built, without statistics (a bulk load, a young registry: the
condition the planner is weakest in), then after ``ANALYZE``. ``--before FILE`` runs the same
calls with another ``listing.py`` (e.g. an earlier commit's, from ``git show REV:adapterhub_sdk/listing.py``)
in place of this one, interleaved: a same-run before/after.

    .venv/bin/python benchmarks/bench_list_postgres.py --server postgresql://postgres@127.0.0.1:5432/postgres
        [--versions N] [--reuse] [--keep] [--before FILE] [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import _common as C
from bench_resolve import build, pg_database

import adapterhub_sdk as ah
import adapterhub_sdk.registry.query as query
from adapterhub_sdk import listing as this_listing


def load_listing(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("adapterhub_sdk._listing_before", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(raw: Any) -> dict[str, dict[str, Any]]:
    mid = raw.execute('SELECT name FROM adapters ORDER BY name_key COLLATE "C" OFFSET 5000 LIMIT 1').fetchone()[0]
    return {
        "list(limit=50)": {"limit": 50},
        "list(task='qa', limit=50)": {"task": "qa", "limit": 50},
        "list(task='qa', offset=1000, limit=50)": {"task": "qa", "offset": 1000, "limit": 50},
        "list(task='qa', include_yanked=False, limit=50)": {"task": "qa", "include_yanked": False, "limit": 50},
        "list(method='lora', limit=50)": {"method": "lora", "limit": 50},
        "list(name=<one adapter>)": {"name": mid},
        "list(offset=5000, limit=50)": {"offset": 5000, "limit": 50},
    }


def measure(reg: ah.Registry, raw: Any, mod: ModuleType, kw: dict[str, Any], rounds: int) -> dict[str, Any]:
    query.iter_versions = mod.iter_versions
    try:
        walls = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            n = len(reg.list(**kw))
            walls.append(time.perf_counter() - t0)
        sent: list[tuple[str, dict[str, Any]]] = []

        def spy(fetch: Any, **options: Any) -> Any:
            return mod.iter_versions(lambda sql, params: sent.append((sql, dict(params))) or fetch(sql, params),
                                     **options)

        query.iter_versions = spy
        reg.list(**kw)
    finally:
        query.iter_versions = this_listing.iter_versions
    server = []
    for sql, params in sent:
        sql = sql if "%(" in sql else mod.pyformat(sql)
        ts = []
        for _ in range(5):
            plan = [r[0] for r in raw.execute("EXPLAIN ANALYZE " + sql, params)]
            ts.append(float(re.search(r"Execution Time: ([\d.]+)", plan[-1]).group(1)))
        server.append(statistics.median(ts))
    return {"rows": n, "client_ms": statistics.median(walls) * 1e3, "server_ms": sum(server),
            "statements": len(sent), "server_ms_per_statement": server}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, metavar="URL", help="a PostgreSQL server; the benchmark "
                    "creates (and unless --keep drops) a database of its own there")
    ap.add_argument("--versions", type=int, default=100_000, help="registry size, a multiple of 1000")
    ap.add_argument("--rounds", type=int, default=7, help="client calls per case (median)")
    ap.add_argument("--reuse", action="store_true", help="reuse the database an earlier --keep run built")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--before", type=Path, metavar="FILE", help="another listing.py to measure beside this one")
    args = ap.parse_args()
    import psycopg
    from sqlalchemy.engine import make_url

    dbname = f"adapterhub_bench_list_{args.versions}"
    url = pg_database(args.server, dbname, fresh=not args.reuse)
    work = C.work_dir(f"list_pg_{args.versions}", fresh=not args.reuse)
    os.environ["ADAPTERHUB_BLOBS"] = str(work / "blobs")
    t0 = time.perf_counter()
    counts = None
    if not args.reuse:
        counts = build(url, args.versions // 1000, 10)["counts"]
        print(f"built in {time.perf_counter() - t0:.0f}s: {counts}")
    mods = {"after": this_listing}
    if args.before:
        mods = {"before": load_listing(args.before), **mods}
    raw = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                          autocommit=True)
    reg = ah.Registry.open(url, blobs=work / "blobs")
    payload: dict[str, Any] = {"versions": args.versions, "counts": counts, "server_version": raw.info.server_version,
                               "collation": raw.execute(this_listing.COLLATION_SQL).fetchone(), "runs": {}}
    try:
        for stats in ("no statistics", "after ANALYZE"):
            if stats == "after ANALYZE":
                raw.execute("ANALYZE")
            rows = []
            for label, kw in cases(raw).items():
                res = {name: measure(reg, raw, mod, kw, args.rounds) for name, mod in mods.items()}
                payload["runs"].setdefault(stats, {})[label] = {**res, "loadavg": os.getloadavg()[0]}
                rows.append([label, *[x for r in res.values() for x in (r["server_ms"], r["client_ms"])]])
            heads = [h for name in mods for h in (f"{name}: server ms", f"{name}: client ms")]
            print(f"\n{stats} ({args.versions:,} versions; load {os.getloadavg()[0]:.1f})")
            print(C.table(["Registry.list", *heads], rows))
        out = C.write_results(f"bench_list_postgres_{args.versions}", payload)
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        reg.close()
        raw.close()
        if not args.keep:
            admin = make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Resolve latency on a large SQLite registry, against the same indexed query in raw sqlite3.

Builds a registry with 100,000 published versions over 1,000 bases. The schema comes from
``Registry.open(url)`` (so the Alembic migrations run); rows are bulk-inserted with
SQLAlchemy Core into the real tables (building it through ``publish`` would take hours):

* 100 architecture families x 10 bases. Bases of a family share the arch signature and
  the shape table (Llama-style, 16..40 layers, ~150..360 tensors); each base has its own
  fingerprint. ``bases.shapes`` holds the real JSON body ``register_base`` writes.
* per base 10 adapters x 10 versions (``0.0.0`` .. ``2.0.0``, one ``2.1.0-rc.1``);
  1..3 of 20 task tags per version; 2 files per version; ~2% yanked; ~5% published
  without a base fingerprint; ~10% DoRA.
* 4 requirement sets per family, shared by its adapters (real LoRA requirements
  built from the family's shapes): q+v, q+k+v+o, all linear, and all linear plus a
  resized ``lm_head`` (which does not fit the family: vocabulary size differs).
  Adapters 0-3 of a base use the first, 4-6 the second, 7-8 the third, 9 the fourth.
* ``versions.manifest`` is as large as a real one (adapter config, requirements with one
  entry per touched base tensor, file list: 2-20 KB); resolve never parses it, and must not
  have to read it.

A sample of bases is queried. Before timing, ``Registry.resolve`` is called once per
queried base so the ``fits`` cache (requirement set x arch signature) is filled: the
timed numbers are the steady state, not the first resolve against a new architecture
(which checks every requirement set once; reported separately as "pre-warm").

Timed, interleaved in one loop (order rotated per query, >= 1000 queries each):

* ours:  ``Registry.resolve(fingerprint=<64 hex>, task=<task>)`` and without ``task``
* peer:  raw ``sqlite3`` on its own connection: look the base's arch signature up, then
  exact-fingerprint rows UNION ALL structural rows (``requirement_sets CROSS JOIN fits
  CROSS JOIN versions``: the join order SQLite's CROSS JOIN pins, i.e. the best plan the
  schema's indexes allow) with the same filters (task via a correlated EXISTS, not yanked),
  fetching the same answer ours returns (9 version columns, the adapter name and the
  task list), ordered exact-first, newest-first. The halves are disjoint, so UNION ALL
  equals UNION without its dedup sort. The peer trusts ``fits`` to be complete; ours
  also checks that every requirement set has a verdict for the arch (memoised).
* peer, version rows only: the same query without the two per-row label subqueries
  (adapter name, task list); this is the SQL ours sends. Ours takes names and task lists
  from per-``Registry`` memos keyed by immutable ids and manifest digests.

Then "labels not yet remembered": ours again with its name and task memos emptied before
each call, i.e. what a process's first resolve of a base pays.

Both sides are checked to return the same (name, version, verdict) sets and task lists.

    .venv/bin/python benchmarks/bench_resolve.py [--quick] [--queries N]

``--quick``: 10,000 versions (10 families x 10 bases x 10 adapters x 10 versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import _common as C
from sqlalchemy import insert

from adapterhub_sdk import Registry
from adapterhub_sdk import db as dbmod
from adapterhub_sdk.fingerprint import _combine
from adapterhub_sdk.methods.base import requirements_digest
from adapterhub_sdk.names import name_key
from adapterhub_sdk.registry import T_ADAPTERS, T_BASES, T_FILES, T_REQS, T_TASKS, T_VERSIONS

TASKS = ["sentiment", "summarization", "translation", "qa", "chat", "code", "math", "ner",
         "classification", "retrieval", "reranking", "toxicity", "sql", "legal", "medical",
         "finance", "dialogue", "instruct", "reasoning", "tool-use"]
VERSIONS = ["0.0.0", "0.1.0", "0.2.0", "0.3.0", "1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0", "2.1.0-rc.1"]
LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
REQ_TARGETS = [("self_attn.q_proj", "self_attn.v_proj"),
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
               LINEAR, LINEAR]
ADAPTER_REQ = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]  # requirement set of adapter a of each base
LORA_CONFIG = {  # the keys PEFT 0.21 writes to adapter_config.json for a LoRA
    "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "org/base", "bias": "none",
    "corda_config": None, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
    "inference_mode": True, "init_lora_weights": True, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16, "lora_bias": False,
    "lora_dropout": 0.05, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "peft_type": "LORA", "r": 8, "rank_pattern": {}, "revision": None, "target_modules": ["q_proj", "v_proj"],
    "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_dora": False, "use_rslora": False}


def family_dims(f: int) -> dict[str, int]:
    """Each family its own hidden size (so no family's requirement sets fit another's
    bases), and its own vocabulary (so its own arch signature)."""
    rnd = random.Random(1000 + f)
    hidden = 1024 + 64 * f
    return {"hidden": hidden, "inter": int(hidden * rnd.choice([2.75, 3.5, 4.0])) // 64 * 64,
            "kv": hidden // rnd.choice([1, 4, 8]), "layers": rnd.choice([16, 22, 24, 28, 32, 40]),
            "vocab": 32000 + 64 * f}


def family_shapes(d: dict[str, int]) -> dict[str, tuple[int, ...]]:
    h, i, kv = d["hidden"], d["inter"], d["kv"]
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (d["vocab"], h), "model.norm.weight": (h,),
                                     "lm_head.weight": (d["vocab"], h)}
    for n in range(d["layers"]):
        p = f"model.layers.{n}."
        s.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                  p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                  p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                  p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                  p + "mlp.down_proj.weight": (h, i)})
    return s


def requirements(d: dict[str, int], shapes: dict[str, tuple[int, ...]], k: int) -> dict:
    req = {f"model.layers.{n}.{m}.weight": list(shapes[f"model.layers.{n}.{m}.weight"])
           for n in range(d["layers"]) for m in REQ_TARGETS[k]}
    if k == 3:  # modules_to_save on a resized vocabulary: does not fit the family's bases
        req["lm_head.weight"] = [d["vocab"] + 8, d["hidden"]]
    return req


def build(url: str, families: int, bases_per: int, seed: int = 0) -> dict:
    """Create the schema through Registry.open, then bulk-insert every table. Returns the
    bases (fingerprint, family) for queries."""
    rnd = random.Random(seed)
    reg = Registry.open(url)
    engine = reg.engine
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    bases, reqs, adapters, versions, tasks, files = [], [], [], [], [], []
    out_bases = []
    seen_reqs: set[str] = set()
    vid = 0
    aid = 0
    for f in range(families):
        d = family_dims(f)
        shapes = family_shapes(d)
        body = json.dumps({"shapes": {k: list(v) for k, v in shapes.items()}, "tied": {},
                           "dtypes": {"BF16": len(shapes)}}, sort_keys=True)
        fam_reqs = []
        fam_req_bodies = []
        for k in range(4):
            req = requirements(d, shapes, k)
            dg = requirements_digest(req)
            fam_reqs.append(dg)
            fam_req_bodies.append(req)
            if dg not in seen_reqs:  # content-addressed, as publish stores them
                seen_reqs.add(dg)
                reqs.append({"digest": dg, "body": json.dumps(req, sort_keys=True)})
        arch = None
        for b in range(bases_per):
            entries = [(n, "BF16", s, hashlib.sha256(f"{f}/{b}/{n}".encode()).digest()) for n, s in shapes.items()]
            fp = _combine(entries, {}, None)
            arch = arch or fp.arch_signature
            assert fp.arch_signature == arch
            bases.append({"fingerprint": fp.digest, "arch_signature": fp.arch_signature,
                          "n_tensors": fp.n_tensors, "n_params": fp.n_params, "total_bytes": fp.total_bytes,
                          "shapes": body, "created_at": t0})
            out_bases.append({"fingerprint": fp.digest, "family": f})
            base_name = f"org{f}/fam{f}-base{b}"
            for a in range(10):
                aid += 1
                name = f"team{(f * 7 + b) % 53}/fam{f}-b{b}-adapter{a}"
                adapters.append({"id": aid, "name": name, "name_key": name_key(name),
                                 "created_at": t0 + timedelta(minutes=aid)})
                no_base = rnd.random() < 0.05
                variant = "dora" if rnd.random() < 0.10 else "lora"
                for v in VERSIONS:
                    vid += 1
                    core = v.split("-")[0]
                    major, minor, patch = (int(x) for x in core.split("."))
                    digest = "sha256:" + hashlib.sha256(f"v{vid}".encode()).hexdigest()
                    size = rnd.randint(1 << 20, 400 << 20)
                    # as large as a real one: the adapter config, the requirements (one entry per
                    # touched base tensor), the file list; kilobytes, which resolve must not read
                    manifest = json.dumps({
                        "name": name, "version": v, "digest": digest,
                        "method": {"type": "lora", "variant": variant, "config": LORA_CONFIG},
                        "requirements": fam_req_bodies[ADAPTER_REQ[a]],
                        "files": [{"path": "adapter_config.json", "size": 700},
                                  {"path": "adapter_model.safetensors", "size": size}]}, sort_keys=True)
                    versions.append({
                        "id": vid, "adapter_id": aid, "version": v, "major": major, "minor": minor,
                        "patch": patch, "prerelease": v.split("-", 1)[1] if "-" in v else "",
                        "digest": digest, "manifest": manifest, "method": "lora", "variant": variant,
                        "base_fingerprint": None if no_base else fp.digest,
                        "base_arch": None if no_base else fp.arch_signature, "base_name": base_name,
                        "req_digest": fam_reqs[ADAPTER_REQ[a]], "size": size,
                        "yanked": rnd.random() < 0.02, "created_at": t0 + timedelta(seconds=vid)})
                    for t in rnd.sample(TASKS, rnd.randint(1, 3)):
                        tasks.append({"version_id": vid, "task": t})
                    files.append({"version_id": vid, "path": "adapter_config.json",
                                  "sha256": hashlib.sha256(f"c{vid}".encode()).hexdigest(), "size": 700})
                    files.append({"version_id": vid, "path": "adapter_model.safetensors",
                                  "sha256": hashlib.sha256(f"w{vid}".encode()).hexdigest(), "size": size - 700})
    with dbmod.transaction(engine, write=True) as conn:
        for table, rows in ((T_BASES, bases), (T_REQS, reqs), (T_ADAPTERS, adapters), (T_VERSIONS, versions),
                            (T_TASKS, tasks), (T_FILES, files)):
            for i in range(0, len(rows), 20000):
                conn.execute(insert(table), rows[i:i + 20000])
    reg.close()  # no ANALYZE: a registry grown by publish has no planner statistics either
    return {"bases": out_bases, "counts": {"bases": len(bases), "requirement_sets": len(reqs),
                                           "adapters": len(adapters), "versions": len(versions),
                                           "version_tasks": len(tasks), "files": len(files)}}


RAW_COLS = ("v.id, v.adapter_id, v.version, v.digest, v.method, v.variant, v.base_fingerprint, v.size, v.yanked, "
            "(SELECT a.name FROM adapters a WHERE a.id = v.adapter_id), "
            "(SELECT group_concat(t.task, ',') FROM version_tasks t WHERE t.version_id = v.id)")
TASK_FILTER = " AND EXISTS (SELECT 1 FROM version_tasks t WHERE t.version_id = v.id AND t.task = :task)"


def raw_sql(with_task: bool) -> str:
    """Exact rows UNION ALL structural rows. The structural half is written with CROSS JOIN,
    which SQLite takes as a join order: requirement_sets -> fits (primary key) -> versions
    (ix_versions_req_digest); the best plan the schema's indexes allow."""
    tf = TASK_FILTER if with_task else ""
    return (f"SELECT 0 AS rank, {RAW_COLS}, v.major, v.minor, v.patch FROM versions v "
            f"WHERE v.base_fingerprint = :fp AND v.yanked = 0{tf} "
            f"UNION ALL "
            f"SELECT 1 AS rank, {RAW_COLS}, v.major, v.minor, v.patch "
            f"FROM requirement_sets r CROSS JOIN fits f CROSS JOIN versions v "
            f"WHERE f.req_digest = r.digest AND f.arch_signature = :arch AND f.ok = 1 "
            f"AND v.req_digest = r.digest "
            f"AND (v.base_fingerprint IS NULL OR v.base_fingerprint != :fp) AND v.yanked = 0{tf} "
            f"ORDER BY rank, major DESC, minor DESC, patch DESC")


def raw_resolve(db: sqlite3.Connection, fp: str, task: str | None, *, sql=None) -> list[tuple]:
    row = db.execute("SELECT arch_signature FROM bases WHERE fingerprint = ?", (fp,)).fetchone()
    params = {"fp": fp, "arch": row[0]}
    if task:
        params["task"] = task
    return db.execute((sql or raw_sql)(bool(task)), params).fetchall()


CORE_COLS = "v.id, v.adapter_id, v.version, v.digest, v.method, v.variant, v.base_fingerprint, v.size, v.yanked"


def raw_core_sql(with_task: bool) -> str:
    """The same query without the two per-row label subqueries (adapter name, task list):
    the version rows only, which is the SQL ours sends (ours takes the labels from memos
    keyed by immutable ids and digests)."""
    return raw_sql(with_task).replace(RAW_COLS, CORE_COLS)


def raw_core_resolve(db: sqlite3.Connection, fp: str, task: str | None) -> list[tuple]:
    return raw_resolve(db, fp, task, sql=raw_core_sql)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10,000 versions instead of 100,000")
    ap.add_argument("--queries", type=int, default=None, help="queries per variant (default 1000, quick 200)")
    ap.add_argument("--sample-bases", type=int, default=200, help="how many bases the queries draw from")
    ap.add_argument("--keep", action="store_true", help="keep the registry under benchmarks/_work")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a registry kept by an earlier --keep run (same size) instead of building one")
    args = ap.parse_args()
    families = 10 if args.quick else 100
    n_queries = args.queries or (200 if args.quick else 1000)

    work = C.work_dir("resolve", fresh=not args.reuse)
    url = f"sqlite:///{work / 'registry.db'}"
    meta = work / "built.json"
    try:
        t0 = time.perf_counter()
        if args.reuse and meta.is_file():
            built = json.loads(meta.read_text())
        else:
            built = build(url, families, 10)
            meta.write_text(json.dumps(built))
        build_s = time.perf_counter() - t0
        counts = built["counts"]
        db_mb = (work / "registry.db").stat().st_size / 1e6
        print(f"built registry in {build_s:.1f}s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
              + f"; {db_mb:.0f} MB")

        rnd = random.Random(42)
        sample = rnd.sample(built["bases"], min(args.sample_bases, len(built["bases"])))
        reg = Registry.open(url)
        prewarm = []
        for b in sample:
            dt, _ = C.timed(reg.resolve, fingerprint=b["fingerprint"])
            prewarm.append(dt)
        with reg.engine.connect() as conn:
            n_fits, fits_mb = conn.exec_driver_sql(
                "SELECT count(*), coalesce(sum(length(reasons)), 0) / 1e6 FROM fits").one()
        db_mb_warm = sum(f.stat().st_size for f in work.glob("registry.db*")) / 1e6
        print(f"pre-warmed fits for {len(sample)} bases ({len({b['family'] for b in sample})} archs, "
              f"{n_fits:,} fits rows holding {fits_mb:.0f} MB of reasons; database now {db_mb_warm:.0f} MB): "
              f"median first resolve {C.median(prewarm) * 1e3:.1f} ms")

        raw = sqlite3.connect(work / "registry.db", isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA query_only=ON")
        names = dict(raw.execute("SELECT id, name FROM adapters"))

        # correctness: ours and the peer return the same versions, in a compatible order
        for b in sample[:20]:
            for task in (None, TASKS[rnd.randrange(len(TASKS))]):
                ours = reg.resolve(fingerprint=b["fingerprint"], task=task)
                peer = raw_resolve(raw, b["fingerprint"], task)
                got = sorted((m.name, m.version, m.verdict) for m in ours)
                want = sorted((r[10], r[3], "exact" if r[0] == 0 else "structural") for r in peer)
                assert all(r[10] == names[r[2]] for r in peer)
                assert {m.name: m.tasks for m in ours if m.version == "1.0.0"} == {
                    r[10]: tuple(sorted(r[11].split(","))) for r in peer if r[3] == "1.0.0"}
                assert got == want, f"ours and raw disagree for {b['fingerprint'][:12]} task={task}"

        variants = ["ours_task", "raw_task", "rawcore_task", "ours_all", "raw_all", "rawcore_all"]
        lat: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        nrows: dict[str, list[int]] = {v: [] for v in variants}
        for q in range(n_queries):
            fp = rnd.choice(sample)["fingerprint"]
            task = rnd.choice(TASKS)
            k = q % len(variants)
            for v in variants[k:] + variants[:k]:
                t = task if v.endswith("task") else None
                c0 = time.thread_time()
                if v.startswith("ours"):
                    dt, res = C.timed(reg.resolve, fingerprint=fp, task=t)
                elif v.startswith("rawcore"):
                    dt, res = C.timed(raw_core_resolve, raw, fp, t)
                else:
                    dt, res = C.timed(raw_resolve, raw, fp, t)
                cpu[v].append(time.thread_time() - c0)
                lat[v].append(dt)
                nrows[v].append(len(res))

        # cold labels: the name and task memos emptied before each call (what a process's
        # first resolve of a base pays; the fits verdicts stay remembered, as in a CLI call
        # after the registry has seen the arch once, since they are stored in the database)
        cold: dict[str, list[float]] = {"ours_task": [], "ours_all": []}
        for _ in range(max(50, n_queries // 5)):
            fp = rnd.choice(sample)["fingerprint"]
            task = rnd.choice(TASKS)
            for v in cold:
                reg._name_memo.clear()
                reg._task_memo.clear()
                reg._task_tuples.clear()
                dt, _ = C.timed(reg.resolve, fingerprint=fp, task=task if v == "ours_task" else None)
                cold[v].append(dt)
        raw.close()
        reg.close()

        stats = {}
        for v in variants:
            stats[v] = {"p50_ms": C.percentile(lat[v], 50) * 1e3, "p99_ms": C.percentile(lat[v], 99) * 1e3,
                        "mean_ms": sum(lat[v]) / len(lat[v]) * 1e3, "rows_mean": sum(nrows[v]) / len(nrows[v]),
                        "rows_max": max(nrows[v]),
                        "cpu_p50_ms": C.percentile(cpu[v], 50) * 1e3, "cpu_p99_ms": C.percentile(cpu[v], 99) * 1e3}
        rows = []
        for kind, label in (("task", "with task"), ("all", "no task")):
            o, r = stats[f"ours_{kind}"], stats[f"raw_{kind}"]
            ok = o["p50_ms"] < 5 and o["p99_ms"] < 20
            rows.append([f"ours resolve ({label})", o["p50_ms"], o["p99_ms"], o["rows_mean"],
                         f"{o['p50_ms'] / r['p50_ms']:.1f}x", f"{o['p99_ms'] / r['p99_ms']:.1f}x",
                         "p50<5 p99<20", "yes" if ok else "NO"])
            rows.append([f"raw sqlite3 ({label})", r["p50_ms"], r["p99_ms"], r["rows_mean"], "1.0x", "1.0x", "", ""])
            rc = stats[f"rawcore_{kind}"]
            rows.append([f"raw sqlite3, version rows only ({label})", rc["p50_ms"], rc["p99_ms"], rc["rows_mean"],
                         f"ours {o['p50_ms'] / rc['p50_ms']:.1f}x", f"ours {o['p99_ms'] / rc['p99_ms']:.1f}x", "", ""])
            cs = cold[f"ours_{kind}"]
            rows.append([f"ours, labels not yet remembered ({label})", C.percentile(cs, 50) * 1e3,
                         C.percentile(cs, 99) * 1e3, o["rows_mean"], f"{C.percentile(cs, 50) / (r['p50_ms'] / 1e3):.1f}x",
                         f"{C.percentile(cs, 99) / (r['p99_ms'] / 1e3):.1f}x", "", ""])
        print()
        print(f"{n_queries} queries per variant over {len(sample)} bases, {counts['versions']:,} versions "
              f"(ratio = ours / raw)")
        print(C.table(["what", "p50 ms", "p99 ms", "rows/query", "p50 ratio", "p99 ratio", "target", "met"], rows))
        print()
        print("CPU time of the querying thread (what the wall time would be on an idle core; "
              f"load average now {os.getloadavg()[0]:.2f}):")
        print(C.table(["what", "cpu p50 ms", "cpu p99 ms", "p50 ratio", "p99 ratio"], [
            [f"{side} ({label})", stats[f"{side}_{kind}"]["cpu_p50_ms"], stats[f"{side}_{kind}"]["cpu_p99_ms"],
             f"{stats[f'{side}_{kind}']['cpu_p50_ms'] / stats[f'raw_{kind}']['cpu_p50_ms']:.1f}x",
             f"{stats[f'{side}_{kind}']['cpu_p99_ms'] / stats[f'raw_{kind}']['cpu_p99_ms']:.1f}x"]
            for kind, label in (("task", "with task"), ("all", "no task")) for side in ("ours", "raw", "rawcore")]))
        out = C.write_results("bench_resolve", {
            "quick": args.quick, "counts": counts, "db_mb": db_mb, "build_s": build_s,
            "queries_per_variant": n_queries, "sampled_bases": len(sample), "fits_rows": n_fits,
            "fits_reasons_mb": fits_mb, "db_mb_after_prewarm": db_mb_warm,
            "prewarm_first_resolve_ms": {"median": C.median(prewarm) * 1e3, "max": max(prewarm) * 1e3},
            "stats": stats,
            "cold_labels_ms": {v: {"p50": C.percentile(x, 50) * 1e3, "p99": C.percentile(x, 99) * 1e3, "n": len(x)}
                               for v, x in cold.items()},
            "ratio_p50_vs_version_rows_only": {k: stats[f"ours_{k}"]["p50_ms"] / stats[f"rawcore_{k}"]["p50_ms"]
                                               for k in ("task", "all")},
            "ratio_p50": {k: stats[f"ours_{k}"]["p50_ms"] / stats[f"raw_{k}"]["p50_ms"] for k in ("task", "all")},
            "ratio_p99": {k: stats[f"ours_{k}"]["p99_ms"] / stats[f"raw_{k}"]["p99_ms"] for k in ("task", "all")},
            "targets": {"p50_ms": 5, "p99_ms": 20},
            "target_met": {k: stats[f"ours_{k}"]["p50_ms"] < 5 and stats[f"ours_{k}"]["p99_ms"] < 20
                           for k in ("task", "all")},
            "cpu_ratio_p50": {k: stats[f"ours_{k}"]["cpu_p50_ms"] / stats[f"raw_{k}"]["cpu_p50_ms"]
                              for k in ("task", "all")},
            "cpu_target_met": {k: stats[f"ours_{k}"]["cpu_p50_ms"] < 5 and stats[f"ours_{k}"]["cpu_p99_ms"] < 20
                               for k in ("task", "all")},
            "latencies_ms": {v: [round(x * 1e3, 4) for x in lat[v]] for v in variants},
            "cpu_ms": {v: [round(x * 1e3, 4) for x in cpu[v]] for v in variants},
        })
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

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

``--versions N`` builds N versions instead (N/1000 families; ``--versions 1000000``: 1,000
families, 10,000 bases, 4,000 requirement sets, a ~10 GB database, ~13 min to build; build
it once with ``--build-only --keep`` and measure with ``--reuse``). ``--postgres URL`` builds
and measures the same registry on PostgreSQL too, in a database of its own on that server
(``adapterhub_bench_resolve_N``), with raw psycopg as the peer.

Every run first empties ``fits`` (a cache), then times the first resolve of one base each of
``--new-archs`` architectures no resolve has seen ("first resolve of a new architecture":
it checks the requirement sets that can fit the base and records their verdicts; target
<= 50 ms at 1M). A sample of bases is queried. Before timing, ``Registry.resolve`` is called
once per queried base ("pre-warm"), so the timed numbers are the steady state.

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

    .venv/bin/python benchmarks/bench_resolve.py [--quick] [--queries N] [--versions N] [--postgres URL]

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
from typing import Any

import _common as C
from sqlalchemy import insert

from adapterhub_sdk import Registry
from adapterhub_sdk import db as dbmod
from adapterhub_sdk.fingerprint import _combine
from adapterhub_sdk.methods.base import requirements_digest
from adapterhub_sdk.names import name_key
from adapterhub_sdk.registry import T_ADAPTERS, T_BASES, T_FILES, T_REQS, T_TASKS, T_VERSIONS
from adapterhub_sdk.registry.probes import requirement_probe

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
    """Create the schema through Registry.open, then bulk-insert every table, one family at a
    time (a 1M-version registry holds ~10 GB of manifests: never all in memory). Returns the
    bases (fingerprint, family) for queries."""
    rnd = random.Random(seed)
    reg = Registry.open(url)
    engine = reg.engine
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    counts = dict.fromkeys(("bases", "requirement_sets", "adapters", "versions", "version_tasks", "files"), 0)
    out_bases = []
    seen_reqs: set[str] = set()
    vid = 0
    aid = 0
    lora_json = json.dumps(LORA_CONFIG, sort_keys=True)
    tables = (("bases", T_BASES), ("requirement_sets", T_REQS), ("adapters", T_ADAPTERS), ("versions", T_VERSIONS),
              ("version_tasks", T_TASKS), ("files", T_FILES))
    pending: dict[str, list[dict]] = {k: [] for k, _ in tables}

    def flush() -> None:
        with dbmod.transaction(engine, write=True) as conn:
            for key, table in tables:
                rows = pending[key]
                for i in range(0, len(rows), 20000):
                    conn.execute(insert(table), rows[i:i + 20000])
                counts[key] += len(rows)
                rows.clear()

    for f in range(families):
        d = family_dims(f)
        shapes = family_shapes(d)
        body = json.dumps({"shapes": {k: list(v) for k, v in shapes.items()}, "tied": {},
                           "dtypes": {"BF16": len(shapes)}}, sort_keys=True)
        fam_reqs = []
        fam_req_json = []
        for k in range(4):
            req = requirements(d, shapes, k)
            dg = requirements_digest(req)
            fam_reqs.append(dg)
            fam_req_json.append(json.dumps(req, sort_keys=True))
            if dg not in seen_reqs:  # content-addressed, as publish stores them
                seen_reqs.add(dg)
                pending["requirement_sets"].append({"digest": dg, "body": fam_req_json[-1],
                                                    "probe": requirement_probe(req)})
        arch = None
        for b in range(bases_per):
            entries = [(n, "BF16", s, hashlib.sha256(f"{f}/{b}/{n}".encode()).digest()) for n, s in shapes.items()]
            fp = _combine(entries, {}, None)
            arch = arch or fp.arch_signature
            assert fp.arch_signature == arch
            pending["bases"].append({"fingerprint": fp.digest, "arch_signature": fp.arch_signature,
                                     "n_tensors": fp.n_tensors, "n_params": fp.n_params,
                                     "total_bytes": fp.total_bytes, "shapes": body, "created_at": t0})
            out_bases.append({"fingerprint": fp.digest, "family": f})
            base_name = f"org{f}/fam{f}-base{b}"
            for a in range(10):
                aid += 1
                name = f"team{(f * 7 + b) % 53}/fam{f}-b{b}-adapter{a}"
                pending["adapters"].append({"id": aid, "name": name, "name_key": name_key(name),
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
                    # touched base tensor), the file list; kilobytes, which resolve must not read.
                    # Spliced from pre-serialised parts (same bytes json.dumps(sort_keys) gives).
                    manifest = json.dumps({
                        "name": name, "version": v, "digest": digest,
                        "method": {"type": "lora", "variant": variant, "config": "@C"},
                        "requirements": "@R",
                        "files": [{"path": "adapter_config.json", "size": 700},
                                  {"path": "adapter_model.safetensors", "size": size}]}, sort_keys=True
                    ).replace('"@C"', lora_json).replace('"@R"', fam_req_json[ADAPTER_REQ[a]])
                    pending["versions"].append({
                        "id": vid, "adapter_id": aid, "version": v, "major": major, "minor": minor,
                        "patch": patch, "prerelease": v.split("-", 1)[1] if "-" in v else "",
                        "digest": digest, "manifest": manifest, "method": "lora", "variant": variant,
                        "base_fingerprint": None if no_base else fp.digest,
                        "base_arch": None if no_base else fp.arch_signature, "base_name": base_name,
                        "req_digest": fam_reqs[ADAPTER_REQ[a]], "size": size,
                        "yanked": rnd.random() < 0.02, "created_at": t0 + timedelta(seconds=vid)})
                    for t in rnd.sample(TASKS, rnd.randint(1, 3)):
                        pending["version_tasks"].append({"version_id": vid, "task": t})
                    pending["files"].append({"version_id": vid, "path": "adapter_config.json",
                                             "sha256": hashlib.sha256(f"c{vid}".encode()).hexdigest(), "size": 700})
                    pending["files"].append({"version_id": vid, "path": "adapter_model.safetensors",
                                             "sha256": hashlib.sha256(f"w{vid}".encode()).hexdigest(),
                                             "size": size - 700})
        if len(pending["versions"]) >= 20000:
            flush()
    flush()
    reg.close()  # no ANALYZE: a registry grown by publish has no planner statistics either
    return {"bases": out_bases, "counts": counts}


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


def _pg_sql(sql: str) -> str:
    """The peer's SQL for PostgreSQL: string_agg for group_concat, booleans, pyformat parameters."""
    out = sql.replace("group_concat(t.task, ',')", "string_agg(t.task, ',')").replace(
        "v.yanked = 0", "v.yanked = false").replace("f.ok = 1", "f.ok")
    for k in ("fp", "arch", "task"):
        out = out.replace(f":{k}", f"%({k})s")
    return out


def raw_resolve(db: Any, fp: str, task: str | None, *, sql=None) -> list[tuple]:
    """The peer on its own DBAPI connection (sqlite3, or psycopg for PostgreSQL)."""
    pg = not isinstance(db, sqlite3.Connection)
    cur = db.cursor()
    try:
        cur.execute("SELECT arch_signature FROM bases WHERE fingerprint = " + ("%s" if pg else "?"), (fp,))
        row = cur.fetchone()
        params = {"fp": fp, "arch": row[0]}
        if task:
            params["task"] = task
        text_sql = (sql or raw_sql)(bool(task))
        cur.execute(_pg_sql(text_sql) if pg else text_sql, params)
        return cur.fetchall()
    finally:
        cur.close()


CORE_COLS = "v.id, v.adapter_id, v.version, v.digest, v.method, v.variant, v.base_fingerprint, v.size, v.yanked"


def raw_core_sql(with_task: bool) -> str:
    """The same query without the two per-row label subqueries (adapter name, task list):
    the version rows only, which is the SQL ours sends (ours takes the labels from memos
    keyed by immutable ids and digests)."""
    return raw_sql(with_task).replace(RAW_COLS, CORE_COLS)


def raw_core_resolve(db: Any, fp: str, task: str | None) -> list[tuple]:
    return raw_resolve(db, fp, task, sql=raw_core_sql)


def pg_database(server_url: str, name: str, *, fresh: bool) -> str:
    """A database of its own on the PostgreSQL server at ``server_url`` (created; dropped
    first when ``fresh``), so the benchmark never touches the database the URL names."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(dbmod.normalize_url(server_url))
    admin = u.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return u.set(database=name).render_as_string(hide_password=False)


def raw_connect(url: str) -> Any:
    if url.startswith("sqlite"):
        raw = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA query_only=ON")
        return raw
    import psycopg
    from sqlalchemy.engine import make_url

    return psycopg.connect(make_url(dbmod.normalize_url(url)).set(drivername="postgresql")
                           .render_as_string(hide_password=False), autocommit=True)


NEW_ARCH_CPU: list[float] = []  # CPU time of the querying thread, beside the wall times


def new_arch_first_resolves(reg: Registry, bases: list[dict], n: int) -> list[float]:
    """The first resolve of a base whose architecture no resolve has seen yet (its fits are
    computed then): one base each of ``n`` families."""
    NEW_ARCH_CPU.clear()
    out = []
    for b in bases[:n]:
        c0 = time.thread_time()
        dt, _ = C.timed(reg.resolve, fingerprint=b["fingerprint"])
        NEW_ARCH_CPU.append(time.thread_time() - c0)
        out.append(dt)
    return out


def measure(url: str, blobs: Any, built: dict, n_queries: int, sample_n: int, n_new_arch: int) -> dict:
    """Everything timed on one backend."""
    counts = built["counts"]
    rnd = random.Random(42)
    sample = rnd.sample(built["bases"], min(sample_n, len(built["bases"])))
    sampled_families = {b["family"] for b in sample}
    seen: set[int] = set()
    fresh_archs = []  # one base each of families outside the sample: architectures never resolved
    for b in built["bases"]:
        if b["family"] not in sampled_families and b["family"] not in seen:
            seen.add(b["family"])
            fresh_archs.append(b)
    reg = Registry.open(url, blobs=blobs)
    with reg.engine.begin() as conn:  # fits is a cache: every run starts from none (--reuse included)
        conn.exec_driver_sql("DELETE FROM fits")
    new_arch = new_arch_first_resolves(reg, fresh_archs, n_new_arch)
    if new_arch:
        print(f"first resolve of a new architecture ({len(new_arch)} archs, {counts['requirement_sets']:,} "
              f"requirement sets in the registry): median {C.median(new_arch) * 1e3:.1f} ms, "
              f"max {max(new_arch) * 1e3:.1f} ms")
    prewarm = []
    for b in sample:
        dt, _ = C.timed(reg.resolve, fingerprint=b["fingerprint"])
        prewarm.append(dt)
    with reg.engine.connect() as conn:
        n_fits, fits_mb = conn.exec_driver_sql(
            "SELECT count(*), coalesce(sum(length(reasons)), 0) / 1e6 FROM fits").one()
    print(f"pre-warmed fits for {len(sample)} bases ({len(sampled_families)} archs, "
          f"{n_fits:,} fits rows holding {float(fits_mb):.0f} MB of reasons): "
          f"median first resolve {C.median(prewarm) * 1e3:.1f} ms")

    raw = raw_connect(url)
    cur = raw.cursor()
    cur.execute("SELECT id, name FROM adapters")
    names = dict(cur.fetchall())
    cur.close()

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

    variants = ["ours_task", "raw_task", "rawcore_task", "ours_all", "raw_all", "rawcore_all", "ours_all_limit100"]
    lat: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    nrows: dict[str, list[int]] = {v: [] for v in variants}
    for q in range(n_queries):
        fp = rnd.choice(sample)["fingerprint"]
        task = rnd.choice(TASKS)
        k = q % len(variants)
        for v in variants[k:] + variants[:k]:
            t = task if "task" in v else None
            c0 = time.thread_time()
            if v == "ours_all_limit100":
                dt, res = C.timed(reg.resolve, fingerprint=fp, limit=100)
            elif v.startswith("ours"):
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
            for memo in ("_name_memo", "_task_memo", "_task_tuples"):
                m = getattr(reg, memo, None)
                if m is not None:
                    m.clear()
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
    return {"sample": sample, "n_fits": n_fits, "fits_mb": float(fits_mb), "prewarm": prewarm,
            "new_arch": new_arch, "stats": stats, "cold": cold, "lat": lat, "cpu": cpu}


def report(label: str, m: dict, counts: dict, n_queries: int) -> dict:
    stats, cold = m["stats"], m["cold"]
    rows = []
    for kind, what in (("task", "with task"), ("all", "no task")):
        o, r = stats[f"ours_{kind}"], stats[f"raw_{kind}"]
        ok = o["p50_ms"] < 5 and o["p99_ms"] < 20
        rows.append([f"ours resolve ({what})", o["p50_ms"], o["p99_ms"], o["rows_mean"],
                     f"{o['p50_ms'] / r['p50_ms']:.1f}x", f"{o['p99_ms'] / r['p99_ms']:.1f}x",
                     "p50<5 p99<20", "yes" if ok else "NO"])
        rows.append([f"raw DBAPI ({what})", r["p50_ms"], r["p99_ms"], r["rows_mean"], "1.0x", "1.0x", "", ""])
        rc = stats[f"rawcore_{kind}"]
        rows.append([f"raw DBAPI, version rows only ({what})", rc["p50_ms"], rc["p99_ms"], rc["rows_mean"],
                     f"ours {o['p50_ms'] / rc['p50_ms']:.1f}x", f"ours {o['p99_ms'] / rc['p99_ms']:.1f}x", "", ""])
        cs = cold[f"ours_{kind}"]
        rows.append([f"ours, labels not yet remembered ({what})", C.percentile(cs, 50) * 1e3,
                     C.percentile(cs, 99) * 1e3, o["rows_mean"], f"{C.percentile(cs, 50) / (r['p50_ms'] / 1e3):.1f}x",
                     f"{C.percentile(cs, 99) / (r['p99_ms'] / 1e3):.1f}x", "", ""])
    lim, r = stats["ours_all_limit100"], stats["raw_all"]
    rows.append(["ours resolve (no task, limit=100)", lim["p50_ms"], lim["p99_ms"], lim["rows_mean"],
                 f"{lim['p50_ms'] / r['p50_ms']:.1f}x", f"{lim['p99_ms'] / r['p99_ms']:.1f}x", "p50<5 p99<20",
                 "yes" if lim["p50_ms"] < 5 and lim["p99_ms"] < 20 else "NO"])
    na = m["new_arch"]
    if na:
        rows.append([f"first resolve of a new architecture ({len(na)} archs)", C.percentile(na, 50) * 1e3,
                     max(na) * 1e3, "", "", "", "<= 50 ms", "yes" if max(na) <= 0.05 else "NO"])
    print()
    print(f"[{label}] {n_queries} queries per variant over {len(m['sample'])} bases, {counts['versions']:,} versions "
          f"(ratio = ours / raw)")
    print(C.table(["what", "p50 ms", "p99 ms", "rows/query", "p50 ratio", "p99 ratio", "target", "met"], rows))
    print()
    print(f"[{label}] CPU time of the querying thread (what the wall time would be on an idle core; "
          f"load average now {os.getloadavg()[0]:.2f}):")
    print(C.table(["what", "cpu p50 ms", "cpu p99 ms", "p50 ratio", "p99 ratio"], [
        [f"{side} ({what})", stats[f"{side}_{kind}"]["cpu_p50_ms"], stats[f"{side}_{kind}"]["cpu_p99_ms"],
         f"{stats[f'{side}_{kind}']['cpu_p50_ms'] / stats[f'raw_{kind}']['cpu_p50_ms']:.1f}x",
         f"{stats[f'{side}_{kind}']['cpu_p99_ms'] / stats[f'raw_{kind}']['cpu_p99_ms']:.1f}x"]
        for kind, what in (("task", "with task"), ("all", "no task")) for side in ("ours", "raw", "rawcore")]))
    kinds = ("task", "all", "all_limit100")
    return {
        "queries_per_variant": n_queries, "sampled_bases": len(m["sample"]), "fits_rows": m["n_fits"],
        "fits_reasons_mb": m["fits_mb"],
        "new_arch_first_resolve_ms": {"median": C.median(na) * 1e3, "max": max(na) * 1e3, "n": len(na),
                                      "all": [round(x * 1e3, 3) for x in na], "target_max_ms": 50,
                                      "cpu_median": C.median(NEW_ARCH_CPU) * 1e3 if NEW_ARCH_CPU else None,
                                      "cpu_max": max(NEW_ARCH_CPU) * 1e3 if NEW_ARCH_CPU else None} if na else None,
        "prewarm_first_resolve_ms": {"median": C.median(m["prewarm"]) * 1e3, "max": max(m["prewarm"]) * 1e3},
        "stats": stats,
        "cold_labels_ms": {v: {"p50": C.percentile(x, 50) * 1e3, "p99": C.percentile(x, 99) * 1e3, "n": len(x)}
                           for v, x in cold.items()},
        "ratio_p50_vs_version_rows_only": {k: stats[f"ours_{k}"]["p50_ms"] / stats[f"rawcore_{k}"]["p50_ms"]
                                           for k in ("task", "all")},
        "ratio_p50": {k: stats[f"ours_{k}"]["p50_ms"] / stats["raw_" + k.split("_")[0]]["p50_ms"] for k in kinds},
        "ratio_p99": {k: stats[f"ours_{k}"]["p99_ms"] / stats["raw_" + k.split("_")[0]]["p99_ms"] for k in kinds},
        "targets": {"p50_ms": 5, "p99_ms": 20},
        "target_met": {k: stats[f"ours_{k}"]["p50_ms"] < 5 and stats[f"ours_{k}"]["p99_ms"] < 20 for k in kinds},
        "cpu_ratio_p50": {k: stats[f"ours_{k}"]["cpu_p50_ms"] / stats["raw_" + k.split("_")[0]]["cpu_p50_ms"]
                          for k in kinds},
        "cpu_target_met": {k: stats[f"ours_{k}"]["cpu_p50_ms"] < 5 and stats[f"ours_{k}"]["cpu_p99_ms"] < 20
                           for k in kinds},
        "latencies_ms": {v: [round(x * 1e3, 4) for x in m["lat"][v]] for v in m["lat"]},
        "cpu_ms": {v: [round(x * 1e3, 4) for x in m["cpu"][v]] for v in m["cpu"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10,000 versions instead of 100,000")
    ap.add_argument("--versions", type=int, default=None,
                    help="registry size, a multiple of 1000 (default 100000; --quick 10000); e.g. 1000000")
    ap.add_argument("--queries", type=int, default=None, help="queries per variant (default 1000, quick 200)")
    ap.add_argument("--sample-bases", type=int, default=200, help="how many bases the queries draw from")
    ap.add_argument("--new-archs", type=int, default=10,
                    help="how many never-resolved architectures the first-resolve measurement uses")
    ap.add_argument("--postgres", metavar="URL",
                    help="also run on PostgreSQL: a database of its own (adapterhub_bench_resolve_N) is "
                         "created on this server, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-sqlite", action="store_true", help="with --postgres: PostgreSQL only")
    ap.add_argument("--keep", action="store_true", help="keep the registries (benchmarks/_work, the PG database)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a registry kept by an earlier --keep run (same size) instead of building one")
    ap.add_argument("--build-only", action="store_true", help="build (and keep) the registries, measure nothing")
    args = ap.parse_args()
    n_versions = args.versions or (10_000 if args.quick else 100_000)
    if n_versions % 1000:
        ap.error("--versions must be a multiple of 1000 (families x 10 bases x 10 adapters x 10 versions)")
    families = n_versions // 1000
    n_queries = args.queries or (200 if args.quick else 1000)
    keep = args.keep or args.build_only

    work = C.work_dir(f"resolve_{n_versions}", fresh=not args.reuse)
    backends = [] if args.no_sqlite else [("sqlite", f"sqlite:///{work / 'registry.db'}", None)]
    if args.postgres:
        backends.append(("postgresql", pg_database(args.postgres, f"adapterhub_bench_resolve_{n_versions}",
                                                   fresh=not args.reuse), work / "pg_blobs"))
    payload: dict[str, Any] = {"quick": args.quick, "versions": n_versions, "backends": {}}
    try:
        for label, url, blobs in backends:
            meta = work / f"built_{label}.json"
            t0 = time.perf_counter()
            if args.reuse and meta.is_file():
                built = json.loads(meta.read_text())
            else:
                if blobs is not None:
                    os.environ["ADAPTERHUB_BLOBS"] = str(blobs)
                built = build(url, families, 10)
                meta.write_text(json.dumps(built))
            build_s = time.perf_counter() - t0
            counts = built["counts"]
            db_mb = sum(f.stat().st_size for f in work.glob("registry.db*")) / 1e6 if label == "sqlite" else None
            print(f"[{label}] registry ready in {build_s:.1f}s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                  + (f"; {db_mb:.0f} MB" if db_mb else ""))
            if args.build_only:
                continue
            m = measure(url, blobs, built, n_queries, args.sample_bases, args.new_archs)
            payload["backends"][label] = {"counts": counts, "db_mb": db_mb, "build_s": build_s,
                                          **report(label, m, counts, n_queries)}
        if not args.build_only:
            first = payload["backends"].get("sqlite") or next(iter(payload["backends"].values()))
            payload.update(first)  # the SQLite figures stay at the top level, as before
            suffix = f"_{n_versions}" if args.versions and n_versions != 100_000 else ""
            if args.no_sqlite:
                suffix += "_postgresql"
            out = C.write_results(f"bench_resolve{suffix}", payload)
            print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
            if args.postgres:
                pg_database(args.postgres, f"adapterhub_bench_resolve_{n_versions}", fresh=True)


if __name__ == "__main__":
    main()

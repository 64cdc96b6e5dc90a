"""``adapterhub resolve --fingerprint`` on a SQLite registry answers through the standard
library's sqlite3 (adapterhub_sdk.resolving), without loading SQLAlchemy: its answers are
the registry's own, Match for Match, on a registry with several architectures, tasks,
methods, yanked versions, pre-releases and unpinned versions; where only the registry's
path can answer (fits never checked, an alias, a read-only copy whose fits are not
cached) it hands over, and the CLI's output is the same either way."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.resolving import resolve_sqlite_file

from conftest import run_cli, save_lora


@pytest.fixture
def populated(tmp_path, base_dir, base_other_weights, base_other_shape, lora_dir, lora_dir_b):
    """A SQLite registry: exact, structural (same arch, other weights), another arch, unpinned,
    DoRA, yanked, pre-releases; every base resolved once so its fits are recorded."""
    url = f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    reg = ah.Registry.open(url)
    dora = save_lora(base_dir, tmp_path / "dora", seed=5, use_dora=True)
    wide = save_lora(base_other_shape, tmp_path / "wide", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, v in enumerate(["0.9.0", "1.0.0", "1.0.1", "1.1.0-rc.1", "1.1.0", "2.0.0-beta.2"]):
            reg.publish(lora_dir, name="acme/alpha", version=v, base=base_dir,
                        tasks=["sentiment"] if i % 2 else ["sentiment", "qa"])
        reg.publish(lora_dir_b, name="acme/beta", version="1.0.0", base=base_other_weights, tasks=["qa"])
        reg.publish(lora_dir_b, name="acme/beta", version="1.2.0", base=base_other_weights, tasks=["qa"])
        reg.publish(lora_dir, name="Team/Gamma", version="3.0.0", tasks=["sentiment"])  # unpinned
        reg.publish(dora, name="acme/dora", version="1.0.0", base=base_dir, tasks=["chat"])
        reg.publish(wide, name="acme/wide", version="1.0.0", base=base_other_shape, tasks=["sentiment"])
    reg.yank("acme/alpha@1.0.1")
    reg.yank("acme/beta@1.2.0")
    fps = [ah.fingerprint(b).digest for b in (base_dir, base_other_weights, base_other_shape)]
    for fp in fps:
        reg.resolve(fingerprint=fp)
    yield reg, url, fps
    reg.close()


def test_read_path_answers_as_the_registry_does(populated):
    reg, url, fps = populated
    names = [None, "acme/alpha", "ACME/Alpha@^1", "acme/alpha@1.0.1", "acme/alpha@>=1.1.0-0", "acme/beta@1.2.0",
             "team/gamma", "acme/none"]
    answered = 0
    for fp, task, method, name, limit in itertools.product(
            [fps[0], fps[0][:10], fps[1], fps[2], "f" * 64], [None, "sentiment", "qa", "nothing"],
            [None, "lora", "DoRA"], names, [None, 1, 3]):
        options = {"task": task, "method": method, "name": name, "limit": limit}
        want = reg.resolve(fingerprint=fp, **options)
        got = resolve_sqlite_file(url, fp, **options)
        assert got is not None, (fp, options)
        assert got == want, (fp, options)
        answered += bool(want)
    assert answered > 200  # most combinations have hits: the comparison is not between empty lists
    verdicts = {m.verdict for m in reg.resolve(fingerprint=fps[1])}
    assert verdicts == {"exact", "structural"}
    assert "acme/alpha@1.0.1" in {m.ref for m in resolve_sqlite_file(url, fps[0], name="acme/alpha@1.0.1")}


def test_read_path_refuses_as_the_registry_does(populated):
    reg, url, fps = populated
    for bad in ("deadbeef00", fps[0][:8].upper() + "zz"):
        with pytest.raises(ah.NotFoundError) as want:
            reg.resolve(fingerprint=bad)
        with pytest.raises(ah.NotFoundError) as got:
            resolve_sqlite_file(url, bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(ah.InvalidNameError):
        resolve_sqlite_file(url, fps[0], name="not a name")


def test_read_path_hands_over_what_only_the_registry_answers(populated, base_dir, tmp_path):
    reg, url, fps = populated
    reg.alias("acme/alpha@1.0.0", "prod")
    assert resolve_sqlite_file(url, fps[0], name="acme/alpha@prod") is None
    with reg.engine.begin() as conn:  # fits are a cache: an architecture not yet checked
        conn.exec_driver_sql("DELETE FROM fits")
    assert resolve_sqlite_file(url, fps[0]) is None
    assert resolve_sqlite_file(f"sqlite:///{tmp_path / 'missing.db'}", fps[0]) is None
    # the CLI then takes the registry's path, which records the fits; the answer is the same
    out = run_cli("--registry", url, "resolve", "--fingerprint", fps[0], "--json", check=True)
    assert json.loads(out.stdout) == [m.to_dict() for m in reg.resolve(fingerprint=fps[0])]
    assert resolve_sqlite_file(url, fps[0]) == reg.resolve(fingerprint=fps[0])


def test_cli_resolve_by_fingerprint_loads_no_sqlalchemy(populated, tmp_path):
    reg, url, fps = populated
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
            "from adapterhub_sdk.cli import main\n"
            f"main(['resolve', '--fingerprint', {fps[0]!r}, '--task', 'sentiment', '--json'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    mods = set(json.loads(out.stderr.strip().splitlines()[-1]))
    assert not {"sqlalchemy", "alembic", "torch", "safetensors"} & {m.split(".")[0] for m in mods}
    assert "adapterhub_sdk.fingerprint" not in mods
    assert json.loads(out.stdout) == [m.to_dict() for m in reg.resolve(fingerprint=fps[0], task="sentiment")]
    text = run_cli("resolve", "--fingerprint", fps[1][:12], "--limit", "2", check=True).stdout
    assert text.splitlines()[0].split()[:2] == ["exact", "acme/beta@1.0.0"]


def test_sqlite_plans_read_indexes_only(populated):
    """The statements of a first resolve read indexes, never the version rows (whose
    manifests fill a page per row or few): EXPLAIN QUERY PLAN on the real schema."""
    import sqlite3

    from adapterhub_sdk import resolving as rs

    reg, url, fps = populated
    conn = sqlite3.connect(url.split("///", 1)[1])
    by_base = [rs.exact_sql(False, True, True), rs.structural_sql(3, False, True, True), rs.exact_sql(False, False, False)]
    labels = [rs._TASKS_IN.replace("{in}", "?, ?"), rs._NAMES_IN.replace("{in}", "?, ?")]
    by_name = [rs.exact_sql(True, True, False), rs.structural_sql(2, True, False, False)]  # one adapter's few rows
    for sql in by_base + labels + by_name:
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, [None] * sql.count("?")))
        assert "SCAN" not in plan, (sql, plan)
        if sql in by_base:
            assert "COVERING INDEX ix_versions_resolve" in plan, plan
    # task lists: the tasks' primary key alone (the statement before this read each version row)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + labels[0], [1, 2])]
    assert len(plan) == 1 and plan[0].startswith("SEARCH version_tasks USING COVERING INDEX"), plan
    conn.close()


@pytest.mark.skipif(not __import__("conftest").POSTGRES_URL, reason="needs ADAPTERHUB_TEST_POSTGRES_URL (CI sets it)")
def test_postgres_task_filter_probes_per_candidate(registry_url, base_dir, lora_dir, tmp_path):
    """On PostgreSQL the task filter stays a probe per candidate row (a SubPlan on the tasks'
    index), whatever the statistics: as a semi-join, a registry without fresh statistics
    (a bulk load, a young registry) drove it from every version carrying the task."""
    import psycopg

    from adapterhub_sdk import resolving as rs

    if not registry_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    reg = ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    try:
        reg.publish(lora_dir, name="acme/pg", version="1.0.0", base=base_dir, tasks=["qa"])
        fp = ah.fingerprint(base_dir).digest
        assert [m.ref for m in reg.resolve(fingerprint=fp, task="qa")] == ["acme/pg@1.0.0"]
        assert reg.resolve(fingerprint=fp, task="chat") == []
    finally:
        reg.close()
    with psycopg.connect(registry_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for sql, params in ((rs.exact_sql(False, True, False, True), (fp, "qa")),
                            (rs.structural_sql(1, False, True, False, True), ("d", fp, "qa"))):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql.replace("?", "%s"), params))
            assert "SubPlan" in plan and "Semi Join" not in plan and "Hash" not in plan, plan

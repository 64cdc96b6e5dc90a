"""Listing in pages: Registry.list(offset=, limit=) and iter_list, the CLI's --limit/--offset
and --jsonl; the order is the one list always had (name, then newest version first in semver
order, pre-releases below their release), across page boundaries, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from adapterhub_sdk import listing
from adapterhub_sdk.versions import Version

from conftest import run_cli

# semver order that string or (major, minor, patch) order gets wrong
VERSIONS = ["0.9.0", "1.0.0-rc.1", "1.0.0", "1.10.0", "1.2.0", "2.0.0-alpha", "1.0.0-rc.2"]


def _publish_many(reg, lora_dir, base_dir):
    for i, name in enumerate(["zeta/last", "Acme/Mixed", "acme/b", "beta/one"]):
        for v in VERSIONS[: 7 - i]:
            reg.publish(lora_dir, name=name, version=v, base=base_dir if i % 2 else None,
                        tasks=["even"] if VERSIONS.index(v) % 2 == 0 else ["odd", "x"])
    reg.alias("acme/b@1.0.0", "prod")
    reg.yank("beta/one@0.9.0")


def _expected(reg, **filters):
    """The order list() had before paging: every version, sorted by name, newest first."""
    infos = [i for name in sorted({i.name for i in reg.list(**filters)}, key=str.lower)
             for i in reg.versions(name)]
    keep = {(i.name, i.version) for i in reg.list(**filters)}
    return [(i.name, i.version) for i in infos if (i.name, i.version) in keep]


def _refs(infos):
    return [(i.name, i.version) for i in infos]


@pytest.mark.parametrize("page", [2, 3, 500])
def test_pages_keep_the_order_and_cover_everything_once(registry, lora_dir, base_dir, monkeypatch, page):
    _publish_many(registry, lora_dir, base_dir)
    monkeypatch.setattr(listing, "PAGE", page)
    full = registry.list()
    assert len(full) == 7 + 6 + 5 + 4
    names = [i.name for i in full]
    assert names == sorted(names, key=str.lower)
    for name in set(names):  # within an adapter: newest first, by semver precedence
        vs = [Version.parse(i.version) for i in full if i.name == name]
        assert vs == sorted(vs, reverse=True)
    assert [i.version for i in full if i.name == "acme/b"] == ["1.10.0", "1.2.0", "1.0.0", "1.0.0-rc.1", "0.9.0"]
    for off in range(0, len(full) + 2):
        for lim in (0, 1, 4, 7, None):
            got = registry.list(offset=off, limit=lim)
            assert _refs(got) == _refs(full[off: None if lim is None else off + lim]), (off, lim)
    assert _refs(registry.iter_list()) == _refs(full)
    for filters in ({"task": "odd"}, {"task": "even", "include_yanked": False}, {"base": base_dir},
                    {"name": "ACME/b"}, {"method": "lora", "include_yanked": False}):
        assert _refs(registry.list(**filters)) == _expected(registry, **filters)
        assert _refs(registry.list(**filters, offset=2, limit=3)) == _expected(registry, **filters)[2:5]
    # labels ride along: tasks, aliases, yanked, as before
    b = {i.version: i for i in full if i.name == "acme/b"}
    assert b["1.0.0"].aliases == ("prod",) and b["0.9.0"].tasks == ("even",) and b["1.0.0-rc.1"].tasks == ("odd", "x")
    assert [i.yanked for i in full if i.name == "beta/one" and i.version == "0.9.0"] == [True]


def test_list_reads_no_manifest_body(lora_dir, base_dir, tmp_path):
    """A listing never reads the manifest column (kilobytes per version). SQLite only: its
    trace callback sees every statement, those sent on the bare DBAPI cursor included."""
    from sqlalchemy import event

    import adapterhub_sdk as ah

    registry = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    _publish_many(registry, lora_dir, base_dir)
    seen: list[str] = []
    registry.engine.dispose()

    @event.listens_for(registry.engine, "connect")
    def trace(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.set_trace_callback(seen.append)

    assert len(registry.list()) == 22
    assert seen and not [s for s in seen if "manifest" in s.lower()], [s for s in seen if "manifest" in s.lower()]
    registry.close()


def test_bad_paging_values(registry):
    with pytest.raises(ValueError):
        registry.list(offset=-1)
    with pytest.raises(ValueError):
        registry.list(limit=-1)


def test_cli_limit_offset_jsonl(lora_dir, base_dir):
    import adapterhub_sdk as ah

    reg = ah.Registry.open()
    _publish_many(reg, lora_dir, base_dir)
    full = [i.to_dict() for i in reg.list()]
    reg.close()
    as_json = json.loads(run_cli("list", "--json", check=True).stdout)
    assert as_json == full  # --json keeps its array shape and fields
    page = json.loads(run_cli("list", "--json", "--offset", "3", "--limit", "5", check=True).stdout)
    assert page == full[3:8]
    lines = run_cli("list", "--jsonl", check=True).stdout.splitlines()
    assert [json.loads(line) for line in lines] == full  # one object per line
    lines = run_cli("list", "--jsonl", "--limit", "2", "--task", "odd", check=True).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [d for d in full if "odd" in d["tasks"]][:2]
    text = run_cli("list", "--limit", "2", check=True).stdout.splitlines()
    assert len(text) == 3 and text[1].startswith(f"{full[0]['name']}@{full[0]['version']}")
    bad = run_cli("list", "--json", "--jsonl")
    assert bad.returncode == 2 and "--jsonl" in bad.stderr
    assert run_cli("list", "--limit", "-1").returncode == 2


# --------------------------------------------------------------------------- PostgreSQL

needs_pg = pytest.mark.skipif(not __import__("conftest").POSTGRES_URL,
                              reason="needs ADAPTERHUB_TEST_POSTGRES_URL (CI sets it)")


@pytest.fixture
def icu_registry_url():
    """A fresh PostgreSQL database whose collation (ICU en-US) does not order names as bytes:
    '_' before '-' before '.', as the official docker image's en_US.utf8 orders them otherwise too."""
    import sqlalchemy as sa

    from conftest import POSTGRES_URL, _pg_drop

    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    name = "ah_test_icu_" + __import__("uuid").uuid4().hex[:8]
    try:
        with admin.connect() as conn:
            if int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) < 150000:
                pytest.skip("ICU database locales need PostgreSQL 15")
            conn.execute(sa.text(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu "
                                 "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"))
    finally:
        admin.dispose()
    url = f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    try:
        yield url
    finally:
        _pg_drop(url)


@needs_pg
@pytest.mark.parametrize("page", [2, 3])
def test_pages_on_a_database_that_orders_names_otherwise(icu_registry_url, lora_dir, tmp_path, monkeypatch, page):
    # names whose byte order is not the database's: every page must resume where the last
    # one ended in the order the listing sorts by (each version once, none skipped)
    import adapterhub_sdk as ah

    reg = ah.Registry.open(icu_registry_url, blobs=tmp_path / "blobs")
    try:
        names = ["ns/a-b", "ns/a_b", "ns/a.b", "ns/ab", "ns/a0", "ns/a-c", "ns/a_a", "ns/z", "ns/a"]
        for i, name in enumerate(names):
            for v in ("1.0.0", "2.0.0")[: 1 + i % 2]:
                reg.publish(lora_dir, name=name, version=v, tasks=["t"])
        monkeypatch.setattr(listing, "PAGE", page)
        want = [(n, v) for n in sorted(names) for v in (("2.0.0", "1.0.0") if names.index(n) % 2 else ("1.0.0",))]
        for filters in ({}, {"task": "t"}, {"include_yanked": False}):
            assert _refs(reg.list(**filters)) == want, filters
            assert _refs(reg.list(offset=3, limit=4, **filters)) == want[3:7], filters
    finally:
        reg.close()


@needs_pg
def test_postgres_page_plans_stop_at_the_page(registry_url, lora_dir, tmp_path):
    """On PostgreSQL a page is a nested loop from the adapters in name order over each one's
    versions, stopped by the LIMIT, with the task filter a probe per candidate (a SubPlan on
    the tasks' index): never a semi-join driven from every version carrying the task, nor
    a sort of every version joined to its adapter (60-140 ms a page at 100k versions, without
    statistics; growing with the registry). Both name orders: the name index where the
    database orders names as bytes, else a sort of the adapters alone."""
    import psycopg

    import adapterhub_sdk as ah

    if not registry_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    reg = ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    try:
        reg.publish(lora_dir, name="acme/pg", version="1.0.0", tasks=["qa"])
    finally:
        reg.close()
    params = {"page": 51, "task": "qa", "method": "lora", "after_key": "acme/pg", "after_id": 1, "no": False}
    with psycopg.connect(registry_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        # a registry the planner has no statistics of (a bulk load, a young registry): 5,000
        # adapters of 10 versions, one in ten tagged qa, as bench_list/bench_resolve build them
        conn.execute("INSERT INTO adapters (name, name_key, created_at) SELECT 'bulk/a' || i, 'bulk/a' || i, now() "
                     "FROM generate_series(1, 5000) i")
        conn.execute("INSERT INTO versions (adapter_id, version, major, minor, patch, prerelease, digest, manifest, "
                     "method, variant, req_digest, size, yanked, created_at) SELECT a.id, j || '.0.0', j, 0, 0, '', "
                     "'sha256:' || md5(a.id || '-' || j), repeat('x', 2000), 'lora', 'lora', r.req_digest, 1, false, "
                     "now() FROM adapters a, generate_series(1, 10) j, (SELECT req_digest FROM versions LIMIT 1) r "
                     "WHERE a.name_key LIKE 'bulk/%'")
        conn.execute("INSERT INTO version_tasks (version_id, task) SELECT id, 'qa' FROM versions WHERE id % 10 = 0")
        conn.commit()
        for collate_c in (True, False):
            for first in (True, False):
                for shape in ({"task": True}, {"task": True, "include_yanked": False}, {"method": True}, {}):
                    kw = {"task": False, "method": False, "base": False, "name": False, "include_yanked": True, **shape}
                    sql = listing.pyformat(listing.page_sql(first=first, collate_c=collate_c, postgres=True, **kw))
                    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))
                    where = (collate_c, first, shape, plan)
                    assert plan.startswith("Limit") and "Nested Loop" in plan, where
                    assert "Semi Join" not in plan and "Hash" not in plan and "Seq Scan on versions" not in plan, where
                    assert ("SubPlan" in plan) == bool(shape.get("task")), where
                    top_sort = plan.split("Nested Loop")[0]  # above the loop: at most the few rows per adapter
                    assert "Sort" not in top_sort or "Incremental Sort" in top_sort, where
                    if not collate_c:  # names in the index's order: no sort of the adapters either
                        assert "uq_adapters_name_key" in plan and "Sort Key: a.name_key COLLATE" not in plan, where
        # a page's task lists: a probe of the tasks' primary key per version, not a scan of them all
        sent: list = []
        listing._labels(lambda sql, p: sent.append((sql, p)) or [], "version_tasks", "task", list(range(1, 51)), True)
        (sql, p), = sent
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + listing.pyformat(sql), p))
        assert "pk_version_tasks" in plan and "Seq Scan on version_tasks" not in plan, plan

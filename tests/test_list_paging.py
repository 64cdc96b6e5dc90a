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

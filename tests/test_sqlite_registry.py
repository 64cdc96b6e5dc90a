"""``adapterhub pull oci://`` and ``push --to oci://`` on a SQLite home run the registry's own
publish, transfer and signature parts on the standard library's sqlite3
(adapterhub_sdk/sqlite_registry.py), without importing SQLAlchemy. Against a real CNCF
distribution registry (tests/ociserver.py, Debian's docker-registry on loopback): what that
path records is row for row what the SQLAlchemy registry records for the same artifact, the
SQLAlchemy registry reads it back as its own, a signing policy holds on it, concurrent pulls
into one home are safe, and anything it does not open (a new home, a read-only copy, another
database) gets the full registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ociserver import REGISTRY, SKIP_REASON

import adapterhub_sdk as ah
from adapterhub_sdk.errors import SignaturePolicyError
from adapterhub_sdk.oci.remote import OciRemote
from adapterhub_sdk.signing import generate_key
from adapterhub_sdk.sqlite_registry import SqliteRegistry

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)

# run the CLI in this interpreter, then say whether SQLAlchemy was imported
_RUN = """import json, sys
from adapterhub_sdk.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "sqlalchemy": "sqlalchemy" in sys.modules}))
"""


def _run(*args: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["code"] in (0, None), proc.stderr
    return last


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")  # never the user's own key directory
    return {"alice": generate_key("alice", directory=d), "bob": generate_key("bob", directory=d)}


@pytest.fixture
def repo(oci, request) -> str:
    return f"oci://{oci.host}/s/" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]


def _home(tmp_path: Path, name: str, keys=None) -> dict[str, str]:
    """A home whose registry exists (as on a machine in use), trusting ``keys``."""
    home = tmp_path / name
    with ah.Registry.open(f"sqlite:///{home / 'registry.db'}") as reg:
        for k, key in (keys or {}).items():
            reg.trust_key(k, key.public_pem)
    return {"ADAPTERHUB_HOME": str(home)}


def _rows(db: Path) -> dict[str, list[tuple]]:
    """Every catalog row a pull writes, without the ids and times that differ between homes."""
    conn = sqlite3.connect(db)
    try:
        out = {
            "adapters": conn.execute("SELECT name, name_key FROM adapters ORDER BY name_key").fetchall(),
            "versions": conn.execute(
                "SELECT a.name, v.version, v.major, v.minor, v.patch, v.prerelease, v.digest, v.manifest, v.method, "
                "v.variant, v.base_fingerprint, v.base_arch, v.base_name, v.req_digest, v.size, v.yanked, v.source "
                "FROM versions v JOIN adapters a ON a.id = v.adapter_id ORDER BY a.name, v.version").fetchall(),
            "tasks": conn.execute("SELECT v.version, t.task FROM version_tasks t JOIN versions v "
                                  "ON v.id = t.version_id ORDER BY 1, 2").fetchall(),
            "files": conn.execute("SELECT v.version, f.path, f.sha256, f.size FROM files f JOIN versions v "
                                  "ON v.id = f.version_id ORDER BY 1, 2").fetchall(),
            "requirement_sets": conn.execute("SELECT digest, body, probe FROM requirement_sets ORDER BY 1").fetchall(),
            "signatures": conn.execute("SELECT v.version, s.key_id, s.signer, s.bundle FROM signatures s "
                                       "JOIN versions v ON v.id = s.version_id ORDER BY 1, 2").fetchall(),
            "leases": conn.execute("SELECT count(*) FROM blob_leases").fetchall(),
            "times": conn.execute("SELECT created_at FROM versions UNION ALL SELECT created_at FROM adapters "
                                  "UNION ALL SELECT created_at FROM signatures").fetchall(),
        }
    finally:
        conn.close()
    return out


def test_cli_push_and_pull_on_a_sqlite_home_import_no_sqlalchemy(repo, tmp_path, base_dir, lora_dir, keys):
    pub = _home(tmp_path, "pub", keys)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub' / 'registry.db'}") as reg:
        reg.publish(lora_dir, name="acme/light", version="1.0.0", base=base_dir, tasks=["sentiment"])
        reg.sign("acme/light@1.0.0", key=keys["alice"])
    assert _run("push", "acme/light@1.0.0", "--to", repo, "--insecure", env=pub) == {"code": 0, "sqlalchemy": False}
    puller = _home(tmp_path, "puller", keys)
    out = tmp_path / "out"
    got = _run("pull", f"{repo}:1.0.0", "--out", str(out), "--insecure", env=puller)
    assert got == {"code": 0, "sqlalchemy": False}
    for f in lora_dir.iterdir():
        if f.is_file() and f.name != "README.md":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert (out / "model.sig").is_file()  # the signature travelled, and was written with the files
    # the full registry (SQLAlchemy) reads what the sqlite3 path wrote as its own
    with ah.Registry.open(f"sqlite:///{tmp_path / 'puller' / 'registry.db'}") as reg:
        info = reg.show("acme/light@1.0.0")
        assert info.tasks == ("sentiment",) and info.source.startswith(repo + "@sha256:")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", info.created_at)
        assert reg.signatures("acme/light@1.0.0").status == "signed"
        assert reg.verify().ok
        assert [m.name for m in reg.resolve(base_dir)] == ["acme/light"]


def test_the_sqlite_path_records_row_for_row_what_the_registry_records(repo, tmp_path, base_dir, lora_dir,
                                                                       lora_dir_b, keys):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        pub.trust_key("alice", keys["alice"].public_pem)
        pub.publish(lora_dir, name="acme/rows", version="1.0.0", base=base_dir, tasks=["b", "a"])
        pub.publish(lora_dir_b, name="acme/rows", version="1.1.0-rc.1+build.7", base=base_dir)
        pub.sign("acme/rows@1.0.0", key=keys["alice"])
        pub.sign("acme/rows@1.0.0", key=keys["bob"])  # a key the pullers do not trust: kept as a claim
        for v in ("1.0.0", "1.1.0-rc.1+build.7"):
            OciRemote(insecure=True).push(pub, f"acme/rows@{v}", repo)
    homes = {}
    for kind in ("full", "sqlite3"):
        url = f"sqlite:///{tmp_path / kind / 'registry.db'}"
        with ah.Registry.open(url, blobs=tmp_path / kind / "blobs") as reg:
            reg.trust_key("alice", keys["alice"].public_pem)
        opened = ah.Registry.open(url, blobs=tmp_path / kind / "blobs") if kind == "full" \
            else SqliteRegistry.open(url, blobs=tmp_path / kind / "blobs")
        assert opened is not None
        with opened as reg:
            for tag in ("1.0.0", "1.1.0-rc.1_build.7"):
                OciRemote(insecure=True).pull(reg, f"{repo}:{tag}", tmp_path / kind / f"out-{tag}")
        homes[kind] = _rows(tmp_path / kind / "registry.db")
    full, light = homes["full"], homes["sqlite3"]
    assert len(full["versions"]) == 2 and len(full["signatures"]) == 2 and full["leases"] == [(0,)]
    for table in full:
        if table != "times":
            assert light[table] == full[table], table
    # timestamps as SQLAlchemy writes them on SQLite: UTC text, no offset
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
    assert all(shape.fullmatch(t) for (t,) in full["times"] + light["times"]), (full["times"], light["times"])
    for tag in ("1.0.0", "1.1.0-rc.1_build.7"):
        a, b = tmp_path / "full" / f"out-{tag}", tmp_path / "sqlite3" / f"out-{tag}"
        assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}


def test_a_signing_policy_holds_on_the_sqlite_path(repo, tmp_path, base_dir, lora_dir, keys):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        pub.publish(lora_dir, name="acme/pol", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(pub, "acme/pol@1.0.0", repo)
    env = _home(tmp_path, "home", {"alice": keys["alice"]})
    db = tmp_path / "home" / "registry.db"
    with ah.Registry.open(f"sqlite:///{db}") as reg:
        reg.set_signing_policy(["alice"])
    light = SqliteRegistry.open(f"sqlite:///{db}")
    assert light is not None
    with light, pytest.raises(SignaturePolicyError, match="requires a signature by alice"):
        OciRemote(insecure=True).pull(light, f"{repo}:1.0.0")
    res = run_cli("pull", f"{repo}:1.0.0", "--out", str(tmp_path / "out"), "--insecure", env=env)
    assert res.returncode == 1 and "requires a signature by alice" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with ah.Registry.open(f"sqlite:///{db}") as reg:
        assert reg.list() == [] and list(reg.blobs.iter_digests()) == []


def test_concurrent_cli_pulls_into_one_home_record_each_version_once(repo, tmp_path, base_dir, lora_dir,
                                                                     lora_dir_b):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        pub.publish(lora_dir, name="acme/race", version="1.0.0", base=base_dir)
        pub.publish(lora_dir_b, name="acme/race", version="2.0.0", base=base_dir)
        for v in ("1.0.0", "2.0.0"):
            OciRemote(insecure=True).push(pub, f"acme/race@{v}", repo)
    env = {**os.environ, **_home(tmp_path, "home")}
    exe = Path(sys.executable).with_name("adapterhub")
    procs = [subprocess.Popen([str(exe), "pull", f"{repo}:{tag}", "--insecure", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("1.0.0", "2.0.0", "1.0.0", "2.0.0")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with ah.Registry.open(f"sqlite:///{tmp_path / 'home' / 'registry.db'}") as reg:
        assert sorted(i.version for i in reg.list()) == ["1.0.0", "2.0.0"]
        assert reg.verify().ok and reg.leases() == []


def test_what_it_does_not_open_gets_the_full_registry(repo, tmp_path, base_dir, lora_dir):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        pub.publish(lora_dir, name="acme/new", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(pub, "acme/new@1.0.0", repo)
    assert SqliteRegistry.open(f"sqlite:///{tmp_path / 'none' / 'registry.db'}") is None  # a new home
    assert SqliteRegistry.open("sqlite://") is None
    assert SqliteRegistry.open("postgresql://postgres@127.0.0.1:5432/test") is None
    ro = tmp_path / "ro"
    ro.mkdir()
    with ah.Registry.open(f"sqlite:///{ro / 'registry.db'}"):
        pass
    os.chmod(ro / "registry.db", 0o444)
    try:
        if os.access(ro / "registry.db", os.W_OK):
            pytest.skip("running as a user who can write a read-only file (root): no read-only copy to test")
        assert SqliteRegistry.open(f"sqlite:///{ro / 'registry.db'}") is None
    finally:
        os.chmod(ro / "registry.db", 0o644)
    # a new home through the CLI: the full registry creates it, then the pull is recorded there
    env = {"ADAPTERHUB_HOME": str(tmp_path / "fresh")}
    got = _run("pull", f"{repo}:1.0.0", "--insecure", env=env)
    assert got == {"code": 0, "sqlalchemy": True}
    assert _run("pull", f"{repo}:1.0.0", "--insecure", env=env) == {"code": 0, "sqlalchemy": False}  # now it exists
    listed = json.loads(run_cli("list", "--json", env=env, check=True).stdout)
    assert [(v["name"], v["version"]) for v in listed] == [("acme/new", "1.0.0")]


def test_a_transaction_inside_another_gets_its_own_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with ah.Registry.open(url):
        pass
    with SqliteRegistry.open(url) as reg:
        with reg._sql() as outer:
            assert outer("SELECT count(*) FROM adapters") == [(0,)]
            with reg._sql(write=True) as inner:
                inner.run("INSERT INTO settings (name, value) VALUES ('x', 'y')")
        with reg._sql() as again:
            assert again("SELECT value FROM settings WHERE name = 'x'") == [("y",)]
        with pytest.raises(ZeroDivisionError), reg._sql(write=True) as q:
            q.run("INSERT INTO settings (name, value) VALUES ('z', 'w')")
            raise ZeroDivisionError
        with reg._sql() as q:
            assert q("SELECT count(*) FROM settings WHERE name = 'z'") == [(0,)]  # rolled back


def test_an_unpinned_cli_publish_and_local_pull_run_on_sqlite3_and_record_what_the_registry_records(
        tmp_path, lora_dir, keys):
    env = _home(tmp_path, "cli")
    key = keys["alice"].path
    got = _run("publish", str(lora_dir), "--name", "acme/pub", "--version", "1.0.0", "--task", "t",
               "--sign", str(key), env=env)
    assert got == {"code": 0, "sqlalchemy": False}
    out = tmp_path / "out"
    assert _run("pull", "acme/pub@1.0.0", "--out", str(out), env=env) == {"code": 0, "sqlalchemy": False}
    assert (out / "model.sig").is_file()
    with ah.Registry.open(f"sqlite:///{tmp_path / 'api' / 'registry.db'}") as reg:
        reg.publish(lora_dir, name="acme/pub", version="1.0.0", tasks=["t"])
        reg.sign("acme/pub@1.0.0", key=keys["alice"])
    cli, api = _rows(tmp_path / "cli" / "registry.db"), _rows(tmp_path / "api" / "registry.db")
    for table in ("adapters", "tasks", "files", "requirement_sets", "leases"):
        assert cli[table] == api[table], table
    # the manifests differ only in their provenance (creation time), which is outside the digest
    strip = [(*v[:7], json.loads(v[7]) | {"provenance": None}, *v[8:]) for v in cli["versions"]]
    assert strip == [(*v[:7], json.loads(v[7]) | {"provenance": None}, *v[8:]) for v in api["versions"]]
    assert [s[:3] for s in cli["signatures"]] == [s[:3] for s in api["signatures"]]
    with ah.Registry.open(f"sqlite:///{tmp_path / 'cli' / 'registry.db'}") as reg:
        assert reg.verify().ok and reg.signatures("acme/pub@1.0.0").status == "untrusted"


def test_show_names_where_a_pulled_version_came_from(repo, tmp_path, base_dir, lora_dir):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        pub.publish(lora_dir, name="acme/src", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(pub, "acme/src@1.0.0", repo)
    env = _home(tmp_path, "home")
    run_cli("pull", f"{repo}:1.0.0", "--insecure", env=env, check=True)
    shown = run_cli("show", "acme/src@1.0.0", env=env, check=True).stdout
    line = next(x for x in shown.splitlines() if x.strip().startswith("source"))
    assert f"{repo}@sha256:" in line
    run_cli("publish", str(lora_dir), "--name", "acme/own", "--version", "1.0.0", env=env, check=True)
    assert "published in this registry" in run_cli("show", "acme/own@1.0.0", env=env, check=True).stdout


def test_a_pinned_cli_publish_runs_on_sqlite3_and_records_the_base_as_the_registry_does(tmp_path, base_dir,
                                                                                      lora_dir):
    env = _home(tmp_path, "cli")
    got = _run("publish", str(lora_dir), "--name", "acme/pin", "--version", "1.0.0", "--base", str(base_dir),
               env=env)
    assert got == {"code": 0, "sqlalchemy": False}
    with ah.Registry.open(f"sqlite:///{tmp_path / 'api' / 'registry.db'}") as reg:
        reg.publish(lora_dir, name="acme/pin", version="1.0.0", base=base_dir)

    def bases(db: Path) -> tuple[list, list]:
        conn = sqlite3.connect(db)
        try:
            return (conn.execute("SELECT fingerprint, arch_signature, n_tensors, n_params, total_bytes, shapes, "
                                 "config FROM bases").fetchall(),
                    conn.execute("SELECT fingerprint, kind, locator, revision, details FROM base_sources "
                                 "ORDER BY kind, locator").fetchall())
        finally:
            conn.close()

    assert bases(tmp_path / "cli" / "registry.db") == bases(tmp_path / "api" / "registry.db")
    with ah.Registry.open(f"sqlite:///{tmp_path / 'cli' / 'registry.db'}") as reg:
        (hit,) = reg.resolve(base_dir)
        assert hit.verdict == "exact" and hit.name == "acme/pin"
        assert reg.show("acme/pin@1.0.0").base_seen_as == (str(base_dir.resolve()),)

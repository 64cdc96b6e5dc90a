"""The ``adapterhub`` command line as a user runs it: the installed entry point in a
subprocess, against real SQLite (and PostgreSQL when ADAPTERHUB_TEST_POSTGRES_URL is set).

Commands that only read share one registry built once for the module (its own
ADAPTERHUB_HOME); commands that change state get a registry of their own."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import adapterhub_sdk as ah

from conftest import POSTGRES_URL, _pg_database, _pg_drop, run_cli

# --------------------------------------------------------------------------- helpers


def ok(*args: str, env: dict | None = None):
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, f"adapterhub {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def js(*args: str, env: dict | None = None):
    return json.loads(ok(*args, "--json", env=env).stdout)


def assert_user_error(proc, *needles: str) -> str:
    """Non-zero exit, exactly one stderr line 'error: ...', no traceback; returns the line."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for n in needles:
        assert n.lower() in line.lower(), line
    return line


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def home_registry(home: Path) -> ah.Registry:
    """The registry a CLI with ADAPTERHUB_HOME=home uses, opened in-process (set-up only)."""
    return ah.Registry.open(f"sqlite:///{home / 'registry.db'}", blobs=home / "blobs")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, base_dir, lora_dir, lora_dir_b):
    """One registry, populated through the CLI: sentiment 1.0.0 and 1.1.0 pinned to base_dir,
    ner 0.1.0 with no base. Read-only for the tests that use it."""
    home = tmp_path_factory.mktemp("cli_shared") / "home"
    env = {"ADAPTERHUB_HOME": str(home), "ADAPTERHUB_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1"}
    pubs = [
        ok("publish", str(lora_dir), "--name", "acme/sentiment", "--version", "1.0.0", "--base", str(base_dir),
           "--task", "sentiment", "--task", "classification", "--license", "apache-2.0",
           "--description", "Positive or negative", env=env),
        ok("publish", str(lora_dir), "--name", "acme/sentiment", "--version", "1.1.0", "--base", str(base_dir),
           "--task", "sentiment", env=env),
        ok("publish", str(lora_dir_b), "--name", "acme/ner", "--version", "0.1.0", "--task", "ner", env=env),
    ]
    return {"home": home, "env": env, "pubs": pubs}


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint(base_dir, base_other_weights):
    want = ah.fingerprint(base_dir)
    d = js("fingerprint", str(base_dir))
    assert d["fingerprint"] == want.digest
    assert d["arch_signature"] == want.arch_signature
    assert d["n_tensors"] == want.n_tensors and d["n_params"] == want.n_params
    text = ok("fingerprint", str(base_other_weights)).stdout
    assert ah.fingerprint(base_other_weights).digest in text
    assert want.digest not in text
    assert "arch_signature  " + want.arch_signature in text  # same architecture


# --------------------------------------------------------------------------- publish, list, show


def test_publish_output(shared, base_dir, lora_dir):
    first, _, ner = shared["pubs"]
    assert "acme/sentiment@1.0.0 published" in first.stdout
    assert ah.fingerprint(base_dir).digest[:12] in first.stdout
    assert "not pinned" in ner.stdout
    again = ok("publish", str(lora_dir), "--name", "acme/sentiment", "--version", "1.0.0", "--base", str(base_dir),
               "--task", "sentiment", "--task", "classification", "--license", "apache-2.0",
               "--description", "Positive or negative", env=shared["env"])
    assert "already published" in again.stdout
    assert "0 B of new blob data" in again.stdout


def test_list(shared, base_dir):
    env = shared["env"]
    assert [i["name"] for i in js("list", "--task", "ner", env=env)] == ["acme/ner"]
    refs = [(i["name"], i["version"]) for i in js("list", "--method", "lora", env=env)]
    assert refs == [("acme/ner", "0.1.0"), ("acme/sentiment", "1.1.0"), ("acme/sentiment", "1.0.0")]
    fp = ah.fingerprint(base_dir).digest
    by_base = js("list", "--base", str(base_dir), env=env)
    assert [(i["name"], i["version"]) for i in by_base] == [("acme/sentiment", "1.1.0"), ("acme/sentiment", "1.0.0")]
    assert all(i["base_fingerprint"] == fp for i in by_base)
    assert [i["version"] for i in js("list", "--fingerprint", fp[:12], env=env)] == ["1.1.0", "1.0.0"]
    table = ok("list", env=env).stdout
    assert "acme/sentiment@1.1.0" in table and "acme/ner@0.1.0" in table and fp[:12] in table
    assert table.index("acme/ner@0.1.0") < table.index("acme/sentiment@1.1.0") < table.index("acme/sentiment@1.0.0")


def test_show(shared, base_dir, lora_dir):
    env = shared["env"]
    latest = js("show", "acme/sentiment", env=env)
    assert latest["version"] == "1.1.0"
    assert [v["version"] for v in latest["versions"]] == ["1.1.0", "1.0.0"]
    pinned = js("show", "acme/sentiment@1.0.0", env=env)
    m = pinned["manifest"]
    assert m["license"] == "apache-2.0" and m["description"] == "Positive or negative"
    assert sorted(m["tasks"]) == ["classification", "sentiment"]
    assert m["base"]["fingerprint"] == ah.fingerprint(base_dir).digest
    assert {f["path"]: f["sha256"] for f in m["files"]} == {p.name: sha(p) for p in lora_dir.iterdir()}
    text = ok("show", "ACME/Sentiment@1.0.0", env=env).stdout
    assert text.splitlines()[0] == "acme/sentiment@1.0.0"
    assert "apache-2.0" in text and "Positive or negative" in text and "adapter_model.safetensors" in text


def test_resolve(shared, base_dir, base_other_shape):
    env = shared["env"]
    hits = js("resolve", "--base", str(base_dir), env=env)
    assert [(h["name"], h["version"], h["verdict"]) for h in hits] == [
        ("acme/sentiment", "1.1.0", "exact"), ("acme/sentiment", "1.0.0", "exact"),
        ("acme/ner", "0.1.0", "structural")]
    assert all(isinstance(h["reasons"], list) for h in hits)
    assert hits[0]["reasons"] == [] and hits[2]["reasons"]
    fp = ah.fingerprint(base_dir).digest
    by_fp = js("resolve", "--fingerprint", fp[:16], "--task", "sentiment", "--name", "acme/sentiment@~1.0",
               env=env)
    assert [(h["version"], h["verdict"]) for h in by_fp] == [("1.0.0", "exact")]
    assert js("resolve", "--base", str(base_other_shape), env=env) == []
    every = js("resolve", "--base", str(base_other_shape), "--all", env=env)
    assert {h["verdict"] for h in every} == {"incompatible"} and len(every) == 3
    assert all(any("proj" in r for r in h["reasons"]) for h in every)


def test_pull(shared, lora_dir, tmp_path):
    out = tmp_path / "pulled" / "sentiment"
    proc = ok("pull", "acme/sentiment@^1", "--out", str(out), env=shared["env"])
    assert "acme/sentiment@1.1.0" in proc.stdout
    for p in lora_dir.iterdir():
        assert sha(out / p.name) == sha(p)
    manifest = json.loads((out / "adapterhub_manifest.json").read_text())
    assert manifest["version"] == "1.1.0" and manifest["name"] == "acme/sentiment"


def test_verify_ok(shared):
    out = ok("verify", env=shared["env"]).stdout
    assert out.startswith("checked 3 versions") and out.strip().endswith("ok")


# --------------------------------------------------------------------------- state changes


def test_alias_and_yank(base_dir, lora_dir, tmp_path):
    home = Path(os.environ["ADAPTERHUB_HOME"])
    with home_registry(home) as reg:
        for v in ("1.0.0", "1.1.0"):
            reg.publish(lora_dir, name="acme/x", version=v, base=base_dir)
    assert "acme/x@prod -> 1.0.0" in ok("alias", "acme/x@1.0.0", "prod").stdout
    assert "acme/x@prod -> 1.1.0" in ok("alias", "acme/x@1.1.0", "prod").stdout  # moves
    assert js("show", "acme/x@prod")["version"] == "1.1.0"
    assert "yanked" in ok("yank", "acme/x@1.1.0").stdout
    d = js("show", "acme/x")
    assert d["version"] == "1.0.0"
    assert {v["version"]: (v["yanked"], v["aliases"]) for v in d["versions"]} == {
        "1.1.0": (True, ["prod"]), "1.0.0": (False, [])}
    assert [h["version"] for h in js("resolve", "--base", str(base_dir))] == ["1.0.0"]
    ok("pull", "acme/x@1.1.0", "--out", str(tmp_path / "pinned"))  # exact pin still works
    assert json.loads((tmp_path / "pinned" / "adapterhub_manifest.json").read_text())["version"] == "1.1.0"


def test_gc(lora_dir, tmp_path):
    home = Path(os.environ["ADAPTERHUB_HOME"])
    orphan = tmp_path / "orphan.bin"
    orphan.write_bytes(os.urandom(4096))
    with home_registry(home) as reg:
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.blobs.put_file(orphan, sha(orphan))
        blob = reg.blobs.path(sha(orphan))
    assert "removed 0 blobs" in ok("gc").stdout  # within the default grace period
    assert blob.exists()
    out = ok("gc", "--grace", "0").stdout
    assert "removed 1 blob (" in out
    assert not blob.exists()
    assert js("verify")["ok"] is True


def test_verify_reports_missing_blob(lora_dir):
    home = Path(os.environ["ADAPTERHUB_HOME"])
    with home_registry(home) as reg:
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.blobs.path(sha(lora_dir / "adapter_model.safetensors")).unlink()
    proc = run_cli("verify", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert [(p["problem"], p["versions"]) for p in report["problems"]] == [("missing", ["acme/x@1.0.0"])]
    weights = sha(lora_dir / "adapter_model.safetensors")
    assert report["problems"][0]["digest"] == f"sha256:{weights}" and report["problems"][0]["sha256"] == weights


def test_plugins():
    d = js("plugins")
    names = {p["name"] for p in d["plugins"]}
    assert {"adapterhub_sdk.methods.lora", "adapterhub_sdk.methods.generic"} <= names
    assert all(p["error"] is None for p in d["plugins"])
    assert {"lora", "generic"} <= {m["name"] for m in d["methods"]}


def test_db_upgrade(tmp_path):
    from adapterhub_sdk.db import head_revision

    url = f"sqlite:///{tmp_path / 'fresh' / 'reg.db'}"
    first = ok("--registry", url, "db", "upgrade").stdout
    assert f"registry schema at {head_revision()}" in first and "was empty" in first
    again = ok("--registry", url, "db", "upgrade").stdout.strip()
    assert again == f"registry schema at {head_revision()}"


@pytest.fixture(params=["sqlite", "postgres"])
def cli_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'elsewhere' / 'team.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL CLI tests need ADAPTERHUB_TEST_POSTGRES_URL")
    url = _pg_database()
    try:
        yield url
    finally:
        _pg_drop(url)


def test_registry_option_and_env(cli_url, base_dir, lora_dir, tmp_path):
    shared = tmp_path / "team-blobs"
    if cli_url.startswith("postgresql"):  # a server registry has no place of its own for blobs
        assert_user_error(run_cli("--registry", cli_url, "list"), "needs the blob store", "--blobs")
    ok("--registry", cli_url, "--blobs", str(shared), "publish", str(lora_dir), "--name", "team/x",
       "--version", "1.0.0", "--base", str(base_dir), "--task", "t")
    env = {"ADAPTERHUB_REGISTRY_URL": cli_url, "ADAPTERHUB_BLOBS": str(shared)}
    assert [(i["name"], i["version"]) for i in js("list", env=env)] == [("team/x", "1.0.0")]
    ok("pull", "team/x@latest", "--out", str(tmp_path / "x"), env=env)
    assert sha(tmp_path / "x" / "adapter_model.safetensors") == sha(lora_dir / "adapter_model.safetensors")
    with home_registry(Path(os.environ["ADAPTERHUB_HOME"])) as default:
        assert default.list() == []  # the default registry under ADAPTERHUB_HOME is another one


# --------------------------------------------------------------------------- errors


@pytest.fixture
def published(lora_dir, base_dir):
    with home_registry(Path(os.environ["ADAPTERHUB_HOME"])) as reg:
        reg.publish(lora_dir, name="acme/x", version="1.0.0", base=base_dir)


def test_error_bad_name(lora_dir):
    assert_user_error(run_cli("publish", str(lora_dir), "--name", "acme/bad name", "--version", "1.0.0"),
                      "name", "acme/bad name")


@pytest.mark.parametrize(("url", "words"), [
    ("mysql://u@localhost/db", ("'mysql' is not supported", "sqlite:///")),
    ("not a url", ("not valid", "sqlite:///")),
])
def test_error_unsupported_registry_url(url, words):
    assert_user_error(run_cli("--registry", url, "list"), *words)


def test_error_bad_version(lora_dir):
    assert_user_error(run_cli("publish", str(lora_dir), "--name", "acme/x", "--version", "1.0"),
                      "'1.0'", "semantic version")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a directory nobody can create in")
def test_error_pull_or_export_to_an_unwritable_place(published):
    for args in (("pull", "acme/x@1.0.0", "--out", "/proc/adapterhub-nope/x"),
                 ("export", "acme/x@1.0.0", "--format", "peft", "--out", "/proc/adapterhub-nope")):
        assert_user_error(run_cli(*args), "cannot", "/proc", "write to")


def test_error_pull_into_non_empty_dir(published, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert_user_error(run_cli("pull", "acme/x@1.0.0", "--out", str(dest)), "not empty", "--force")
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_error_unknown_adapter(published, tmp_path):
    assert_user_error(run_cli("pull", "acme/nope@1.0.0", "--out", str(tmp_path / "o")), "acme/nope")
    assert not (tmp_path / "o").exists()


def test_error_conflicting_republish(published, lora_dir_b):
    assert_user_error(run_cli("publish", str(lora_dir_b), "--name", "acme/x", "--version", "1.0.0"),
                      "acme/x@1.0.0", "already exists", "new version")


def test_error_incompatible_base_at_publish(lora_dir, base_other_shape):
    line = assert_user_error(run_cli("publish", str(lora_dir), "--name", "acme/x", "--version", "1.0.0",
                                     "--base", str(base_other_shape)), "does not fit")
    assert "proj" in line
    with home_registry(Path(os.environ["ADAPTERHUB_HOME"])) as reg:
        assert reg.list() == []


def test_error_usage_mistakes_are_one_line_too(tmp_path):
    assert_user_error(run_cli("publish", str(tmp_path / "missing"), "--name", "a/b", "--version", "1.0.0"),
                      "does not exist")
    assert_user_error(run_cli("resolve"), "--base")
    # --fingerprint takes a fingerprint, never a path
    assert_user_error(run_cli("resolve", "--fingerprint", str(tmp_path)), "not a fingerprint")


def test_error_unreachable_database():
    assert_user_error(run_cli("--registry", "postgresql://postgres@127.0.0.1:1/nope", "list"), "database")


def test_debug_shows_traceback():
    proc = run_cli("show", "acme/nope", env={"ADAPTERHUB_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "NotFoundError" in proc.stderr


def test_db_upgrade_refuses_a_foreign_database(tmp_path):
    import sqlite3

    app = tmp_path / "app.db"
    with sqlite3.connect(app) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    assert_user_error(run_cli("--registry", f"sqlite:///{app}", "db", "upgrade"), "no adapterhub schema")
    with sqlite3.connect(app) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["users"]


def test_debug_env_zero_means_off_and_pulled_dirs_get_the_umask_mode(published, tmp_path):
    off = run_cli("show", "nope/x", env={"ADAPTERHUB_DEBUG": "0"})
    assert_user_error(off, "no adapter named")
    on = run_cli("show", "nope/x", env={"ADAPTERHUB_DEBUG": "1"})
    assert on.returncode != 0 and "Traceback" in on.stderr
    ok("pull", "acme/x@1.0.0", "--out", str(tmp_path / "pulled"))
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "pulled").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_alias_yank_and_db_current_json(published):
    a = js("alias", "acme/x@1.0.0", "prod")
    assert (a["name"], a["alias"], a["version"]) == ("acme/x", "prod", "1.0.0") and a["digest"].startswith("sha256:")
    y = js("yank", "acme/x@1.0.0")
    assert (y["version"], y["yanked"]) == ("1.0.0", True)
    assert js("yank", "acme/x@1.0.0", "--undo")["yanked"] is False
    cur = js("db", "current")
    assert cur["current"] == cur["head"] and cur["up_to_date"] is True

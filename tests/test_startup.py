"""What a process pays to start: the package imports on first use, and the read path of the
CLI never loads what only writes, migrations or serving need. Checked in fresh interpreters
by which modules got imported (timings belong to benchmarks/bench_cli.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

import adapterhub_sdk


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_package_loads_nothing_heavy():
    mods = _modules_after("import adapterhub_sdk")
    heavy = {"sqlalchemy", "torch", "alembic", "transformers", "peft", "safetensors", "fastapi", "pluggy"}
    assert not heavy & mods, f"import adapterhub_sdk loaded {sorted(heavy & mods)}"


def test_every_public_name_resolves_to_its_definition():
    import importlib

    for name in adapterhub_sdk.__all__:
        where = adapterhub_sdk._WHERE[name]
        assert getattr(adapterhub_sdk, name) is getattr(importlib.import_module(f"adapterhub_sdk.{where}"), name)
    assert sorted(adapterhub_sdk.__all__) == sorted(adapterhub_sdk._WHERE)
    assert set(adapterhub_sdk.__all__) <= set(dir(adapterhub_sdk))


def test_submodule_import_does_not_hide_a_public_function():
    # adapterhub_sdk.fingerprint is both a module and the public function; the function wins,
    # whichever is imported first (as with the eager imports before)
    code = ("import adapterhub_sdk.registry, adapterhub_sdk.fingerprint\nimport adapterhub_sdk as ah\n"
            "from adapterhub_sdk.fingerprint import fingerprint\nassert ah.fingerprint is fingerprint, ah.fingerprint\n"
            "from adapterhub_sdk import *\nassert callable(Registry.open) and fingerprint is ah.fingerprint\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    try:
        adapterhub_sdk.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_head_revision_constant_matches_the_migration_scripts():
    from alembic.script import ScriptDirectory

    from adapterhub_sdk import db

    scripts = ScriptDirectory.from_config(db._alembic_config())
    assert scripts.get_current_head() == db.HEAD_REVISION, "add the new migration to db.REVISIONS"
    assert list(db.REVISIONS) == [s.revision for s in reversed(list(scripts.walk_revisions()))]


def test_opening_an_existing_registry_does_not_load_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    from adapterhub_sdk import Registry

    Registry.open(url).close()  # created (and stamped) by this process
    mods = _modules_after(f"from adapterhub_sdk import Registry\nRegistry.open({url!r}).list()")
    assert "alembic" not in mods


def test_outdated_schema_is_still_refused_with_the_command_to_run(tmp_path):
    import pytest
    from sqlalchemy import create_engine

    from adapterhub_sdk import Registry, RegistryError, db

    url = f"sqlite:///{tmp_path / 'r.db'}"
    Registry.open(url).close()
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0003'")
    with pytest.raises(RegistryError, match=f"is at 0003, this adapterhub_sdk needs {db.HEAD_REVISION}") as err:
        Registry.open(url)
    assert "adapterhub db upgrade" in (err.value.hint or "")
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(RegistryError, match="newer than this adapterhub_sdk"):
        Registry.open(url)


def test_builtin_command_loads_no_plugin(tmp_path):
    """``adapterhub list`` starts without importing any installed plugin (plugin commands are
    looked up only for a name that is not built in, or when commands are listed)."""
    import os
    from importlib.metadata import entry_points

    import pytest

    plugin_modules = {ep.module.split(".")[0] for ep in entry_points(group="adapterhub")}
    if not plugin_modules:
        pytest.skip("no adapterhub plugin installed (.ci/test installs the repository's plugins)")
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
            "from adapterhub_sdk.cli import main\nmain(['list'])\n")
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERHUB_LOAD_PLUGINS"}
    env["ADAPTERHUB_HOME"] = str(tmp_path / "home")
    from adapterhub_sdk import Registry

    Registry.open(f"sqlite:///{tmp_path / 'home' / 'registry.db'}").close()  # created here: not the read path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    mods = set(json.loads(out.stderr.strip().splitlines()[-1]))
    assert not plugin_modules & mods, f"'adapterhub list' imported plugins {sorted(plugin_modules & mods)}"
    # a SQLite registry at the current schema is listed with the standard library's sqlite3
    assert "sqlalchemy" not in mods and "alembic" not in mods
    # also when the registry is named by URL (--registry / ADAPTERHUB_REGISTRY_URL)
    url = f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    named = subprocess.run([sys.executable, "-c", code.replace("main(['list'])", f"main(['--registry', {url!r}, 'list'])")],
                           capture_output=True, text=True, env=env)
    assert named.returncode == 0, named.stderr
    assert "sqlalchemy" not in set(json.loads(named.stderr.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the end of a command

_ENDS = """import atexit, os, sys, threading, time
class Torn:
    def __del__(self):
        os.write(2, b"teardown ran\\n")
keep = Torn()  # freed only by the interpreter's teardown
atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))
if os.environ.get("WORKER"):
    def late():
        time.sleep(2.0)  # still running when the command ends
        print("worker finished", file=sys.stderr, flush=True)
    threading.Thread(target=late).start()  # non-daemon: Python waits for it
sys.argv = ["adapterhub", *sys.argv[1:]]
from adapterhub_sdk.cli import main
main()
"""


def _end(tmp_path, *args: str, worker: bool = False) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home"), **({"WORKER": "1"} if worker else {})}
    return subprocess.run([sys.executable, "-c", _ENDS, *args], capture_output=True, text=True, env=env)


def test_a_command_ends_without_the_interpreters_teardown_but_runs_atexit(tmp_path):
    """``adapterhub`` ends its process once the command is done, without freeing every module
    (about 0.1 s after SQLAlchemy and the plugins loaded: bench_oci.py / bench_s3.py), but with
    what an exit must do: the output complete, atexit handlers run, the status kept."""
    ok = _end(tmp_path, "list", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    assert "atexit ran" in ok.stderr and "teardown ran" not in ok.stderr
    usage = _end(tmp_path, "list", "--no-such-option")
    assert usage.returncode == 2 and "no such option" in usage.stderr.lower()
    assert "atexit ran" in usage.stderr and "teardown ran" not in usage.stderr
    failed = _end(tmp_path, "show", "acme/none")
    assert failed.returncode == 1 and failed.stderr.startswith("error: ")
    assert "teardown ran" not in failed.stderr


def test_a_command_with_a_running_thread_ends_as_python_does(tmp_path):
    """A thread Python would wait for (a plugin's, a library's) is waited for: the normal exit."""
    out = _end(tmp_path, "list", worker=True)
    assert out.returncode == 0, out.stderr
    assert "worker finished" in out.stderr and "atexit ran" in out.stderr and "teardown ran" in out.stderr


def test_a_large_output_is_complete_when_the_process_ends(tmp_path, lora_dir, base_dir):
    """Everything printed reaches a pipe before the process ends: here a manifest of ~200 KB
    (a long description), several times a pipe's buffer."""
    import warnings

    from adapterhub_sdk import Registry

    text = "".join(f"line {i}: " + "x" * 60 + "\n" for i in range(3000))
    with Registry.open(f"sqlite:///{tmp_path / 'home' / 'registry.db'}") as reg, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.publish(lora_dir, name="acme/long", version="1.0.0", base=base_dir, description=text)
    out = _end(tmp_path, "show", "acme/long@1.0.0", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["manifest"]["description"] == text

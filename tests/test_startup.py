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

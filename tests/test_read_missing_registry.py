"""A read command given a SQLite registry that does not exist (a mistyped --registry) says so in
one line and creates nothing; a write command there still creates the registry."""

from __future__ import annotations

import pytest

from conftest import run_cli

READS = [
    ["list"],
    ["list", "--task", "sentiment"],
    ["show", "acme/x"],
    ["show", "acme/x@1.0.0"],
    ["resolve", "--fingerprint", "0123456789abcdef"],
    ["verify"],
    ["keys", "list"],
    ["policy", "show"],
    ["db", "current"],
    ["export", "acme/x@1.0.0", "--format", "vllm", "--out", "OUT"],
    ["pull", "acme/x@1.0.0", "--out", "OUT"],  # a local pull reads (before: created the registry)
]


@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_read_command_on_missing_sqlite_file_says_so_and_creates_nothing(tmp_path, args, how):
    """Before: ``adapterhub --registry sqlite:////nonexistent/dir/x.db list`` created that folder
    and an empty registry in it, and printed 'the registry is empty'."""
    missing = tmp_path / "typo" / "dir" / "x.db"
    url = f"sqlite:///{missing}"
    args = [str(tmp_path / "typo" / "out") if a == "OUT" else a for a in args]
    proc = (run_cli("--registry", url, *args) if how == "option"
            else run_cli(*args, env={"ADAPTERHUB_REGISTRY_URL": url}))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"no registry at {missing}" in lines[0] and "--registry" in lines[0] and "publish" in lines[0]
    assert not (tmp_path / "typo").exists()


def test_write_command_on_missing_sqlite_file_creates_it(tmp_path, lora_dir):
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'x.db'}"
    run_cli("--registry", url, "publish", str(lora_dir), "--name", "acme/x", "--version", "1.0.0", check=True)
    assert (tmp_path / "new" / "dir" / "x.db").is_file()
    assert "acme/x@1.0.0" in run_cli("--registry", url, "list", check=True).stdout


def test_default_home_and_python_api_still_create(tmp_path):
    """The default home (no URL given, so nothing mistyped) and ``Registry.open`` create as before."""
    import os

    import adapterhub_sdk as ah
    from adapterhub_sdk.errors import RegistryError

    proc = run_cli("list", check=True)
    assert "the registry is empty" in proc.stdout
    assert any((tmp_path / "home").iterdir()) and os.environ["ADAPTERHUB_HOME"] == str(tmp_path / "home")
    with ah.Registry.open(f"sqlite:///{tmp_path / 'api' / 'r.db'}") as reg:
        assert reg.list() == []
    assert (tmp_path / "api" / "r.db").is_file()
    with pytest.raises(RegistryError, match="no registry at"):
        ah.Registry.open(f"sqlite:///{tmp_path / 'api2' / 'r.db'}", create=False)
    assert not (tmp_path / "api2").exists()

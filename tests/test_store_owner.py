"""A blob store records which registry it belongs to, and gc collects a store only for that
registry. Before, a shell with ADAPTERHUB_BLOBS set to the team's store but no
ADAPTERHUB_REGISTRY_URL got an empty catalog of its own on that store, and ``adapterhub gc``
there deleted every blob of the team's (each looked unreferenced from the empty catalog).
On a local directory store and on S3 (a real moto_server process on loopback, the AWS
variables pointing botocore at it), through the CLI in subprocesses as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_s3_blobs import MOTO, s3_endpoint, s3_url  # noqa: F401 - the moto fixtures

import adapterhub_sdk as ah
from adapterhub_sdk.errors import ForeignStoreWarning, RegistryError

from conftest import run_cli


@pytest.fixture(params=["dir", "s3"])
def store(request, tmp_path) -> str:
    if request.param == "dir":
        return str(tmp_path / "team-blobs")
    if MOTO is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    return request.getfixturevalue("s3_url")


def _blobs(url: str) -> set[str]:
    with ah.Registry.open("sqlite://", blobs=url) as r:
        return set(r.blobs.iter_digests())


def test_gc_from_another_catalog_on_the_team_store_is_refused_and_deletes_nothing(store, tmp_path, base_dir,
                                                                                lora_dir):
    team = f"sqlite:///{tmp_path / 'team.db'}"
    with ah.Registry.open(team, blobs=store) as reg:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
    held = _blobs(store)
    assert len(held) == 3
    # a forgotten ADAPTERHUB_REGISTRY_URL: a home of its own, on the team's store
    env = {"ADAPTERHUB_HOME": str(tmp_path / "stray"), "ADAPTERHUB_BLOBS": store}
    res = run_cli("gc", "--grace", "0", env=env)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "belongs to another registry" in res.stderr and "--claim-store" in res.stderr
    dry = run_cli("gc", "--grace", "0", "--dry-run", env=env)
    assert dry.returncode == 1 and "belongs to another registry" in dry.stderr
    assert _blobs(store) == held
    # the team's own gc runs, and its version still pulls intact
    with ah.Registry.open(team, blobs=store) as reg:
        assert reg.gc(grace_seconds=0).blobs_removed == 0
        reg.pull("team/a@1.0.0", tmp_path / "out")
        assert reg.verify().ok


def test_a_publish_into_another_registrys_store_warns_and_its_gc_is_still_refused(store, tmp_path, base_dir,
                                                                                lora_dir, lora_dir_b):
    with ah.Registry.open(f"sqlite:///{tmp_path / 'team.db'}", blobs=store) as reg:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'stray.db'}", blobs=store) as stray:
        with pytest.warns(ForeignStoreWarning, match="belongs to another registry"):
            stray.publish(lora_dir_b, name="me/b", version="1.0.0", base=base_dir)
        with pytest.raises(RegistryError, match="belongs to another registry"):
            stray.gc(grace_seconds=0)
    assert len(_blobs(store)) >= 4


def test_a_store_no_registry_claimed_is_claimed_by_the_one_that_references_it(tmp_path, base_dir, lora_dir):
    """Stores made before stores recorded their owner: the registry that references what the
    store holds claims it on its first gc; an empty catalog is refused (it references none)."""
    store = tmp_path / "old-blobs"
    team = f"sqlite:///{tmp_path / 'team.db'}"
    with ah.Registry.open(team, blobs=store) as reg:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
    (store / "OWNER").unlink()  # as an older adapterhub_sdk left it
    with ah.Registry.open(f"sqlite:///{tmp_path / 'stray.db'}", blobs=store) as stray, \
            pytest.raises(RegistryError, match="references none of the 3 blobs"):
        stray.gc(grace_seconds=0)
    assert not (store / "OWNER").exists()
    with ah.Registry.open(team, blobs=store) as reg:
        reg.gc(grace_seconds=0)
        from adapterhub_sdk.store_owner import registry_id

        assert (store / "OWNER").read_text().strip() == registry_id(reg)
    # an explicit claim (a catalog restored without its settings) takes the store over
    env = {"ADAPTERHUB_REGISTRY_URL": f"sqlite:///{tmp_path / 'restored.db'}", "ADAPTERHUB_BLOBS": str(store)}
    assert run_cli("gc", "--grace", "0", "--dry-run", env=env).returncode == 1
    got = run_cli("gc", "--grace", "0", "--dry-run", "--claim-store", "--json", env=env, check=True)
    assert json.loads(got.stdout)["blobs_removed"] == 3 and json.loads(got.stdout)["dry_run"] is True
    assert len(_blobs(str(store))) == 3  # a dry run claims nothing and deletes nothing
    assert run_cli("gc", "--grace", "0", "--dry-run", env=env).returncode == 1


def test_the_owner_record_is_never_read_through_a_link(tmp_path, base_dir, lora_dir):
    store = tmp_path / "blobs"
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=store) as reg:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
        owner = store / "OWNER"
        shutil.move(owner, tmp_path / "elsewhere")
        owner.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(OSError):
            reg.blobs.owner()


def test_two_openings_of_one_registry_share_its_id(tmp_path):
    from adapterhub_sdk.store_owner import registry_id

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ah.Registry.open(url, blobs=tmp_path / "b") as a, ah.Registry.open(url, blobs=tmp_path / "b") as b:
        assert registry_id(a) == registry_id(b) and len(registry_id(a) or "") == 32
    assert Path(tmp_path / "b").exists() is False  # asking for the id writes no store


_KILLED = """import os, signal, sys
import adapterhub_sdk as ah
from adapterhub_sdk.s3_blobs import S3BlobStore
def stop(self, staged):
    print("staged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
S3BlobStore.put_staged = stop
with ah.Registry.open(sys.argv[1], blobs=sys.argv[2]) as reg:
    reg.publish(sys.argv[3], name="team/killed", version="1.0.0")
"""


def test_a_killed_s3_publish_leaves_its_staged_copy_where_gc_removes_it(s3_url, tmp_path, lora_dir,  # noqa: F811
                                                                      monkeypatch):
    """Server: moto_server on loopback. A publish killed after staging left a copy of the
    adapter's full size in the system's temp directory, where gc never looked. Staged copies
    now live in a per-user directory there that gc cleans after its grace period."""
    import os
    import signal
    import subprocess
    import sys

    from adapterhub_sdk.s3_staging import staging_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))  # this test's own temp directory, for both processes
    (tmp_path / "t").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    proc = subprocess.run([sys.executable, "-c", _KILLED, url, s3_url, str(lora_dir)], capture_output=True, text=True,
                          env=os.environ, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "staged" in proc.stdout, proc.stderr
    d = staging_dir()
    assert d is not None and d.startswith(str(tmp_path / "t"))
    left = os.listdir(d)
    assert left and all(n.startswith("adapterhub-s3.") for n in left)
    with ah.Registry.open(url, blobs=s3_url) as reg:
        assert reg.gc().temp_removed == 0 and os.listdir(d) == left  # within the grace period: kept
        assert reg.gc(grace_seconds=0).temp_removed >= len(left)
    assert os.listdir(d) == []


def test_a_staging_directory_that_is_a_link_is_never_used(tmp_path, monkeypatch):
    import os

    from adapterhub_sdk.s3_staging import staging_dir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / f"adapterhub-s3-staging-{os.getuid()}").symlink_to(elsewhere)
    assert staging_dir() is None

"""gc with no grace period while another process publishes: the publish leases the blobs it
is about to reference before it uploads them (registry/lifecycle.py), so ``adapterhub gc
--grace 0`` run meanwhile keeps blobs a publish has uploaded but not yet committed. Real
processes on both sides (a publisher paused between its uploads and its commit, the CLI's
gc), on SQLite and PostgreSQL, against a local blob directory and against moto_server (S3
on loopback; test_s3_blobs starts it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from test_s3_blobs import MOTO, s3_endpoint, s3_url  # noqa: F401 - the moto_server fixtures

import adapterhub_sdk as ah
from adapterhub_sdk import tables
from adapterhub_sdk.registry.lifecycle import LEASE_SECONDS, holder_gone, lease_holder
from adapterhub_sdk.tables import utcnow

from conftest import run_cli

# Publishes SRC as team/fresh@1.0.0 and pauses after every blob is stored, before the commit,
# until MARKER.go exists (MARKER.paused says it got there). Prints created and bytes written.
PUBLISHER = r"""
import os, sys, time
import adapterhub_sdk as ah
url, blobs, src, marker = sys.argv[1:5]
reg = ah.Registry.open(url, blobs=blobs)
real = reg._commit_version
def paused(*a, **kw):
    open(marker + ".paused", "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(marker + ".go"):
        if time.monotonic() > deadline:
            sys.exit("never released")
        time.sleep(0.01)
    return real(*a, **kw)
reg._commit_version = paused
res = reg.publish(src, name="team/fresh", version="1.0.0")
print(res.created, res.bytes_written, flush=True)
"""


def _sizes(lora_dir: Path) -> list[int]:
    with ah.pack(lora_dir) as pkg:
        return [f.size for f in pkg.files]


def _blobs(request, store: str, tmp_path: Path) -> str:
    if store == "s3":
        if MOTO is None:
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        return request.getfixturevalue("s3_url")
    return str(tmp_path / "blobs")


def _paused_publisher(url: str, blobs: str, src: Path, marker: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, url, blobs, str(src), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(str(marker) + ".paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the publisher never paused: {proc.communicate()}")
        time.sleep(0.02)
    return proc


def _gc(url: str, blobs: str) -> dict:
    return json.loads(run_cli("--registry", url, "--blobs", blobs, "gc", "--grace", "0", "--json",
                              check=True).stdout)


@pytest.mark.parametrize("store", ["file", "s3"])
def test_gc_grace_0_keeps_the_blobs_of_a_publish_in_flight(store, registry_url, request, tmp_path, lora_dir):
    """Server: moto_server on loopback for ``s3``; a local directory for ``file``. The publisher
    has uploaded every blob (all new to the store, none referenced) and not committed; a gc
    with no grace in another process keeps them all; the publish then commits and the version
    pulls intact. Afterwards no lease is left and gc has nothing to keep."""
    blobs = _blobs(request, store, tmp_path)
    n_files = len(_sizes(lora_dir))
    marker = tmp_path / "pub"
    proc = _paused_publisher(registry_url, blobs, lora_dir, marker)
    try:
        with ah.Registry.open(registry_url, blobs=blobs) as reg:
            stored = set(reg.blobs.iter_digests())
            assert len(stored) == n_files and reg.list() == []  # uploaded, not committed
            assert {lease["sha256"] for lease in reg.leases() if lease["live"]} == stored
        report = _gc(registry_url, blobs)
        assert (report["blobs_removed"], report["kept_leased"]) == (0, n_files), report
        text = run_cli("--registry", registry_url, "--blobs", blobs, "gc", "--grace", "0", check=True).stdout
        assert f"and {n_files} leased by publishes in progress" in text
        Path(str(marker) + ".go").touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["True", str(sum(_sizes(lora_dir)))]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with ah.Registry.open(registry_url, blobs=blobs) as reg:
        assert reg.verify().ok and reg.leases() == []
        got = reg.pull("team/fresh@1.0.0", tmp_path / "out")
        assert (got / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
    again = _gc(registry_url, blobs)
    assert (again["blobs_removed"], again["kept_leased"]) == (0, 0)


@pytest.mark.parametrize("store", ["file", "s3"])
def test_a_killed_publishers_lease_is_dead_at_once(store, registry_url, request, tmp_path, lora_dir):
    """Server: moto_server on loopback for ``s3``; a local directory for ``file``. A publisher
    killed between its uploads and its commit leaves blobs and a lease; its process is gone
    from this machine, so the next gc with no grace removes the blobs and the lease."""
    blobs = _blobs(request, store, tmp_path)
    proc = _paused_publisher(registry_url, blobs, lora_dir, tmp_path / "pub")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    with ah.Registry.open(registry_url, blobs=blobs) as reg:
        assert reg.list() == [] and reg.leases() and not any(lease["live"] for lease in reg.leases())
    report = _gc(registry_url, blobs)
    assert report["blobs_removed"] == len(_sizes(lora_dir)) and report["kept_leased"] == 0
    with ah.Registry.open(registry_url, blobs=blobs) as reg:
        assert list(reg.blobs.iter_digests()) == [] and reg.leases() == []


def test_leases_of_other_machines_live_until_they_expire(registry, lora_dir):
    """A lease held by a process on another machine cannot be checked from here: it keeps its
    blob until LEASE_SECONDS have passed since it was taken, then gc removes both."""
    registry.publish(lora_dir, name="team/old", version="1.0.0")
    registry.delete_version("team/old@1.0.0")
    shas = sorted(registry.blobs.iter_digests())
    elsewhere = "0b0e7f00-0000-4000-8000-000000000000 pid:[1] 4242 1"
    assert not holder_gone(elsewhere) and not holder_gone(lease_holder())
    with registry.engine.begin() as conn:
        conn.execute(insert(tables.blob_leases), [
            {"lease": "a" * 32, "sha256": shas[0], "holder": elsewhere, "created_at": utcnow()},
            {"lease": "b" * 32, "sha256": shas[1], "holder": elsewhere,
             "created_at": utcnow() - timedelta(seconds=LEASE_SECONDS + 60)}])
    report = registry.gc(grace_seconds=0)
    assert report.kept_leased == 1 and report.blobs_removed == len(shas) - 1
    assert sorted(registry.blobs.iter_digests()) == [shas[0]]
    with registry.engine.connect() as conn:
        assert conn.execute(select(tables.blob_leases.c.lease)).scalars().all() == ["a" * 32]


def test_a_lease_ends_when_the_publish_fails(registry, lora_dir, monkeypatch):
    """A publish that fails after its uploads (here: its commit) leaves no live lease: the
    blobs it stored are garbage for the next gc, not held for a day."""
    def fail(*a, **kw):
        raise ah.RegistryError("the database went away")

    monkeypatch.setattr(registry, "_commit_version", fail)
    with pytest.raises(ah.RegistryError, match="went away"):
        registry.publish(lora_dir, name="team/x", version="1.0.0")
    monkeypatch.undo()
    assert registry.leases() == []
    assert registry.gc(grace_seconds=0).blobs_removed == len(_sizes(lora_dir))


def test_gc_grace_0_leaves_the_multipart_uploads_of_leased_blobs(request, tmp_path, lora_dir):
    """Server: moto_server on loopback. A multipart upload in progress (a blob over the part
    size) of a leased blob is left alone by gc with no grace; once the lease ends, gc aborts
    it as abandoned."""
    from adapterhub_sdk.registry.lifecycle import end_lease, take_lease

    blobs = _blobs(request, "s3", tmp_path)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=blobs) as reg:
        s3, bucket = reg.blobs.client, reg.blobs.bucket
        leased, abandoned = "a" * 64, "b" * 64
        for d in (leased, abandoned):
            s3.create_multipart_upload(Bucket=bucket, Key=reg.blobs.key(d))
        lease = take_lease(reg, [leased])

        def uploads() -> list[str]:
            return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ()))

        assert reg.gc(grace_seconds=0).temp_removed == 1
        assert uploads() == [reg.blobs.key(leased)]
        end_lease(reg, lease)
        assert reg.gc(grace_seconds=0).temp_removed == 1
        assert uploads() == []

"""gc on a local blob store killed, or racing another gc, between moving a blob aside
(quarantine) and asking the catalog again (release), while a publish reuses that blob.
Real processes: the gc runs in a child process whose ``BlobStore.quarantine`` is wrapped to
pause right after the real one moved the blob (files say where it is), the publish runs in
this process against the same catalog and store, the second gc is the CLI; on SQLite and
PostgreSQL. Then: the blob a version references is never lost (quarantine.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.blobs import BlobStore

from conftest import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::adapterhub_sdk.registry.UnpinnedPublishWarning")

# gc --grace 0 on URL/BLOBS; its first quarantine waits for MARKER.go before moving the blob
# (MARKER.ready: it has read the catalog), then says MARKER.quarantined and waits for
# MARKER.release before asking the catalog again.
GC = r"""
import os, sys, time
from adapterhub_sdk import blobs
import adapterhub_sdk as ah
url, store, marker = sys.argv[1:4]
real = blobs.BlobStore.quarantine

def wait_for(name):
    deadline = time.monotonic() + 120
    while not os.path.exists(marker + name):
        if time.monotonic() > deadline:
            sys.exit("never released")
        time.sleep(0.01)

def paused(self, digest):
    if os.path.exists(marker + ".quarantined"):
        return real(self, digest)
    open(marker + ".ready", "w").close()
    wait_for(".go")
    token = real(self, digest)
    with open(marker + ".quarantined", "w") as f:
        f.write(f"{digest} {token}")
    wait_for(".release")
    return token

blobs.BlobStore.quarantine = paused
report = ah.Registry.open(url, blobs=store).gc(grace_seconds=0)
print(report.blobs_removed, report.temp_removed, flush=True)
"""


def _wait(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the gc never got to {path.name}: {proc.communicate()}")
        time.sleep(0.02)


def _gc_quarantines_a_reused_blob(url: str, store: Path, lora_dir: Path, marker: Path
                                  ) -> tuple[subprocess.Popen, str, Path]:
    """acme/x@1.0.0 published and deleted (its blobs unreferenced); a gc reads the catalog;
    acme/x@2.0.0 (the same files) is published, reusing the blobs still at their addresses;
    then the gc moves one of them aside and pauses. Returns the gc, the digest and its token."""
    with ah.Registry.open(url, blobs=store) as reg:
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.delete_version("acme/x@1.0.0")
    proc = subprocess.Popen([sys.executable, "-c", GC, url, str(store), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(Path(f"{marker}.ready"), proc)
    with ah.Registry.open(url, blobs=store) as reg:
        res = reg.publish(lora_dir, name="acme/x", version="2.0.0")
        assert res.created and res.bytes_written == 0  # every blob reused
    Path(f"{marker}.go").touch()
    _wait(Path(f"{marker}.quarantined"), proc)
    digest, token = Path(f"{marker}.quarantined").read_text().split()
    assert Path(token).is_file() and not BlobStore(store).has(digest)
    return proc, digest, Path(token)


def _cli_gc(url: str, store: Path) -> dict:
    return json.loads(run_cli("--registry", url, "--blobs", str(store), "gc", "--grace", "0", "--json",
                              check=True).stdout)


def _intact_and_pulls(url: str, store: Path, lora_dir: Path, out: Path) -> None:
    with ah.Registry.open(url, blobs=store) as reg:
        report = reg.verify()
        assert report.ok, report.problems
        got = reg.pull("acme/x@2.0.0", out)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (got / name).read_bytes() == (lora_dir / name).read_bytes()


def test_a_gc_killed_after_quarantine_loses_no_referenced_blob(registry_url, tmp_path, lora_dir):
    """Crash: SIGKILL while the blob acme/x@2.0.0 references sits in gc's quarantine. The next
    gc puts it back at its address (it used to delete it as a stale temp file: verify then
    said 'missing (used by acme/x@2.0.0)' for good); the one after keeps it (referenced)."""
    store = tmp_path / "blobs"
    proc, digest, token = _gc_quarantines_a_reused_blob(registry_url, store, lora_dir, tmp_path / "gc")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert token.is_file() and not BlobStore(store).has(digest)  # the window: the blob is aside

    report = _cli_gc(registry_url, store)
    assert report["blobs_removed"] == 0 and report["temp_removed"] == 1, report
    assert not token.exists() and BlobStore(store).verify(digest) is None
    assert os.listdir(store / "tmp") == []
    _intact_and_pulls(registry_url, store, lora_dir, tmp_path / "out")

    again = _cli_gc(registry_url, store)
    assert (again["blobs_removed"], again["temp_removed"]) == (0, 0), again
    _intact_and_pulls(registry_url, store, lora_dir, tmp_path / "out2")


def test_a_second_gc_leaves_a_live_gcs_quarantine_alone(registry_url, tmp_path, lora_dir):
    """Two ``gc --grace 0`` at once: the second one's temp cleanup runs while the first holds
    a blob in quarantine. It leaves that token alone (it used to delete it: the first gc then
    failed to put back a blob acme/x@2.0.0 references, and the bytes were gone); the first
    then finds the blob referenced and puts it back."""
    store = tmp_path / "blobs"
    marker = tmp_path / "gc"
    proc, digest, token = _gc_quarantines_a_reused_blob(registry_url, store, lora_dir, marker)
    try:
        report = _cli_gc(registry_url, store)
        assert (report["blobs_removed"], report["temp_removed"]) == (0, 0), report
        assert token.is_file()
        Path(f"{marker}.release").touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.split() == ["0", "0"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not token.exists() and BlobStore(store).verify(digest) is None
    _intact_and_pulls(registry_url, store, lora_dir, tmp_path / "out")


def _leftover(store: BlobStore, digest: str) -> Path:
    """A quarantine token as a gc that died leaves it (its lock gone with its process)."""
    token = store.quarantine(digest)
    assert token is not None
    os.close(store._held.pop(token))
    return token


def test_leftover_quarantine_is_put_back_only_when_intact_and_never_over_an_intact_blob(tmp_path):
    """A leftover token goes back to an empty address, and to one holding a corrupt copy; it
    is dropped when an intact copy is there (that copy is left as it is) and when its own
    bytes no longer match its digest (nothing corrupt is put back). A dry run changes nothing."""
    import hashlib

    store = BlobStore(tmp_path / "blobs")
    blobs = [bytes([i]) * (1000 + i) for i in range(4)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    sources = []
    for i, data in enumerate(blobs):
        src = tmp_path / f"src{i}"
        src.write_bytes(data)
        sources.append(src)
        store.put_file(src, digests[i])
    empty, corrupt_there, intact_there, corrupt_token = (_leftover(store, d) for d in digests)
    store.put_file(sources[2], digests[2])  # a publish wrote it again
    intact_inode = store.path(digests[2]).stat().st_ino
    bad = store.path(digests[1])
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not the blob")
    os.chmod(corrupt_token, 0o644)
    corrupt_token.write_bytes(b"rotten")

    assert store.clean_temp(3600, dry_run=True) == 4
    assert sorted(p.name for p in (store.root / "tmp").iterdir()) == sorted(
        t.name for t in (empty, corrupt_there, intact_there, corrupt_token))
    assert store.clean_temp(3600) == 4  # tokens are judged by their lock, not their age
    assert list((store.root / "tmp").iterdir()) == []
    assert [store.verify(d) for d in digests] == [None, None, None, "missing"]
    assert store.path(digests[2]).stat().st_ino == intact_inode

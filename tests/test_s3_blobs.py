"""The ``s3://`` blob store against a real S3-compatible server: moto's standalone server
(``moto_server``, from ``moto[server]``), started once per session on loopback.

Every test here ran against that server; each says so in its docstring. A registry on
PostgreSQL plus S3 shares no filesystem between its users: the CLI test publishes in one
process and resolves and pulls in another, each with its own home."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IntegrityError
from adapterhub_sdk.s3_blobs import S3BlobStore

from conftest import free_port, run_cli, wait_listening

MOTO = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
pytestmark = pytest.mark.skipif(MOTO is None, reason="moto_server is not installed (pip install 'moto[server]')")
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto_server process on a free loopback port, for the whole session."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        wait_listening(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def s3_url(s3_endpoint, monkeypatch):
    """A fresh bucket on the server; the standard AWS variables point boto3 at it."""
    import boto3

    env = {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = "ah-" + uuid.uuid4().hex[:12]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team/blobs"


def _store(url: str, **kw) -> S3BlobStore:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3BlobStore(bucket, prefix, **kw)


def _weights(lora_dir: Path) -> tuple[bytes, str]:
    data = (lora_dir / "adapter_model.safetensors").read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def test_s3_scheme_is_builtin_and_boto3_lazy(s3_url):
    """Server: moto_server on loopback. ``s3://`` opens the built-in store without importing
    boto3 until the store is used; objects sit at PREFIX/sha256/ab/cdef..."""
    code = ("import sys; from adapterhub_sdk.storage import open_blob_store; "
            f"s = open_blob_store({s3_url!r}); assert 'boto3' not in sys.modules, 'boto3 imported'; "
            "print(type(s).__name__, s, s.key('ab' + 62 * '0'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "S3BlobStore" and out[1] == s3_url
    assert out[2] == "team/blobs/sha256/ab/" + 62 * "0"


def test_postgres_s3_publish_and_pull_on_two_machines(registry_url, s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback (and PostgreSQL for the postgres variant). One process
    publishes with --blobs s3://...; another, with another home and ADAPTERHUB_BLOBS, resolves
    and pulls; neither has a local blob directory."""
    env = {"ADAPTERHUB_REGISTRY_URL": registry_url}
    a = {**env, "ADAPTERHUB_HOME": str(tmp_path / "machine-a")}
    run_cli("--blobs", s3_url, "publish", str(lora_dir), "--name", "team/sent", "--version", "1.0.0",
            "--base", str(base_dir), "--task", "sentiment", env=a, check=True)
    b = {**env, "ADAPTERHUB_HOME": str(tmp_path / "machine-b"), "ADAPTERHUB_BLOBS": s3_url}
    res = json.loads(run_cli("resolve", "--base", str(base_dir), "--task", "sentiment", "--json",
                             env=b, check=True).stdout)
    rows = res if isinstance(res, list) else res.get("results", res.get("candidates", []))
    assert [(r["name"], r["version"], r["verdict"]) for r in rows] == [("team/sent", "1.0.0", "exact")]
    out = tmp_path / "pulled"
    run_cli("pull", "team/sent@^1", "--out", str(out), env=b, check=True)
    assert (out / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
    for home in ("machine-a", "machine-b"):
        assert not list((tmp_path / home).rglob("sha256")), f"{home} has a local blob store"
    _, sha = _weights(lora_dir)
    assert _store(s3_url).verify(sha) is None


def test_tampered_object_refused_then_repaired(s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback. An object replaced behind our back is refused on read
    (IntegrityError naming the blob), reported by verify, and publishing again repairs it."""
    import boto3

    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=s3_url)
    try:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
        data, sha = _weights(lora_dir)
        store = reg.blobs
        assert isinstance(store, S3BlobStore)
        boto3.client("s3").put_object(Bucket=store.bucket, Key=store.key(sha), Body=data[:-1] + b"\x00")
        with pytest.raises(IntegrityError, match=f"sha256:{sha[:12]}.*corrupt"):
            reg.pull("team/a@1.0.0", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert [p["problem"] for p in reg.verify().problems] == ["corrupt (digest mismatch)"]
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
        assert reg.verify().problems == []
        reg.pull("team/a@1.0.0", tmp_path / "out")
        assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == data
    finally:
        reg.close()


def test_concurrent_publishers_of_one_blob_write_it_once(s3_url, tmp_path):
    """Server: moto_server on loopback. Eight writers upload the same blob at once, small
    (one PUT) and large (multipart). One PUT: If-None-Match lets exactly one write, the
    others see 412 and verify. Multipart: moto checks the condition of concurrent
    CompleteMultipartUploads without a lock (AWS S3 checks it atomically), so there only
    "intact, and a later writer is refused" is asserted. Either way the object is intact."""
    for size in (100_000, 9 << 20):
        src = tmp_path / f"blob{size}"
        src.write_bytes(os.urandom(size))
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        stores = [_store(s3_url) for _ in range(8)]
        staged = [s.stage(src) for s in stores]
        barrier = threading.Barrier(len(stores))
        written: list[int] = []

        def put(i: int) -> None:
            barrier.wait()  # noqa: B023 - joined below, within the loop
            written.append(stores[i].put_staged(staged[i]))  # noqa: B023

        threads = [threading.Thread(target=put, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if size <= stores[0].part_size:
            assert sorted(written) == [0] * 7 + [size]
        assert size in written
        assert stores[0].verify(sha) is None
        assert stores[0].put_staged(stores[0].stage(src)) == 0  # 412: verified, not overwritten
        assert not any(p.path.exists() for p in staged)


def test_large_blob_goes_up_in_parts(s3_url, tmp_path):
    """Server: moto_server on loopback. A 17 MB file goes up by multipart upload (8 MiB parts:
    the ETag names 3 parts), reads back byte-identical, and leaves no pending upload."""
    src = tmp_path / "big"
    src.write_bytes(os.urandom(17_000_000))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    store = _store(s3_url)
    assert store.put_file(src, sha) == 17_000_000
    head = store.client.head_object(Bucket=store.bucket, Key=store.key(sha))
    assert head["ETag"].strip('"').endswith("-3")
    out = tmp_path / "back"
    with open(out, "wb") as f:
        assert store.copy_verified(sha, f) == 17_000_000
    assert out.read_bytes() == src.read_bytes()
    assert store.put_file(src, sha) == 0
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


@pytest.mark.parametrize("calculation", ["when_supported", "when_required"])
def test_multipart_parts_carry_crc32_unless_configured_off(calculation, s3_url, tmp_path, monkeypatch):
    """Server: moto_server on loopback. Each part goes up with its CRC32, as boto3's transfer
    manager sends it (the server checks every part; the object's checksum is the composite of
    the parts'), unless the standard AWS setting says checksums only when required; either way
    the object reads back intact. (An upload created without an algorithm made the server
    compute a full-object CRC64 over every byte at completion: 1.5x boto3's time at 200 MB.)"""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", calculation)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(9 << 20))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    store = _store(s3_url)
    assert store.put_file(src, sha) == 9 << 20
    head = store.client.head_object(Bucket=store.bucket, Key=store.key(sha), ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2")
    shown = {k: v for k, v in head.items() if k.startswith("Checksum")}
    if calculation == "when_supported":  # the parts' CRC32s, not one the server made up at completion
        assert "ChecksumCRC32" in shown and "ChecksumCRC64NVME" not in shown, shown
    else:
        assert "ChecksumCRC32" not in shown, shown
    assert store.verify(sha) is None


def test_put_file_refuses_bytes_that_do_not_hash_to_the_digest(s3_url, tmp_path):
    """Server: moto_server on loopback. put_file stores exactly what it hashed: a source whose
    bytes are not the digest's (changed while it was stored) is refused and nothing is
    uploaded under that address, from a path or from an open file."""
    import io

    src = tmp_path / "f"
    src.write_bytes(b"the bytes on disk now")
    claimed = hashlib.sha256(b"the bytes that were hashed before").hexdigest()
    store = _store(s3_url)
    for source in (src, io.BytesIO(src.read_bytes()), open(src, "rb")):  # noqa: SIM115 - closed below
        with pytest.raises(IntegrityError, match="content changed while it was stored"):
            store.put_file(source, claimed)
        if hasattr(source, "close"):
            source.close()
        assert not store.has(claimed)
    assert list(store.iter_digests()) == []
    assert not store.client.list_objects_v2(Bucket=store.bucket).get("Contents")
    assert store.put_file(src, hashlib.sha256(src.read_bytes()).hexdigest()) == len(src.read_bytes())


def test_verify_and_gc(s3_url, tmp_path, base_dir, lora_dir, lora_dir_b):
    """Server: moto_server on loopback. gc keeps referenced blobs and unreferenced ones inside
    the grace period (by LastModified), removes the rest; verify names a missing blob."""
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=s3_url)
    try:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
        reg.publish(lora_dir_b, name="team/b", version="1.0.0", base=base_dir)
        assert reg.verify().problems == []
        n = len(list(reg.blobs.iter_digests()))
        reg.delete_version("team/b@1.0.0")
        kept = reg.gc()
        assert (kept.blobs_removed, kept.kept_recent) == (0, 2)
        gone = reg.gc(grace_seconds=0)
        assert gone.blobs_removed == 2 and gone.bytes_freed > 0
        assert len(list(reg.blobs.iter_digests())) == n - 2
        _, sha = _weights(lora_dir)
        reg.blobs.delete(sha)
        assert [(p["sha256"], p["problem"]) for p in reg.verify().problems] == [(sha, "missing")]
    finally:
        reg.close()


class _GcWhileReusing(S3BlobStore):
    """The S3 store, running a whole gc (of another registry object) right after it told a
    publish that a blob is already stored: the worst moment for the publish."""

    gc_registry: ah.Registry

    def holds(self, staged):
        found = super().holds(staged)
        if found:
            self.gc_registry.gc(grace_seconds=0)
        return found


class _PublishDuringQuarantine(S3BlobStore):
    """The S3 store, running a whole publish (another registry object) of the blob gc has
    just moved aside, before gc asks the catalog again."""

    publish: object

    def quarantine(self, digest):
        token = super().quarantine(digest)
        self.publish()
        return token


def test_gc_race_with_a_publish_that_reuses_the_blob(s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback. A gc with no grace races a publish of the same files,
    both interleavings: gc between the publish's dedup check and its commit (the publish finds
    the blob gone after its commit and uploads its staged copy), and a publish between gc's
    quarantine and its second catalog read (gc puts the blob back). Either way the new
    version pulls intact."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ah.Registry.open(url, blobs=s3_url) as reg, ah.Registry.open(url, blobs=s3_url) as other:
        reg.publish(lora_dir, name="team/old", version="1.0.0", base=base_dir)
        reg.delete_version("team/old@1.0.0")  # its blobs are garbage now
        racing = _GcWhileReusing(reg.blobs.bucket, reg.blobs.prefix)
        racing.gc_registry = other
        reg.blobs = racing
        reg.publish(lora_dir, name="team/new", version="1.0.0", base=base_dir)
        assert reg.verify().problems == []
        reg.pull("team/new@1.0.0", tmp_path / "one")

        reg.blobs = _store(s3_url)
        reg.delete_version("team/new@1.0.0")
        quarantining = _PublishDuringQuarantine(reg.blobs.bucket, reg.blobs.prefix)
        quarantining.publish = lambda: other.publish(lora_dir, name="team/again", version="1.0.0", base=base_dir)
        reg.blobs = quarantining
        report = reg.gc(grace_seconds=0)
        assert report.blobs_removed == 0
        reg.blobs = _store(s3_url)
        assert reg.verify().problems == []
        reg.pull("team/again@1.0.0", tmp_path / "two")
        assert not reg.blobs.client.list_objects_v2(Bucket=reg.blobs.bucket, Prefix="team/blobs/gc/").get("Contents")


def _gc_after_reuse(cls: type, registry_url: str, blobs: str, calls: list[str]) -> object:
    """An instance of the blob store class ``cls`` whose ``put_file`` runs ``adapterhub gc
    --grace 0`` in another process right after it first reported a blob already stored (0
    bytes written): the moment between a publish's dedup check and its commit."""

    class GcAfterReuse(cls):  # type: ignore[misc, valid-type]
        def put_file(self, source, digest):
            written = super().put_file(source, digest)
            if written == 0 and not calls:
                run_cli("--registry", registry_url, "--blobs", blobs, "gc", "--grace", "0", check=True)
                calls.append(digest)
            return written

    if cls is S3BlobStore:
        bucket, _, prefix = blobs.removeprefix("s3://").partition("/")
        return GcAfterReuse(bucket, prefix)
    return GcAfterReuse(Path(blobs))


@pytest.mark.parametrize("store", ["s3", "file"])
def test_gc_in_another_process_while_a_package_publish_reuses_a_blob(store, s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback for ``s3``; a local directory for ``file``. Publishing
    an AdapterPackage (the put_file path, no staged copies) reuses the blobs of a deleted
    version; a gc with no grace runs in another process between the first dedup check and the
    commit. Nothing references the blobs yet, but the publish leased them before it looked
    (registry/lifecycle.py): gc keeps them all and the new version pulls intact. (A reused
    blob that went missing all the same is put back after the commit: test_registry's
    test_gc_racing_a_publish_that_reuses_its_blobs_loses_nothing.)"""
    from adapterhub_sdk.blobs import BlobStore

    url = f"sqlite:///{tmp_path / 'r.db'}"
    blobs = s3_url if store == "s3" else str(tmp_path / "blobs")
    with ah.Registry.open(url, blobs=blobs) as reg:
        reg.publish(lora_dir, name="team/old", version="1.0.0", base=base_dir)
        reg.delete_version("team/old@1.0.0")  # its blobs are garbage now
        calls: list[str] = []
        reg.blobs = _gc_after_reuse(S3BlobStore if store == "s3" else BlobStore, url, blobs, calls)
        with ah.pack(lora_dir) as pkg:
            res = reg.publish(pkg, name="team/new", version="1.0.0", base=base_dir)
        assert len(calls) == 1  # the first file was reused, then gc ran
        assert [p["problem"] for p in reg.verify().problems] == []
        assert res.created and res.bytes_written == 0  # leased: gc took none of them
        reg.pull("team/new@1.0.0", tmp_path / "out")
        assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == \
            (lora_dir / "adapter_model.safetensors").read_bytes()


def test_s3_configuration_errors_are_one_line(s3_url, tmp_path, lora_dir):
    """Server: moto_server on loopback. A bucket that does not exist, missing credentials and an
    endpoint nobody listens on are each one line saying what to do (not an internal error),
    and nothing is recorded."""
    home = {"ADAPTERHUB_HOME": str(tmp_path / "home")}
    bucket = s3_url.removeprefix("s3://").split("/", 1)[0]
    cases = [
        (s3_url.replace(bucket, "no-such-bucket-" + uuid.uuid4().hex[:8]), {}, "does not exist; create it"),
        (s3_url, {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                  "AWS_CONFIG_FILE": "/nonexistent"}, "no usable AWS credentials"),
        (s3_url, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the S3 server"),
    ]
    for url, env, says in cases:
        env = {**home, **env}  # boto3 takes an empty variable as unset
        proc = run_cli("--blobs", url, "publish", str(lora_dir), "--name", "team/x", "--version", "1.0.0",
                       env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and says in lines[-1] and "internal error" not in proc.stderr, proc.stderr
        assert lines[-1].startswith("error: ") and url.split("/")[2] in lines[-1]
    assert "team/x" not in run_cli("list", env=home, check=True).stdout


@pytest.mark.parametrize("store", ["s3", "file"])
def test_a_publish_completed_after_gc_read_the_catalog_keeps_its_blobs(store, s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback for ``s3``; a local directory for ``file``. gc reads the
    catalog; then a whole publish of the same files runs (its dedup check, its commit and its
    check after the commit all find the old blobs in place); only then does gc list the store
    and quarantine them. gc's second catalog read sees the new version and puts every blob
    back: nothing is removed and the version pulls intact."""
    from adapterhub_sdk.blobs import BlobStore

    url = f"sqlite:///{tmp_path / 'r.db'}"
    blobs = s3_url if store == "s3" else str(tmp_path / "blobs")
    cls = S3BlobStore if store == "s3" else BlobStore

    class PublishBeforeListing(cls):  # type: ignore[misc, valid-type]
        def iter_digests(self):
            other.publish(lora_dir, name="team/new", version="1.0.0", base=base_dir)
            yield from super().iter_digests()

    with ah.Registry.open(url, blobs=blobs) as reg, ah.Registry.open(url, blobs=blobs) as other:
        reg.publish(lora_dir, name="team/old", version="1.0.0", base=base_dir)
        reg.delete_version("team/old@1.0.0")  # its blobs are garbage now
        n = len(list(reg.blobs.iter_digests()))
        plain = reg.blobs
        reg.blobs = PublishBeforeListing(*s3_url.removeprefix("s3://").partition("/")[::2]) if store == "s3" \
            else PublishBeforeListing(Path(blobs))
        report = reg.gc(grace_seconds=0)
        reg.blobs = plain
        assert (report.blobs_removed, len(list(plain.iter_digests()))) == (0, n)
        assert reg.verify().problems == []
        reg.pull("team/new@1.0.0", tmp_path / "out")


def test_gc_interrupted_in_quarantine_is_undone_by_the_next(s3_url, tmp_path, base_dir, lora_dir):
    """Server: moto_server on loopback. A gc that died after moving a referenced blob to
    PREFIX/gc/ (before its second catalog read) leaves the version without it; the next gc
    puts it back from quarantine (it never deletes a quarantined copy) and the version pulls."""
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=s3_url) as reg:
        reg.publish(lora_dir, name="team/a", version="1.0.0", base=base_dir)
        _, sha = _weights(lora_dir)
        assert reg.blobs.quarantine(sha) is not None  # ... and the gc process is killed here
        assert [p["problem"] for p in reg.verify().problems] == ["missing"]
        assert reg.gc(grace_seconds=0).temp_removed == 1
        assert reg.verify().problems == []
        reg.pull("team/a@1.0.0", tmp_path / "out")
        assert not reg.blobs.client.list_objects_v2(Bucket=reg.blobs.bucket, Prefix="team/blobs/gc/").get("Contents")


STAGE_AND_WAIT = r"""
import sys
from adapterhub_sdk.s3_blobs import S3BlobStore
bucket, _, prefix = sys.argv[1].removeprefix("s3://").partition("/")
staged = S3BlobStore(bucket, prefix).stage(sys.argv[2])
print(staged.path, flush=True)
sys.stdin.read()  # a publish between staging and upload, for as long as the test wants
"""


def test_gc_grace_0_leaves_a_running_publishs_staged_copy_and_removes_a_killed_ones(s3_url, tmp_path, lora_dir):
    """Server: moto_server on loopback. A live process holds a staged copy (as a publish does
    between staging and upload): ``gc --grace 0`` leaves it (before: removed from under the
    publish, which then failed); once that process is killed, the next gc removes it."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", STAGE_AND_WAIT, s3_url, str(lora_dir / "adapter_model.safetensors")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        staged = Path(proc.stdout.readline().strip())
        assert staged.is_file(), staged
        with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=s3_url) as reg:
            reg.gc(grace_seconds=0)
            assert staged.is_file(), "gc --grace 0 removed a running publish's staged copy"
            r = run_cli("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", s3_url, "gc", "--grace", "0",
                        "--json", check=True)
            assert staged.is_file() and json.loads(r.stdout)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            assert reg.gc(grace_seconds=0).temp_removed >= 1
            assert not staged.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

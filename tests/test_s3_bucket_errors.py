"""A blob URL naming an S3 bucket that does not exist (a typo, other letter case) is one
line on every read path, as publish, gc and serve already said: pull, verify, load_adapter
and attach (CLI and Python), never "none of the N files" or one line per blob. A bucket
that exists but lacks an object still reports that object as missing.

Every test runs against moto_server on loopback (the fixtures of tests/test_s3_blobs.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from test_s3_blobs import pytestmark, s3_endpoint, s3_url  # noqa: F401 - the moto fixtures, and its skip

import adapterhub_sdk as ah
from adapterhub_sdk.errors import NotFoundError, RegistryError

from conftest import run_cli

REF = "acme/sentiment@1.0.0"


@pytest.fixture
def published(s3_url, tmp_path, base_dir, lora_dir):  # noqa: F811 - the fixture imported above
    """A SQLite catalog with REF published into the real bucket; (catalog URL, real blob URL)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with ah.Registry.open(url, blobs=s3_url) as reg:
        reg.publish(lora_dir, name="acme/sentiment", version="1.0.0", base=base_dir)
    return url, s3_url


def _wrong_buckets(s3_url: str) -> list[str]:  # noqa: F811
    bucket = s3_url.removeprefix("s3://").split("/", 1)[0]
    return ["s3://nobucket-" + uuid.uuid4().hex[:8] + "/x", s3_url.replace(bucket, bucket.upper(), 1)]


def _says_no_bucket(proc, blobs: str, s3_endpoint: str) -> None:  # noqa: F811
    bucket = blobs.removeprefix("s3://").split("/", 1)[0]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines == [f"error: the S3 bucket of {blobs} (endpoint {s3_endpoint}) does not exist; create it "
                     f"(aws s3 mb s3://{bucket}) or fix --blobs / ADAPTERHUB_BLOBS"], proc.stderr


def test_cli_pull_and_verify_from_a_bucket_that_does_not_exist(published, s3_endpoint, tmp_path):  # noqa: F811
    """Server: moto_server on loopback. pull and verify with --blobs naming a bucket that does
    not exist (another name, the right name in capitals) exit 1 with the bucket line alone;
    pull writes nothing."""
    url, real = published
    for blobs in _wrong_buckets(real):
        out = tmp_path / "zz"
        _says_no_bucket(run_cli("--registry", url, "--blobs", blobs, "pull", REF, "--out", str(out)),
                        blobs, s3_endpoint)
        assert not out.exists()
        _says_no_bucket(run_cli("--registry", url, "--blobs", blobs, "verify"), blobs, s3_endpoint)
    run_cli("--registry", url, "--blobs", real, "verify", check=True)


def test_cli_serve_from_a_bucket_that_does_not_exist(published, s3_endpoint, base_dir):  # noqa: F811
    """Server: moto_server on loopback. serve attaching a version from a bucket that does not
    exist exits 1 with the bucket line alone, before loading the base (found by a user-style
    check: the base loaded first, minutes for a large one, before the error)."""
    url, real = published
    blobs = _wrong_buckets(real)[0]
    proc = run_cli("--registry", url, "--blobs", blobs, "serve", "--base", str(base_dir), "--adapter", REF,
                   "--port", "0")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: the S3 bucket of {blobs} (endpoint "), \
        proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert "Loading weights" not in proc.stderr, proc.stderr  # told before the model load


def test_python_pull_verify_load_and_attach_from_a_bucket_that_does_not_exist(published, tmp_path, base_dir):
    """Server: moto_server on loopback. Registry.pull, Registry.verify, ah.load_adapter of a
    spec and Deployment.attach raise the bucket RegistryError (one line, what to do)."""
    from transformers import AutoModelForCausalLM

    url, real = published
    blobs = _wrong_buckets(real)[1]
    says = r"the S3 bucket of s3://AH-.* does not exist"
    with ah.Registry.open(url, blobs=blobs) as reg:
        with pytest.raises(RegistryError, match=says) as caught:
            reg.pull(REF, tmp_path / "zz")
        assert not isinstance(caught.value, NotFoundError) and "\n" not in str(caught.value)
        assert "aws s3 mb" in (caught.value.hint or "")
        with pytest.raises(RegistryError, match=says):
            reg.verify()
        with pytest.raises(RegistryError, match=says):
            ah.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), REF, registry=reg)
        with pytest.raises(RegistryError, match=says):
            ah.Deployment(str(base_dir), registry=reg).attach(REF)
    assert not (tmp_path / "zz").exists()


def test_a_missing_object_in_a_bucket_that_exists_is_still_missing(published, tmp_path, lora_dir):
    """Server: moto_server on loopback. With the bucket in place, one deleted object is reported
    as missing (verify names it; pull says which blob and how to restore it), and a store
    with none of a version's objects still says the blobs are probably elsewhere."""
    import hashlib

    url, real = published
    with ah.Registry.open(url, blobs=real) as reg:
        sha = hashlib.sha256((lora_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
        reg.blobs.delete(sha)
        assert [p["problem"] for p in reg.verify().problems] == ["missing"]
        with pytest.raises(NotFoundError, match=f"blob sha256:{sha[:12]} is missing from {real}"):
            reg.pull(REF, tmp_path / "zz")
    proc = run_cli("--registry", url, "--blobs", real, "verify")
    assert proc.returncode == 1 and "missing" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    empty = real + "/elsewhere"
    proc = run_cli("--registry", url, "--blobs", empty, "pull", REF, "--out", str(tmp_path / "zz"))
    assert proc.returncode == 1 and "none of the 3 files of acme/sentiment@1.0.0 is in the blob store" in \
        proc.stderr, proc.stderr
    assert not Path(tmp_path / "zz").exists()


def test_cli_verify_without_credentials_or_endpoint_is_one_line(published):
    """Server: moto_server on loopback (then nobody, on port 9). verify with no usable
    credentials, or an endpoint nobody listens on, says so once (exit 1), not once per blob."""
    url, real = published
    cases = [({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
               "AWS_CONFIG_FILE": "/nonexistent"}, "error: no usable AWS credentials for " + real),
             ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
              f"error: cannot reach the S3 server of {real} (endpoint http://127.0.0.1:9)")]
    for env, says in cases:
        proc = run_cli("--registry", url, "--blobs", real, "verify", env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(says), proc.stderr
        assert "unreadable" not in proc.stdout, proc.stdout


def test_a_botocore_without_conditional_copies_is_refused_in_one_line(monkeypatch):
    """botocore before 1.41 has no IfNoneMatch on CopyObject (before 1.35, none on PutObject
    either): every publish, or gc's put-back of a quarantined blob, failed mid-way with
    botocore's parameter error. The store now refuses such a botocore up front, saying what to
    install; the extra's floor says the same. (An old botocore cannot be installed beside the
    suite's own: its version string is set here, the check reads nothing else.)"""
    import botocore
    import tomllib

    from adapterhub_sdk.s3_blobs import BOTOCORE_MIN, S3BlobStore

    monkeypatch.setattr(botocore, "__version__", "1.40.0")
    with pytest.raises(RegistryError, match=r"botocore 1\.41 or newer .*this is 1\.40\.0") as info:
        S3BlobStore._make_client()
    assert "boto3>=1.41" in info.value.hint and "\n" not in str(info.value)
    monkeypatch.setattr(botocore, "__version__", "1.41.0")
    assert S3BlobStore._make_client() is not None
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    floor = ".".join(map(str, BOTOCORE_MIN))
    assert f"boto3>={floor}" in project["project"]["optional-dependencies"]["s3"][0]


def test_an_endpoint_that_answers_http_but_not_as_s3_is_named_as_such(published, tmp_path):
    """Server: moto_server on loopback, then a plain HTTP server (Python's http.server, a real
    process) as AWS_ENDPOINT_URL. Its 404s carry no S3 error code: the store says the endpoint
    is not an S3 server. Before: 'the S3 bucket ... does not exist; create it (aws s3 mb ...)',
    advice that fails too."""
    import subprocess
    import sys

    from conftest import free_port, wait_listening

    url, real = published
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, srv, "http.server")
        for args in (["verify"], ["pull", REF, "--out", str(tmp_path / "out")]):
            proc = run_cli("--registry", url, "--blobs", real, *args,
                           env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"})
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1, proc.stderr
            assert "answers, but not as an S3 server" in lines[0] and "aws s3 mb" not in lines[0], lines[0]
        assert not (tmp_path / "out").exists()
    finally:
        srv.kill()
        srv.wait()

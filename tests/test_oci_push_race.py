"""Two ``adapterhub push`` commands of different content to one OCI tag at once: the one
whose content the tag does not hold is told so (exit 1, one line naming the digest the tag
holds), never "pushed". The distribution API has no conditional PUT on tags, so a push asks
again right before its manifest PUT (after the uploads, the long window) and reads the tag
back after it. Real CLI subprocesses against a real docker-registry, each behind a loopback
proxy that holds one request until the other push has reached a given point, so the
interleavings are forced, not hoped for."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
from ociserver import REGISTRY, SKIP_REASON, LoopbackHTTP

from adapterhub_sdk.oci.client import OciClient

from conftest import ADAPTERHUB, run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)

WAIT = 120  # seconds an event is waited for before the interleaving counts as not forced (a failure)

Hook = Callable[[str, str], None]


class HoldingProxy(LoopbackHTTP):
    """Forwards every request to the registry (Host kept, so the upload locations the registry
    answers name this proxy); ``before(method, path)`` runs before a request goes on,
    ``after(method, path)`` once the registry has answered it and before the client hears."""

    def __init__(self, upstream: str, before: Hook | None = None, after: Hook | None = None):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                body = self._body()
                if before:
                    before(self.command, self.path)
                conn = http.client.HTTPConnection(upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "PATCH", "POST")
                             else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if after:
                    after(self.command, self.path)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.getheader("content-length") or str(len(data))
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *a):
                pass

        self._serve(Handler)


def _wait(ev: threading.Event, missed: list[str], name: str) -> None:
    if not ev.wait(WAIT):
        missed.append(name)


def _homes(tmp_path, base_dir, lora_dir, lora_dir_b, version: str) -> tuple[dict, dict]:
    """Two machines' homes, each with different content published as acme/race@version."""
    envs = []
    for who, src in (("a", lora_dir), ("b", lora_dir_b)):
        env = {"ADAPTERHUB_HOME": str(tmp_path / f"home_{who}")}
        run_cli("publish", str(src), "--name", "acme/race", "--version", version, "--base", str(base_dir),
                env=env, check=True)
        envs.append(env)
    return envs[0], envs[1]


def _push(host: str, repo: str, version: str, env: dict, *extra: str) -> subprocess.Popen:
    import os

    return subprocess.Popen([ADAPTERHUB, "push", f"acme/race@{version}", "--to", f"oci://{host}/{repo}",
                             "--insecure", *extra], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _tag(oci, repo: str, version: str) -> str | None:
    with OciClient(oci.host, insecure=True) as c:
        return c.head_manifest(repo, version)


def test_a_push_whose_tag_was_taken_while_it_uploaded_is_refused(oci, tmp_path, base_dir, lora_dir, lora_dir_b):
    """A checks the tag (free) and starts uploading; B pushes the whole version meanwhile; A's
    manifest PUT would overwrite B's. A is refused instead, and the tag keeps B's content."""
    repo, version = "race/uploads", "1.0.0"
    env_a, env_b = _homes(tmp_path, base_dir, lora_dir, lora_dir_b, version)
    held, release, missed = threading.Event(), threading.Event(), []

    def before(method: str, path: str) -> None:
        if method == "POST" and "/blobs/uploads/" in path and not held.is_set():  # A's first upload: after its check
            held.set()
            _wait(release, missed, "B done")

    proxy = HoldingProxy(oci.host, before=before)
    try:
        a = _push(proxy.host, repo, version, env_a)
        _wait(held, missed, "A uploading")
        b = run_cli("push", f"acme/race@{version}", "--to", f"oci://{oci.host}/{repo}", "--insecure", "--json",
                    env=env_b)
        release.set()
        out_a, err_a = a.communicate(timeout=300)
    finally:
        release.set()
        proxy.stop()
    assert missed == []
    assert b.returncode == 0, b.stderr
    pushed_b = json.loads(b.stdout)
    assert pushed_b["created"] is True
    assert _tag(oci, repo, version) == pushed_b["digest"]  # B's content, not overwritten
    assert a.returncode == 1 and "pushed" not in out_a, out_a + err_a
    assert err_a.count("\n") == 1
    assert f"already holds other content ({pushed_b['digest'][:19]}, not sha256:" in err_a
    assert "while this one uploaded its files; this push tagged nothing" in err_a


def test_a_push_whose_manifest_was_overwritten_by_a_concurrent_one_is_told(oci, tmp_path, base_dir, lora_dir,
                                                                          lora_dir_b):
    """Both pushes find the tag free right up to their manifest PUTs; A's PUT lands first, B's
    after it. B holds the tag and says pushed; A reads the tag back and says it holds B's
    content, not its own (exit 1), instead of "pushed"."""
    repo, version = "race/puts", "1.0.0"
    env_a, env_b = _homes(tmp_path, base_dir, lora_dir, lora_dir_b, version)
    b_arrived, a_done, b_done, missed = threading.Event(), threading.Event(), threading.Event(), []
    tag_put = f"/v2/{repo}/manifests/{version}"

    def before_b(method: str, path: str) -> None:
        if method == "PUT" and path == tag_put:  # B has checked the tag (free) just before: now A's PUT first
            b_arrived.set()
            _wait(a_done, missed, "A's PUT")

    def after_b(method: str, path: str) -> None:
        if method == "PUT" and path == tag_put:
            b_done.set()

    def before_a(method: str, path: str) -> None:
        if method == "PUT" and path == tag_put:  # both past their checks before either PUT lands
            _wait(b_arrived, missed, "B's PUT")

    def after_a(method: str, path: str) -> None:
        if method == "PUT" and path == tag_put:  # A's manifest is in; A hears so only once B's is too
            a_done.set()
            _wait(b_done, missed, "B's PUT done")

    pa = HoldingProxy(oci.host, before=before_a, after=after_a)
    pb = HoldingProxy(oci.host, before=before_b, after=after_b)
    try:
        a = _push(pa.host, repo, version, env_a)
        b = _push(pb.host, repo, version, env_b, "--json")
        out_a, err_a = a.communicate(timeout=300)
        out_b, err_b = b.communicate(timeout=300)
    finally:
        for ev in (b_arrived, a_done, b_done):
            ev.set()
        pa.stop()
        pb.stop()
    assert missed == []
    assert b.returncode == 0, err_b
    pushed_b = json.loads(out_b)
    assert pushed_b["created"] is True
    assert _tag(oci, repo, version) == pushed_b["digest"]
    assert a.returncode == 1 and "pushed" not in out_a, out_a + err_a
    assert err_a.count("\n") == 1
    assert f"holds other content ({pushed_b['digest'][:19]}, not sha256:" in err_a
    assert "another push of this version wrote the tag at the same time, after this one" in err_a


def test_concurrent_pushes_of_the_same_version_both_succeed(oci, tmp_path, base_dir, lora_dir):
    """The same version pushed twice at once (one home, two shells: the same manifest bytes),
    the second push's tag landing while the first uploads: the first finds its own manifest
    there and reports it unchanged, not a conflict."""
    repo, version = "race/same", "1.0.0"
    env = {"ADAPTERHUB_HOME": str(tmp_path / "home_a")}
    run_cli("publish", str(lora_dir), "--name", "acme/race", "--version", version, "--base", str(base_dir),
            env=env, check=True)
    envs = [env, env]
    held, release, missed = threading.Event(), threading.Event(), []

    def before(method: str, path: str) -> None:
        if method == "POST" and "/blobs/uploads/" in path and not held.is_set():
            held.set()
            _wait(release, missed, "B done")

    proxy = HoldingProxy(oci.host, before=before)
    try:
        a = _push(proxy.host, repo, version, envs[0], "--json")
        _wait(held, missed, "A uploading")
        b = run_cli("push", f"acme/race@{version}", "--to", f"oci://{oci.host}/{repo}", "--insecure", "--json",
                    env=envs[1], check=True)
        release.set()
        out_a, err_a = a.communicate(timeout=300)
    finally:
        release.set()
        proxy.stop()
    assert missed == []
    assert a.returncode == 0, err_a
    pushed_a, pushed_b = json.loads(out_a), json.loads(b.stdout)
    assert pushed_a["digest"] == pushed_b["digest"] == _tag(oci, repo, version)
    assert pushed_b["created"] is True and pushed_a["created"] is False


def test_a_concurrent_put_still_in_flight_at_the_first_read_back_is_caught_by_the_second(
        oci, tmp_path, base_dir, lora_dir, lora_dir_b):
    """Both PUTs reach the registry together; A's lands first and A's first read-back sees its
    own manifest, B's lands just after (the registry takes a while over each PUT). A reads the
    tag back again after its PUT's time has passed twice, finds B's, and says so (exit 1)."""
    repo, version = "race/inflight", "1.0.0"
    env_a, env_b = _homes(tmp_path, base_dir, lora_dir, lora_dir_b, version)
    b_arrived, a_first, b_done, missed = threading.Event(), threading.Event(), threading.Event(), []
    tag_path = f"/v2/{repo}/manifests/{version}"
    a_put = threading.Event()
    heads_after_put: list[str] = []

    def before_b(method: str, path: str) -> None:
        if method == "PUT" and path == tag_path:  # in flight: lands once A has read the tag back once
            b_arrived.set()
            _wait(a_first, missed, "A's first read-back")

    def after_b(method: str, path: str) -> None:
        if method == "PUT" and path == tag_path:
            b_done.set()

    def before_a(method: str, path: str) -> None:
        if method == "PUT" and path == tag_path:
            _wait(b_arrived, missed, "B's PUT")  # both past their checks
        elif method == "HEAD" and path == tag_path and a_put.is_set():
            heads_after_put.append(path)
            if len(heads_after_put) == 2:  # the second read-back: by now B's PUT has landed
                _wait(b_done, missed, "B's PUT landed")

    def after_a(method: str, path: str) -> None:
        if method == "PUT" and path == tag_path:
            a_put.set()
        elif method == "HEAD" and path == tag_path and len(heads_after_put) == 1:
            a_first.set()  # A's first read-back has its answer (A's own manifest)

    pa = HoldingProxy(oci.host, before=before_a, after=after_a)
    pb = HoldingProxy(oci.host, before=before_b, after=after_b)
    try:
        a = _push(pa.host, repo, version, env_a)
        b = _push(pb.host, repo, version, env_b, "--json")
        out_a, err_a = a.communicate(timeout=300)
        out_b, err_b = b.communicate(timeout=300)
    finally:
        for ev in (b_arrived, a_first, b_done):
            ev.set()
        pa.stop()
        pb.stop()
    assert missed == []
    assert b.returncode == 0, err_b
    pushed_b = json.loads(out_b)
    assert _tag(oci, repo, version) == pushed_b["digest"]
    assert len(heads_after_put) == 2
    assert a.returncode == 1 and "pushed" not in out_a, out_a + err_a
    assert err_a.count("\n") == 1
    assert f"holds other content ({pushed_b['digest'][:19]}, not sha256:" in err_a

"""A pull whose connection dies in the middle of a layer (a real docker-registry behind a
loopback proxy that cuts the body after K bytes) is a transport failure, told as one (how
many bytes of how many arrived; retry), with nothing recorded, never the tamper message;
a whole body of other bytes still is. And the unreachable-registry hint names --insecure
only where it was not given."""

from __future__ import annotations

import http.client
import socket
import struct
from http.server import BaseHTTPRequestHandler

import pytest
from ociserver import REGISTRY, SKIP_REASON, LoopbackHTTP, free_port

from adapterhub_sdk.errors import IntegrityError
from adapterhub_sdk.oci.client import OciUnavailableError
from adapterhub_sdk.oci.remote import OciRemote

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)

K = 1000  # body bytes the proxy lets through before it cuts


def _ask(upstream: str, req: BaseHTTPRequestHandler) -> tuple[http.client.HTTPResponse, bytes]:
    """Send ``req`` on to the registry at ``upstream``: its response and whole body."""
    conn = http.client.HTTPConnection(upstream, timeout=10)
    conn.request(req.command, req.path, headers={k: v for k, v in req.headers.items() if k.lower() != "host"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


class CuttingProxy(LoopbackHTTP):
    """Forwards GET and HEAD to a registry; the GET of blob ``target`` is answered per ``mode``:
    ``fin`` (its Content-Length, K bytes, then closed), ``reset`` (K bytes, then a TCP reset),
    ``unlength`` (no Content-Length, K bytes, then closed), ``short`` (a whole response of the
    blob's first K bytes: what a registry with a truncated blob in storage sends)."""

    def __init__(self, upstream: str):
        proxy = self
        self.target, self.mode, self.cuts = "", "fin", 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self._forward()

            def do_GET(self):
                self._forward()

            def _forward(self):
                resp, body = _ask(upstream, self)
                cut = self.command == "GET" and self.path.endswith("/blobs/" + proxy.target)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                if not cut:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                proxy.cuts += 1
                mode = proxy.mode
                if mode == "fin" or mode == "reset":
                    self.send_header("Content-Length", str(len(body)))
                elif mode == "short":
                    self.send_header("Content-Length", str(K))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[:K])
                self.wfile.flush()
                self.close_connection = True
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()

            def log_message(self, *a):
                pass

        self._serve(Handler)


@pytest.fixture
def proxy(oci):
    p = CuttingProxy(oci.host)
    yield p
    p.stop()


def _nothing_recorded(puller, tmp_path) -> None:
    assert not (tmp_path / "out").exists()
    assert puller.list() == []
    assert list(puller.blobs.iter_digests()) == []
    assert list((tmp_path / "other-blobs" / "tmp").iterdir()) == []


def test_a_body_cut_short_is_a_transport_failure_with_nothing_recorded(oci, reg, other, proxy, tmp_path,
                                                                       base_dir, lora_dir):
    reg.publish(lora_dir, name="acme/cut", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/cut@1.0.0", f"oci://{oci.host}/acme/cut")
    weights = next(f for f in reg.show("acme/cut@1.0.0").manifest.files if f.path == "adapter_model.safetensors")
    assert weights.size > K
    proxy.target = "sha256:" + weights.sha256
    ref = f"oci://{proxy.host}/acme/cut:1.0.0"
    for mode, cause in (("fin", "IncompleteRead"), ("reset", "ConnectionResetError"), ("unlength", None)):
        proxy.mode = mode
        with pytest.raises(OciUnavailableError) as exc:
            OciRemote(insecure=True).pull(other, ref, tmp_path / "out")
        msg = str(exc.value)
        assert "\n" not in msg and "tamper" not in msg + exc.value.hint
        assert f"the connection to {proxy.host} closed after " in msg and f" of {weights.size} bytes" in msg
        if mode != "reset":  # a reset may discard bytes the kernel held for the reader
            assert f"closed after {K} of {weights.size} bytes" in msg
        if cause:
            assert f"({cause})" in msg
        assert exc.value.hint == "nothing was recorded; retry"
        _nothing_recorded(other, tmp_path)
    proxy.mode = "short"  # a whole response, shorter than the layer: the registry's storage, not the wire
    with pytest.raises(IntegrityError, match=f"the registry sent {K} bytes for a blob of {weights.size}") as exc:
        OciRemote(insecure=True).pull(other, ref, tmp_path / "out")
    assert "tampered" in exc.value.hint
    _nothing_recorded(other, tmp_path)
    assert proxy.cuts == 4
    proxy.target = ""  # the same pull, uncut: the retry the message asks for works
    assert OciRemote(insecure=True).pull(other, ref, tmp_path / "out").version == "1.0.0"


def test_the_insecure_hint_only_where_insecure_was_not_given(tmp_path):
    ref = f"oci://127.0.0.1:{free_port()}/x:1.0.0"
    given = run_cli("pull", ref, "--insecure")
    assert given.returncode == 1 and given.stderr.count("\n") == 1
    assert "is not reachable (ConnectionRefusedError)" in given.stderr and "insecure" not in given.stderr
    assert given.stderr.rstrip().endswith("check the host and port")
    https = run_cli("pull", ref)  # HTTPS: the hint may be the cure
    assert https.returncode == 1 and https.stderr.count("\n") == 1
    assert https.stderr.rstrip().endswith("a plain-HTTP registry (one on loopback) needs --insecure "
                                          f"(in Python: ADAPTERHUB_OCI_INSECURE={ref[6:].split('/')[0]})")


class DigestlessProxy(LoopbackHTTP):
    """Forwards HEAD and GET to a registry, without the Docker-Content-Digest header (which
    the distribution spec only says a registry SHOULD send)."""

    def __init__(self, upstream: str):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                resp, body = _ask(upstream, self)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                         "docker-content-digest"):
                        self.send_header(k, v)
                length = resp.getheader("content-length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def log_message(self, *a):
                pass

        self._serve(Handler)


def test_a_tag_whose_head_names_no_digest_is_still_never_overwritten(oci, reg, other, base_dir, lora_dir,
                                                                     lora_dir_b):
    """Without Docker-Content-Digest on the HEAD, the tag's manifest is fetched and hashed: a
    push of other content under the same version is refused, not taken for a first push."""
    from adapterhub_sdk.errors import VersionConflictError

    repo = "t/digestless"
    reg.publish(lora_dir, name="acme/d", version="1.0.0", base=base_dir)
    first = OciRemote(insecure=True).push(reg, "acme/d@1.0.0", f"oci://{oci.host}/{repo}")
    other.publish(lora_dir_b, name="acme/d", version="1.0.0", base=base_dir)
    p = DigestlessProxy(oci.host)
    try:
        with pytest.raises(VersionConflictError, match="already holds other content"):
            OciRemote(insecure=True).push(other, "acme/d@1.0.0", f"oci://{p.host}/{repo}")
        again = OciRemote(insecure=True).push(reg, "acme/d@1.0.0", f"oci://{p.host}/{repo}")  # the same: a no-op
        assert again.commit == first.commit and not again.created
    finally:
        p.stop()
    from adapterhub_sdk.oci.client import OciClient

    with OciClient(oci.host, insecure=True) as c:
        assert c.get_manifest(repo, "1.0.0")[1] == first.commit  # still the first push's content

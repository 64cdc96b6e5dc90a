"""The OCI client's standard-library HTTP (adapterhub_sdk/oci/http.py) against real loopback
servers: a redirect to another origin (a registry's storage) is followed without the
credentials, a kept-alive connection the server closed is replaced, a response not read to
its end is not reused, a refused connection is one TransportError, and a body the connection
cut short is a BodyCutError (bytes received, bytes announced), never a short body returned whole."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapterhub_sdk.oci.http import BodyCutError, Client, TransportError


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def storage():
    seen: list[dict[str, str]] = []

    class Storage(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b"blob bytes" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = _serve(Storage)
    srv.seen = seen  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()


@pytest.fixture
def registry(storage):
    hits: list[str] = []

    class Registry(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            hits.append(self.path)
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{storage.server_address[1]}/data")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/close":
                body = b"bye"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
            elif self.path in ("/cut", "/chunked-cut"):  # the connection dies 1 MiB into a 3 MiB body
                self.send_response(200)
                if self.path == "/cut":
                    self.send_header("Content-Length", str(3 << 20))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                body = b"x" * (1 << 20)
                self.wfile.write(body if self.path == "/cut" else b"%x\r\n%s\r\n" % (len(body), body))
                self.close_connection = True
            else:
                body = b"x" * (3 << 20)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(3 << 20))
            self.end_headers()

        def handle_one_request(self):
            try:
                super().handle_one_request()
            except ConnectionError:  # the client dropped a half-read response, as it should
                self.close_connection = True

        def log_message(self, *a):
            pass

    srv = _serve(Registry)
    srv.hits = hits  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()


def test_a_redirect_to_another_origin_drops_the_credentials(registry, storage):
    c = Client(timeout=10)
    try:
        base = f"http://127.0.0.1:{registry.server_address[1]}"
        resp = c.send("GET", base + "/redirect", headers={"Authorization": "Bearer secret"}, stream=True)
        assert resp.status_code == 200
        assert b"".join(resp.iter_raw()) == b"blob bytes" * 1000
        assert storage.seen and all("authorization" not in h for h in storage.seen)
    finally:
        c.close()


def test_connections_are_reused_replaced_and_never_reused_half_read(registry):
    c = Client(timeout=10)
    base = f"http://127.0.0.1:{registry.server_address[1]}"
    try:
        assert c.send("GET", base + "/close").content == b"bye"  # the server closes it: not kept
        assert c.send("GET", base + "/big").content == b"x" * (3 << 20)  # a new one, kept
        kept = next(iter(c._idle.values()))
        kept.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout would: the next request retries
        assert len(c.send("GET", base + "/big").content) == 3 << 20
        half = c.send("GET", base + "/big", stream=True)
        next(half.iter_raw(1024))
        half.close()  # not read to its end: dropped, not returned to the pool
        assert c._idle == {}
        head = c.send("HEAD", base + "/big")  # no body read for a HEAD, whatever its Content-Length
        assert head.status_code == 200 and head.headers.get("content-length") == str(3 << 20)
        assert c.send("GET", base + "/close").content == b"bye"
    finally:
        c.close()


def test_a_body_cut_short_is_a_body_cut_error_saying_how_much_arrived(registry):
    c = Client(timeout=10)
    base = f"http://127.0.0.1:{registry.server_address[1]}"
    origin = f"127.0.0.1:{registry.server_address[1]}"
    try:
        with pytest.raises(BodyCutError, match=f"the connection to {origin} closed after {1 << 20} of {3 << 20}") \
                as exc:
            b"".join(c.send("GET", base + "/cut", stream=True).iter_raw())
        assert (exc.value.received, exc.value.expected, exc.value.cause) == (1 << 20, 3 << 20, "IncompleteRead")
        with pytest.raises(BodyCutError, match=f"closed after {1 << 20} of {3 << 20} bytes"):
            c.send("GET", base + "/cut")  # read whole
        with pytest.raises(BodyCutError, match=f"closed after {1 << 20} bytes") as exc:  # no length announced
            b"".join(c.send("GET", base + "/chunked-cut", stream=True).iter_raw())
        assert exc.value.expected is None
        assert c._idle == {}
        assert c.send("GET", base + "/close").content == b"bye"
    finally:
        c.close()


def test_a_refused_connection_is_a_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        Client(timeout=5).send("GET", f"http://127.0.0.1:{port}/v2/")


def test_an_http_proxy_from_the_environment_is_used_and_no_proxy_honoured(monkeypatch):
    import base64

    seen: list[tuple[str, str | None]] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append((self.path, self.headers.get("Proxy-Authorization")))
            body = b"via proxy"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    proxy = _serve(Proxy)
    try:
        for k in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://al%40ice:pw@127.0.0.1:{proxy.server_address[1]}")
        assert Client(timeout=10).send("GET", "http://registry.invalid:5000/v2/").content == b"via proxy"
        assert seen == [("http://registry.invalid:5000/v2/", "Basic " + base64.b64encode(b"al@ice:pw").decode())]
        monkeypatch.setenv("NO_PROXY", "registry.invalid")  # straight to the (unresolvable) host: not the proxy
        with pytest.raises(TransportError):
            Client(timeout=5).send("GET", "http://registry.invalid:5000/v2/")
        assert len(seen) == 1
    finally:
        proxy.shutdown()


def test_a_body_that_stalls_is_told_as_a_stall_not_a_closed_connection():
    """A server that sends part of a body and then goes quiet: the read times out while the
    connection is still open. It was reported as 'the connection ... closed after 0 of N
    bytes'; it says the connection stalled."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    release = threading.Event()

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
        release.wait(10)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    c = Client(timeout=0.5)
    try:
        with pytest.raises(BodyCutError, match="stalled .no data within the timeout. after") as exc:
            b"".join(c.send("GET", f"http://127.0.0.1:{srv.getsockname()[1]}/blob", stream=True).iter_raw())
        assert "closed" not in str(exc.value) and exc.value.expected == 5000
    finally:
        release.set()
        c.close()
        srv.close()


def test_a_server_that_is_no_oci_registry_is_named_as_such(tmp_path):
    """A pull from a port where another HTTP server listens said the repository had no tags
    ('nothing pushed there yet?'); it now says the host does not answer as an OCI registry."""
    from http.server import SimpleHTTPRequestHandler

    from adapterhub_sdk.errors import NotFoundError
    from adapterhub_sdk.oci.remote import OciRemote

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = _serve(lambda *a, **k: Quiet(*a, directory=str(tmp_path), **k))
    try:
        with pytest.raises(NotFoundError, match=r"does not answer as an OCI registry \(GET /v2/ answered 404\)") as e:
            OciRemote(insecure=True).pull(None, f"oci://127.0.0.1:{srv.server_address[1]}/team/x:1.0.0")
        assert "host and port" in e.value.hint
    finally:
        srv.shutdown()
        srv.server_close()

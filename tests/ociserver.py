"""A real OCI registry for tests: the CNCF distribution registry that Debian packages
(``apt-get install docker-registry``, tested with 2.8.2), run on loopback with filesystem
storage in a temporary directory, optionally behind htpasswd (bcrypt) basic auth.

    from ociserver import start_registry
    srv = start_registry(tmp_path / "oci")                   # srv.host == "127.0.0.1:PORT"
    srv = start_registry(tmp_path / "oci", users={"alice": "pw"})     # Basic auth (htpasswd)
    tok = TokenService(tmp_path / "oci", {"alice": "pw"})             # Bearer tokens
    srv = start_registry(tmp_path / "oci", token=tok)
    srv.blob_path("sha256:...")                              # a blob's data file in storage
    srv.stop()

Startup takes well under a second; tests that change the storage (tamper) start their own.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = shutil.which("docker-registry")
SKIP_REASON = "docker-registry (CNCF distribution) is not installed: apt-get install docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackHTTP:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread (the tests'
    proxies in front of a registry): ``host`` is ``127.0.0.1:PORT``."""

    def _serve(self, handler: type) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class OciServer:
    host: str
    root: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class TokenService:
    """A Docker-style token service (the one Harbor, GHCR and Docker Hub run) for the
    registry's ``auth.token`` mode: ``GET /token?service=&scope=`` with Basic credentials
    answers a JWT (ES256, its certificate in the ``x5c`` header, issued by a key whose
    certificate is the registry's ``rootcertbundle``) granting the scope's actions to a
    known user; no credentials get an anonymous token that grants nothing; wrong ones 401."""

    def __init__(self, workdir: Path, users: dict[str, str]):
        import datetime
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.bundle = workdir / "token-root.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.users = users
        self.service, self.issuer = "test-registry", "test-issuer"
        self.requests: list[tuple[str | None, str]] = []  # (user or None, scope) per token asked
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                import base64
                import urllib.parse

                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if svc.users.get(user) != pw:
                        self.send_response(401)
                        self.end_headers()
                        return
                scopes = q.get("scope") or []
                svc.requests += [(user, sc) for sc in scopes]
                body = json.dumps({"token": svc.token(user, scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, user: str | None, scopes: list[str]) -> str:
        import base64
        import secrets

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        access = []
        for scope in scopes if user is not None else ():
            if scope.startswith("repository:"):
                _, repo, actions = scope.split(":", 2)
                access.append({"type": "repository", "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_registry(workdir: Path, *, users: dict[str, str] | None = None,
                   token: TokenService | None = None) -> OciServer:
    if REGISTRY is None:
        raise RuntimeError(SKIP_REASON)
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
             "  filesystem:", f"    rootdirectory: {root}", "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}"]
    if users:
        import bcrypt

        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                    for u, p in users.items()))
        lines += ["auth:", "  htpasswd:", "    realm: test-registry", f"    path: {htpasswd}"]
    if token is not None:
        lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                  f"    issuer: {token.issuer}", f"    rootcertbundle: {token.bundle}"]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    srv = OciServer(f"127.0.0.1:{port}", root, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{srv.url}/v2/", timeout=1).close()
            return srv
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return srv
        except OSError:
            pass
        time.sleep(0.05)
    srv.stop()
    raise RuntimeError("docker-registry did not answer on /v2/ within 20 s")

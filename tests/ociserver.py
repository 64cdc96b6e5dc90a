"""A real OCI registry for tests: the CNCF distribution registry that Debian packages
(``apt-get install docker-registry``, tested with 2.8.2), run on loopback with filesystem
storage in a temporary directory, optionally behind htpasswd (bcrypt) basic auth.

    from ociserver import start_registry
    srv = start_registry(tmp_path / "oci")                   # srv.host == "127.0.0.1:PORT"
    srv = start_registry(tmp_path / "oci", users={"alice": "pw"})
    srv.blob_path("sha256:...")                              # a blob's data file in storage
    srv.stop()

Startup takes well under a second; tests that change the storage (tamper) start their own.
"""

from __future__ import annotations

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


def start_registry(workdir: Path, *, users: dict[str, str] | None = None) -> OciServer:
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

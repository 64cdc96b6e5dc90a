"""A second "machine" serves what the first published, with no shared mount (issue 11).

Each machine is a directory of its own: its own ``ADAPTERHUB_HOME``, ``HOME``, ``TMPDIR`` and
its own copy of the base model (each machine has the base). They share only the servers,
all real and on loopback:

* a team registry on PostgreSQL (a fresh database per test, on the server
  ``ADAPTERHUB_TEST_POSTGRES_URL`` names) with its blobs in a bucket of moto's S3 server
  (``moto_server``, started by these tests);
* the CNCF distribution registry (Debian's ``docker-registry``, tests/ociserver.py).

Machine A publishes a LoRA that PEFT saved (``save_pretrained``) on a small seeded Llama
with a word-level tokenizer (every token decodes to its own word, so equal texts are equal
tokens), pinned to that base; then machine A's whole directory is deleted. Machine B serves
it with ``adapterhub serve`` as a real subprocess (from the registry, or straight from an
``oci://`` URL) and its greedy completion over HTTP is PEFT's, token for token; the vLLM
resolver (plugins/adapterhub-vllm, without vLLM: its ``resolve_lora`` coroutine) resolves it
on machine B into its digest-keyed cache, byte-identical. OCI tag lists longer than one page
(the registry's ``Link`` header) are followed by ``@latest``, ranges and resolve."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from ociserver import REGISTRY, SKIP_REASON, LoopbackHTTP, start_registry

from conftest import ADAPTERHUB, POSTGRES_URL, _pg_database, _pg_drop, save_lora

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from test_row_isolation import EOS, _save_base  # noqa: E402 - the tiny base with a word-level tokenizer
from test_s3_blobs import AWS, MOTO, s3_endpoint  # noqa: E402, F401 - moto_server on loopback (a fixture)

pytestmark = pytest.mark.slow

PROMPT = "w3 w4 w5 w6"
STEPS = 8
NAME = "team/sent"
NEEDS_PG = pytest.mark.skipif(not POSTGRES_URL, reason="needs ADAPTERHUB_TEST_POSTGRES_URL (CI sets it)")
NEEDS_MOTO = pytest.mark.skipif(MOTO is None, reason="moto_server is not installed (pip install 'moto[server]')")
NEEDS_OCI = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


def _greedy(base: Path, adapter: Path | None) -> list[int]:
    """PEFT's own model (or the bare base), uncached full forwards, greedy, to end of sequence."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    seq, out = list(AutoTokenizer.from_pretrained(base)(PROMPT).input_ids), []
    with torch.no_grad():
        for _ in range(STEPS):
            t = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if t == EOS:
                break
            out.append(t)
            seq.append(t)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """The base and the PEFT-saved LoRA as the test (not a machine) keeps them, with PEFT's
    greedy tokens for PROMPT and the files' bytes."""
    ref = tmp_path_factory.mktemp("reference")
    base = _save_base(ref / "base")
    lora = save_lora(base, ref / "lora", seed=21)
    want = _greedy(base, lora)
    assert want and want != _greedy(base, None), "the adapter must change the greedy output"
    return {"base": base, "lora": lora, "want": want,
            "files": {p.name: p.read_bytes() for p in lora.iterdir() if p.is_file()}}


def _machine(root: Path, reference: dict[str, Any], **extra: str) -> tuple[Path, dict[str, str]]:
    """A machine: its directory (own home, temp dir, copy of the base) and its environment."""
    for d in ("home", "user", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copytree(reference["base"], root / "base")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ADAPTERHUB_", "AWS_", "DOCKER_CONFIG", "XDG_"))}
    env.update(ADAPTERHUB_HOME=str(root / "home"), HOME=str(root / "user"), TMPDIR=str(root / "tmp"),
               ADAPTERHUB_LOAD_PLUGINS="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return root, env


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([ADAPTERHUB, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=env["HOME"])
    assert proc.returncode == 0, f"adapterhub {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def _leave(machine: Path) -> None:
    """Machine A is gone: nothing of it can be read after this."""
    shutil.rmtree(machine)
    assert not machine.exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_complete(env: dict[str, str], *args: str) -> tuple[list[int], dict[str, Any], str]:
    """``adapterhub [GLOBAL] serve ...`` as a subprocess; the greedy completion of NAME over
    HTTP (as token ids), /v1/models, and what serve printed."""
    import httpx

    port = _free_port()
    log = Path(env["TMPDIR"]) / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([ADAPTERHUB, *args, "--port", str(port)], env=env, cwd=env["HOME"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
                time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            models = c.get("/v1/models").json()
            r = c.post("/v1/completions", json={"model": NAME, "prompt": PROMPT, "max_tokens": STEPS,
                                                "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
        assert body["model"] == NAME, body
        words = body["choices"][0]["text"].split()
        assert all(w.startswith("w") and w[1:].isdigit() for w in words), words  # one word per token
        return [int(w[1:]) for w in words], models, log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _card(models: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in models["data"] if m["id"] == name)


def _blob_files(home: Path) -> dict[str, bytes]:
    """The blobs of a local store under ``home``, by sha256 (fanned out: sha256/ab/cdef...)."""
    out = {}
    for p in home.rglob("*"):
        if p.is_file() and p.parent.parent.name == "sha256" and len(p.parent.name) == 2:
            out[p.parent.name + p.name] = p.read_bytes()
    return out


@pytest.fixture
def team(s3_endpoint, tmp_path) -> dict[str, str]:  # noqa: F811 - the imported fixture, by name
    """A fresh PostgreSQL database and a fresh bucket on moto: the team registry."""
    import boto3

    bucket = "ah-" + uuid.uuid4().hex[:12]
    aws = {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
                 region_name=AWS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)
    url = _pg_database()
    try:
        yield {"db": url, "blobs": f"s3://{bucket}/team", "bucket": bucket, **aws}
    finally:
        _pg_drop(url)


@NEEDS_PG
@NEEDS_MOTO
def test_postgres_s3_machine_b_serves_and_the_vllm_resolver_caches_what_machine_a_published(
        team, reference, tmp_path):
    """Servers: PostgreSQL and moto_server on loopback. A publishes with --registry/--blobs;
    A's directory is deleted; B (same two URLs, nothing else shared) serves it with PEFT's
    tokens, and the vLLM resolver on B pulls it into B's digest-keyed cache, byte-identical."""
    aws = {k: team[k] for k in (*AWS, "AWS_ENDPOINT_URL")}
    a, env_a = _machine(tmp_path / "machine-a", reference, **aws)
    shutil.copytree(reference["lora"], a / "lora")
    published = json.loads(_cli(env_a, "--registry", team["db"], "--blobs", team["blobs"], "publish", "--json",
                                str(a / "lora"), "--name", NAME, "--version", "1.0.0", "--base", str(a / "base"),
                                "--task", "sentiment"))
    _leave(a)

    cache = tmp_path / "machine-b" / "vllm-cache"
    b, env_b = _machine(tmp_path / "machine-b", reference, **aws, ADAPTERHUB_VLLM_CACHE_DIR=str(cache))
    got, models, log = _serve_and_complete(env_b, "--registry", team["db"], "--blobs", team["blobs"], "serve",
                                           "--base", str(b / "base"), "--adapter", f"{NAME}@1.0.0")
    assert got == reference["want"], (got, reference["want"], log[-2000:])
    assert f"attached {NAME} ({NAME}@1.0.0, exact)" in log
    card = _card(models, NAME)
    assert published["digest"] in json.dumps(card), card

    env_r = {**env_b, "ADAPTERHUB_REGISTRY_URL": team["db"], "ADAPTERHUB_BLOBS": team["blobs"]}
    _resolved_in_vllm_cache(env_r, b / "base", f"{NAME}@1.0.0", published["digest"], cache, reference)
    assert not _blob_files(b), "machine B kept a local blob store: the blobs are the bucket's"


def _resolved_in_vllm_cache(env: dict[str, str], base: Path, lora_name: str, digest: str, cache: Path,
                            reference: dict[str, Any]) -> None:
    """The vLLM resolver in a process of the machine, configured as vLLM's server would be (its
    environment), resolves ``lora_name`` into ``cache/<manifest digest>``, byte-identical."""
    code = ("import asyncio, dataclasses, json, sys; from adapterhub_vllm.resolver import AdapterHubLoRAResolver; "
            "r = AdapterHubLoRAResolver.from_env(); a = asyncio.run(r.resolve_lora(sys.argv[1], sys.argv[2])); "
            "print(json.dumps(dataclasses.asdict(a) if a is not None else r.refusals))")
    proc = subprocess.run([sys.executable, "-c", code, str(base), lora_name], env=env,
                          capture_output=True, text=True, timeout=300, cwd=env["HOME"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = json.loads(proc.stdout.splitlines()[-1])
    assert args.get("digest") == digest and args["lora_name"] == lora_name, args  # not a refusal
    path = Path(args["lora_path"])
    assert path == cache / digest.split(":", 1)[1]  # keyed by the manifest digest
    for name, data in reference["files"].items():
        assert (path / name).read_bytes() == data, name
    manifest = json.loads((path / "adapterhub_manifest.json").read_bytes())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        n: hashlib.sha256(d).hexdigest() for n, d in reference["files"].items()}


@NEEDS_OCI
def test_machine_b_serves_and_the_vllm_resolver_caches_an_oci_url_that_machine_a_pushed(reference, tmp_path):
    """Server: docker-registry on loopback. A publishes to its own local registry and pushes
    to the OCI registry; A's directory is deleted; on B the vLLM resolver resolves
    ``oci://HOST/REPO:TAG`` into its digest-keyed cache, and ``adapterhub serve`` serves that
    URL straight: pulled, verified, into B's own digest-addressed store, PEFT's tokens over HTTP."""
    srv = start_registry(tmp_path / "oci")
    try:
        repo = f"oci://{srv.host}/team/sent"
        a, env_a = _machine(tmp_path / "machine-a", reference)
        shutil.copytree(reference["lora"], a / "lora")
        published = json.loads(_cli(env_a, "publish", "--json", str(a / "lora"), "--name", NAME, "--version",
                                    "1.0.0", "--base", str(a / "base"), "--task", "sentiment"))
        _cli(env_a, "push", f"{NAME}@1.0.0", "--to", repo, "--insecure")
        _leave(a)

        cache = tmp_path / "machine-b" / "vllm-cache"
        b, env_b = _machine(tmp_path / "machine-b", reference, ADAPTERHUB_VLLM_CACHE_DIR=str(cache))
        _resolved_in_vllm_cache({**env_b, "ADAPTERHUB_OCI_INSECURE": "1"}, b / "base", f"{repo}:1.0.0",
                                published["digest"], cache, reference)
        got, models, log = _serve_and_complete(env_b, "serve", "--base", str(b / "base"), "--adapter",
                                               f"{repo}:1.0.0", "--insecure")
        assert got == reference["want"], (got, reference["want"], log[-2000:])
        assert f"pulled {repo}:1.0.0 as {NAME}@1.0.0 (verified" in log, log[-2000:]
        assert published["digest"] in json.dumps(_card(models, NAME))
        blobs = _blob_files(b / "home")
        for name, data in reference["files"].items():
            assert blobs[hashlib.sha256(data).hexdigest()] == data, name  # in B's own store, byte-identical
        shown = json.loads(_cli(env_b, "show", f"{NAME}@1.0.0", "--json"))
        assert shown["digest"] == published["digest"]
        assert str(shown.get("source", "")).startswith(f"{repo}@sha256:"), shown
    finally:
        srv.stop()


class _PagingProxy(LoopbackHTTP):
    """A loopback proxy in front of the registry for reads (GET, HEAD) that pages tag lists
    as the distribution spec says and as distribution 3, Harbor or GHCR do: ``?n=N&last=T``,
    sorted, with a ``Link: <...>; rel="next"`` header while tags remain. Debian's
    docker-registry 2.8 ignores ``n`` on tag lists (it answers every tag in one page), so
    without this no test here could see a second page."""

    def __init__(self, upstream: str, page: int):
        import http.client
        import urllib.parse
        from http.server import BaseHTTPRequestHandler

        proxy = self
        self.pages: list[str] = []  # tag-list URLs answered

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                keep = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("connection", "transfer-encoding")]
                return resp.status, keep, body

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._send(*self._forward())

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                if not url.path.endswith("/tags/list"):
                    return self._send(*self._forward())
                q = urllib.parse.parse_qs(url.query)
                n = min(int(q.get("n", [page])[0]), page)
                last = q.get("last", [""])[0]
                self.path = url.path
                status, headers, body = self._forward()
                if status != 200:
                    return self._send(status, headers, body)
                doc = json.loads(body)
                tags = sorted(t for t in doc.get("tags") or [] if t > last)
                doc["tags"], more = tags[:n], len(tags) > n
                proxy.pages.append(self.path + ("?" + url.query if url.query else ""))
                if more:
                    nxt = urllib.parse.urlencode({"n": n, "last": doc["tags"][-1]})
                    headers.append(("Link", f'<{url.path}?{nxt}>; rel="next"'))
                self._send(200, [(k, v) for k, v in headers if k.lower() != "content-type"]
                           + [("Content-Type", "application/json")], json.dumps(doc).encode())

        self._serve(Handler)


@NEEDS_OCI
def test_tag_lists_longer_than_a_page_are_followed(reference, tmp_path):
    """Server: docker-registry on loopback, read through a proxy that pages its tag lists (2
    tags a page, a Link header to the next; see _PagingProxy). @latest, a range and resolve
    see every version tag, on every page."""
    import adapterhub_sdk as ah
    from adapterhub_sdk.oci.client import OciClient
    from adapterhub_sdk.oci.remote import OciRemote

    srv = start_registry(tmp_path / "oci")
    proxy = _PagingProxy(srv.host, page=2)
    try:
        versions = [f"1.{i}.0" for i in range(5)]
        with ah.Registry.open(f"sqlite:///{tmp_path / 'a.db'}", blobs=tmp_path / "a-blobs") as reg:
            for v in versions:
                reg.publish(reference["lora"], name=NAME, version=v, base=reference["base"])
                OciRemote(insecure=True).push(reg, f"{NAME}@{v}", f"oci://{srv.host}/team/paged")
        with OciClient(proxy.host, insecure=True) as c:
            assert c.tags("team/paged") == versions
        assert len(proxy.pages) == 3, proxy.pages  # 2 + 2 + 1
        repo = f"oci://{proxy.host}/team/paged"
        with ah.Registry.open(f"sqlite:///{tmp_path / 'b.db'}", blobs=tmp_path / "b-blobs") as other:
            remote = OciRemote(insecure=True)
            assert remote.pull(other, f"{repo}@latest", None).version == "1.4.0"
            assert remote.pull(other, f"{repo}@>=1.1,<1.4", None).version == "1.3.0"
            found = OciRemote(repo, insecure=True).resolve(other._as_base(str(reference["base"])))
            assert sorted(h["version"] for h in found) == versions, found
            assert {h["verdict"] for h in found} == {"exact"}
    finally:
        proxy.stop()
        srv.stop()


def test_serve_refuses_an_oci_url_it_cannot_pull_with_one_line(reference, tmp_path):
    """No server: nothing listens on the port. The pull fails before anything is served:
    one line (no traceback), exit 1, nothing stored in the machine's registry."""
    from ociserver import free_port

    b, env = _machine(tmp_path / "machine-b", reference)
    url = f"oci://127.0.0.1:{free_port()}/team/sent:1.0.0"
    proc = subprocess.run([ADAPTERHUB, "serve", "--base", str(b / "base"), "--adapter", url, "--insecure",
                           "--port", str(_free_port())], env=env, capture_output=True, text=True, timeout=300,
                          cwd=env["HOME"])
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "127.0.0.1" in lines[0] and "attached" not in proc.stdout, (proc.stdout, lines)
    assert _blob_files(b / "home") == {}, "nothing is stored"

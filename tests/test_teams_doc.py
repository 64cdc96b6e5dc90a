"""docs/teams.md runs as written: the shell, ini and Python blocks of its two walkthroughs, a
team registry on PostgreSQL + S3 and sharing through an OCI registry, against real servers
on loopback (a fresh PostgreSQL database on the server ``ADAPTERHUB_TEST_POSTGRES_URL``
names; moto's S3 server, ``moto_server``; the CNCF distribution registry, Debian's
``docker-registry``, tests/ociserver.py).

Each "machine" is a directory of its own (``HOME``, ``ADAPTERHUB_HOME``, ``TMPDIR``, the
inputs the doc names: ``./llama-base``, ``./my-lora``, ...), and each block line runs in
``bash`` there as its own process, after the ``export`` lines the doc gave before it. A block
runs on the first machine, except one that the prose before it sends to "any other
machine" / "another machine". What the test changes, and nothing else:

* the doc's example endpoints become the servers here: ``postgresql://adapterhub@db.internal
  :5432/adapters`` a fresh database, ``https://s3.storage.internal`` (the profile's
  ``endpoint_url``) moto's URL, ``registry.example.com`` the registry's ``127.0.0.1:PORT``
  (plain HTTP: ``ADAPTERHUB_OCI_INSECURE=1``, which the doc names);
* the ini block is the ``~/.aws/config`` of every machine, and ``AWS_PROFILE`` is set for
  the whole walkthrough (the doc exports it in step 3, after step 2 created the bucket with
  the AWS CLI, which needs the profile's endpoint too); credentials are ``AWS_ACCESS_KEY_ID``
  / ``AWS_SECRET_ACCESS_KEY`` in the environment, as step 3 allows;
* ``aws s3 mb`` runs when the AWS CLI is installed, else the doc's "From Python" line;
* ``pip install`` is not run; ``adapterhub serve`` is started in the background on a free
  port and stopped after a completion;
* the Python blocks of a walkthrough run as one program (the second uses the first's
  ``reg``), after its shell blocks, on the first machine.

Line joining and comment dropping are tests/test_readme.py's (``commands``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ociserver import REGISTRY, SKIP_REASON, start_registry
from test_readme import commands

from conftest import POSTGRES_URL, _pg_database, _pg_drop, save_lora, wait_listening

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "teams.md"
PG_EXAMPLE = "postgresql://adapterhub@db.internal:5432/adapters"
S3_EXAMPLE = "https://s3.storage.internal"
OCI_EXAMPLE = "registry.example.com"
PG_S3 = "A team registry on PostgreSQL + S3"
OCI = "Sharing adapters through an OCI registry"
ELSEWHERE = re.compile(r"any other machine|another machine", re.I)
KNOWN = ("pip install ", "aws ", "export ", "adapterhub ")
AWS_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
MOTO = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")


def walkthrough(title: str) -> list[tuple[str, str, str]]:
    """(prose before it, language, body) of each fenced block in the ``## title`` section;
    blocks inside list items (indented) are dedented."""
    text = DOC.read_text(encoding="utf-8")
    section = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"docs/teams.md has no '## {title}' section"
    out, last = [], 0
    for m in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", section.group(1), re.M | re.S):
        out.append((section.group(1)[last:m.start()], m.group(2), textwrap.dedent(m.group(3))))
        last = m.end()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Machine:
    """A directory of its own with a shell environment; runs the doc's lines there."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        for d in ("user", "home", "tmp"):
            (root / d).mkdir(parents=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTERHUB_", "AWS_", "XDG_"))}
        self.env = {**base, "HOME": str(root / "user"), "ADAPTERHUB_HOME": str(root / "home"),
                    "TMPDIR": str(root / "tmp"), "ADAPTERHUB_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
        self.outputs: dict[str, str] = {}

    def script(self, exports: list[str], line: str) -> str:
        return "\n".join(["set -eo pipefail", *exports, line])

    def run(self, exports: list[str], line: str) -> str:
        proc = subprocess.run(["bash", "-c", self.script(exports, line)], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        self.outputs[line] = proc.stdout
        return proc.stdout

    def serve(self, exports: list[str], line: str, model: str) -> dict[str, Any]:
        """The serve line in the background on a free port: /v1/models and one completion."""
        port = _free_port()
        log = self.root / "tmp" / "serve.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(["bash", "-c", self.script(exports, f"{line} --port {port}")], cwd=self.root,
                                    env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    assert time.monotonic() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
                    time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as r:
                models = json.load(r)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": model, "prompt": "w3 w4", "max_tokens": 4,
                                                          "temperature": 0}).encode())
            with urllib.request.urlopen(req, timeout=120) as r:
                completion = json.load(r)
            return {"models": models, "completion": completion, "log": log.read_text()}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    def python(self, exports: list[str], code: str) -> str:
        program = self.root / "tmp" / "doc_blocks.py"
        program.write_text(code)
        return self.run(exports, f"exec {sys.executable} {program}")


def _inputs(work: Path, names: dict[str, str]) -> None:
    """The tiny base (with a word-level tokenizer) and a PEFT-saved LoRA under the doc's names."""
    from test_row_isolation import _save_base

    base = _save_base(work / names["base"])
    save_lora(base, work / names["lora"], seed=31)


def _copy_base(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def _substitute(text: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        text = text.replace(old, new)
    return text


def _run_walkthrough(title: str, first: Machine, other: Machine, subs: dict[str, str],
                     on_line: Any = None) -> dict[str, dict[str, Any]]:
    """Every block of the section, in order (see the module docstring); what each machine's
    serve line served (its /v1/models, a completion of acme/sentiment, its log)."""
    served: dict[str, dict[str, Any]] = {}
    exports: list[str] = []
    python: list[str] = []
    for prose, lang, body in walkthrough(title):
        body = _substitute(body, subs)
        machine = other if ELSEWHERE.search(prose.strip().split("\n\n")[-1]) else first
        if lang == "python":
            python.append(body)
            continue
        if lang == "ini":
            continue  # written as every machine's ~/.aws/config before the walkthrough
        assert lang in ("bash", "sh"), (lang, body)
        for line in commands(body):
            assert line.startswith(KNOWN), f"docs/teams.md: a line this test does not know how to run: {line}"
            if line.startswith("pip install "):
                continue
            if line.startswith("export "):
                exports.append(line)
                continue
            if on_line is not None and on_line(machine, exports, line):
                continue
            if line.startswith("adapterhub serve "):
                served[machine.root.name] = machine.serve(exports, line, "acme/sentiment")
                continue
            machine.run(exports, line)
    if python:
        first.python(exports, "\n".join(python))
    return served


def _as_commented(outputs: dict[str, str], prefix: str) -> str:
    """The output of the line starting with ``prefix``, checked against the doc's comment on
    that line when the comment shows output (``# exact  acme/...``): the same words, first."""
    line, out = next((k, v) for k, v in outputs.items() if k.startswith(prefix))
    said = line.partition("#")[2].split()
    if said and said[0] in ("exact", "structural", "incompatible"):
        assert out.split()[:len(said)] == said, f"docs/teams.md says {' '.join(said)!r}; {prefix} printed {out!r}"
    return out


def _aws_config(subs: dict[str, str]) -> str:
    ini = [body for _, lang, body in walkthrough(PG_S3) if lang == "ini"]
    assert len(ini) == 1, ini
    return _substitute(ini[0], subs)


def _has_aws_cli() -> bool:
    aws = shutil.which("aws")
    if aws is None:
        return False
    return subprocess.run([aws, "--version"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def moto_endpoint(tmp_path):
    """A moto_server of this test's own (the doc's bucket name is fixed: acme-adapters)."""
    if MOTO is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    with (tmp_path / "moto.log").open("wb") as log:
        proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        wait_listening(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES_URL, reason="needs ADAPTERHUB_TEST_POSTGRES_URL (CI sets it)")
def test_the_postgres_s3_walkthrough_runs_as_written(moto_endpoint, tmp_path):
    """Servers: PostgreSQL, moto_server. Steps 2-5 on one machine, the "any other machine"
    lines on a second that shares no directory with it; then the Python blocks."""
    db = _pg_database()
    try:
        subs = {PG_EXAMPLE: db, S3_EXAMPLE: moto_endpoint}
        config = _aws_config(subs)
        env = {**AWS_CREDS, "AWS_PROFILE": "adapters"}
        a, b = Machine(tmp_path / "machine-a", env), Machine(tmp_path / "machine-b", env)
        for m in (a, b):
            (m.root / "user" / ".aws").mkdir()
            (m.root / "user" / ".aws" / "config").write_text(config)
        _inputs(a.root, {"base": "llama-base", "lora": "my-lora"})
        _copy_base(a.root / "llama-base", b.root / "llama-base")
        aws_cli = _has_aws_cli()

        def special(machine: Machine, exports: list[str], line: str) -> bool:
            if line.startswith("aws ") and not aws_cli:  # the doc's "From Python" line instead
                py = re.search(r"From Python: `([^`]+)`", DOC.read_text(encoding="utf-8"))
                assert py, "docs/teams.md lost its 'From Python:' bucket line"
                machine.python(exports, f"import boto3\n{py.group(1)}\n")
                return True
            return False

        served = _run_walkthrough(PG_S3, a, b, subs, special)["machine-b"]

        resolved = _as_commented(b.outputs, "adapterhub resolve")
        assert re.search(r"exact\s+acme/sentiment@1\.0\.0", resolved), resolved
        pulled = b.root / "sentiment" / "adapter_model.safetensors"
        assert pulled.read_bytes() == (a.root / "my-lora" / "adapter_model.safetensors").read_bytes()
        assert "acme/sentiment" in {m["id"] for m in served["models"]["data"]}, served["models"]
        assert served["completion"]["model"] == "acme/sentiment" and served["completion"]["choices"]
        # the Python blocks: 1.0.1 published, and ^1 pulled (now 1.0.1) on the first machine
        assert json.loads((a.root / "sentiment" / "adapterhub_manifest.json").read_text())["version"] == "1.0.1"
        for m in (a, b):
            assert not list((m.root / "home").rglob("sha256")), f"{m.root.name} has a local blob store"
        import boto3

        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="eu-west-1", **{
            k.lower(): v for k, v in AWS_CREDS.items()})
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="acme-adapters").get("Contents", [])]
        # the blobs by digest, and the record of the registry the store belongs to (gc's owner check)
        assert keys and all(k.startswith("adapterhub/sha256/") or k == "adapterhub/OWNER" for k in keys), keys
        assert "adapterhub/OWNER" in keys
    finally:
        _pg_drop(db)


@pytest.mark.slow
@pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)
def test_the_oci_walkthrough_runs_as_written(tmp_path):
    """Server: docker-registry. Publish, sign and push on one machine; pull, resolve (offline,
    from the local registry) and serve the oci:// URL on another with its own home."""
    srv = start_registry(tmp_path / "oci")
    try:
        env = {"ADAPTERHUB_OCI_INSECURE": "1"}
        a, b = Machine(tmp_path / "machine-a", env), Machine(tmp_path / "machine-b", env)
        _inputs(a.root, {"base": "llama-3-8b", "lora": "sentiment-lora"})
        _copy_base(a.root / "llama-3-8b", b.root / "llama-3-8b")
        served = _run_walkthrough(OCI, a, b, {OCI_EXAMPLE: srv.host})["machine-b"]
        assert f"pulled oci://{srv.host}/team/sentiment@^1 as acme/sentiment@1.2.0" in served["log"], served["log"]
        assert "acme/sentiment" in {m["id"] for m in served["models"]["data"]}, served["models"]
        assert served["completion"]["model"] == "acme/sentiment" and served["completion"]["choices"]
        signed = next(v for k, v in a.outputs.items() if k.startswith("adapterhub sign"))
        assert "signed acme/sentiment@1.2.0" in signed, signed
        pulled = b.root / "sentiment"
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            assert (pulled / f).read_bytes() == (a.root / "sentiment-lora" / f).read_bytes()
        assert (pulled / "model.sig").is_file()  # the signature travelled with it
        resolved = _as_commented(b.outputs, "adapterhub resolve")
        assert re.search(r"exact\s+acme/sentiment@1\.2\.0", resolved), resolved
        shown = json.loads(b.run([], "adapterhub show acme/sentiment@1.2.0 --json"))
        assert str(shown.get("source", "")).startswith(f"oci://{srv.host}/team/sentiment@sha256:"), shown
    finally:
        srv.stop()


def test_every_walkthrough_line_is_one_the_tests_run():
    """A new kind of line in either walkthrough (another tool, another language) must be
    taught to the tests above, or it would go untested."""
    for title in (PG_S3, OCI):
        blocks = walkthrough(title)
        assert blocks, title
        for _, lang, body in blocks:
            assert lang in ("bash", "sh", "ini", "python"), (title, lang)
            if lang in ("bash", "sh"):
                for line in commands(body):
                    assert line.startswith(KNOWN), (title, line)
    for title in (PG_S3, OCI):  # some lines run on a second machine
        assert any(ELSEWHERE.search(p.strip().split("\n\n")[-1]) for p, _, _ in walkthrough(title)), title

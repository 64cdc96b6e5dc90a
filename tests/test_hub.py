"""The Hugging Face Hub as a registry (docs/hub.md): push, pull, resolve, offline behaviour.

Read paths (model info at a revision, refs and tags, repo trees with LFS sha256, snapshot
downloads) run against a REAL Hub-compatible server: ``olah`` serving git repositories
(tests/hubserver.py, one server for the session). The repositories served there are laid
out by the SDK's own push code: the files a push commits are captured (see below) and
written into olah's git repos, one commit and one version tag per pushed version.

Write paths (create repo, preupload, commit stating its parent, tag) and Hub search
(``list_models``), which olah does not implement, run against huggingface_hub's own request
layer with a TEST DOUBLE: :class:`FakeHub`, installed with
``huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(...)))``
(huggingface_hub 2.4 talks through ``httpx2``), emulating the few Hub endpoints those calls
use. Every test that uses it says so in its docstring.

CLI commands run as the installed ``adapterhub`` entry point in a subprocess where the
process environment matters (HF_HUB_OFFLINE / HF_ENDPOINT read at import, SIGKILL), and
in-process through click's CliRunner elsewhere (same commands, same one-line errors,
without paying a Python start-up per call)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
import yaml
from click.testing import CliRunner
from hubserver import HubCommit, HubRepo, make_hub_repo, unique_repo_id
from huggingface_hub import constants as hf_constants
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import default_client_factory

import adapterhub_sdk as ah
from adapterhub_sdk.cli import cli
from adapterhub_sdk.hub import (
    CARD_KEEP,
    MANIFEST,
    HubClient,
    HubRef,
    HubUnavailableError,
    model_card,
    parse_hub_ref,
)

from conftest import ADAPTERHUB, run_cli

FAKE_ENDPOINT = "https://hub.test"
TOKEN = "hf_test_write_token"
BASE_HUB_NAME = "test-org/tiny-llama"  # the base name recorded in the published adapters
SRC_REPO = "test-org/sentiment-lora"  # where the module's versions are pushed (test double)
# version -> which saved LoRA it holds ("a": q/v targets, seed 1; "b": k/o targets, seed 2)
VERSIONS = {"1.0.0": "b", "1.2.0": "a", "1.3.0": "b", "2.0.0": "a"}


# --------------------------------------------------------------------------- the write-path test double


class FakeHub:
    """A test double of the Hub's write endpoints (and the reads a push makes), behind
    huggingface_hub's request layer. Each repo is a list of commits (full file snapshots),
    a ``main`` head and tags. ``requests`` records every call (method, path, query, headers,
    body). ``before_commit(repo)`` runs when a commit arrives, before its parent is checked:
    a concurrent push landing in between."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.models: list[dict] = []  # what GET /api/models (list_models) searches
        self.before_commit = None

    # -- state
    def create(self, repo: str) -> None:
        self.repos[repo] = {"commits": [], "tags": {}, "head": None}
        self.commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                    "initial commit")

    def commit(self, repo: str, files: dict[str, bytes], message: str = "") -> str:
        st = self.repos[repo]
        snapshot = dict(st["commits"][-1]["files"]) if st["commits"] else {}
        snapshot.update(files)
        sha = hashlib.sha1(f"{repo}\0{len(st['commits'])}\0{message}".encode()).hexdigest()
        st["commits"].append({"sha": sha, "files": snapshot, "message": message})
        st["head"] = sha
        return sha

    def files_at(self, repo: str, sha: str) -> dict[str, bytes]:
        return next(c["files"] for c in self.repos[repo]["commits"] if c["sha"] == sha)

    def calls(self, *, method: str | None = None, contains: str = "") -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method) and contains in r["path"]]

    # -- HTTP
    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        body = request.read()
        if path == "/api/agent-harnesses":  # huggingface_hub's own once-a-day lookup
            return httpx2.Response(404, json={"error": "not here"})
        self.requests.append({"method": request.method, "path": path,
                              "query": list(request.url.params.multi_items()),
                              "headers": dict(request.headers), "body": body})

        def js(obj, status: int = 200, **headers: str) -> httpx2.Response:
            return httpx2.Response(status, json=obj, headers=headers)

        if request.method == "POST" and path == "/api/repos/create":
            p = json.loads(body)
            repo = f"{p['organization']}/{p['name']}"
            if repo in self.repos:
                return js({"error": "You already created this model repo"}, 409)
            self.create(repo)
            return js({"url": f"{FAKE_ENDPOINT}/{repo}", "name": repo})
        if request.method == "POST" and path == "/api/validate-yaml":
            return js({"errors": [], "warnings": []})
        if request.method == "GET" and path == "/api/models":
            q = request.url.params
            want, author = q.get_list("filter"), q.get("author")
            hits = [m for m in self.models if set(want) <= set(m["tags"])
                    and (author is None or m["id"].split("/")[0] == author)]
            return js(hits)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|refs|preupload|commit|tag)(?:/(.+))?", path)
        if not m:
            return js({"error": f"not emulated: {request.method} {path}"}, 501)
        repo, what, rev = m.groups()
        st = self.repos.get(repo)
        if st is None:
            return js({"error": "Repository not found"}, 404, **{"X-Error-Code": "RepoNotFound"})
        if what == "revision":
            sha = st["head"] if rev == "main" else st["tags"].get(rev, rev)
            return js({"id": repo, "modelId": repo, "sha": sha, "private": False, "tags": [],
                       "siblings": [{"rfilename": f} for f in self.files_at(repo, sha)]})
        if what == "refs":
            return js({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": st["head"]}],
                       "converts": [],
                       "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in st["tags"].items()]})
        if what == "preupload":  # small files: committed inline ("regular"), no LFS upload
            return js({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                 for f in json.loads(body)["files"]]})
        if what == "commit":
            if self.before_commit is not None:
                self.before_commit(repo)
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            assert lines[0]["key"] == "header"
            parent = lines[0]["value"].get("parentCommit")
            if parent is not None and parent != st["head"]:
                return js({"error": "A commit has happened since. Please refresh and try again."}, 412)
            files = {}
            for item in lines[1:]:
                assert item["key"] == "file" and item["value"]["encoding"] == "base64", item
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            sha = self.commit(repo, files, lines[0]["value"]["summary"])
            return js({"commitUrl": f"{FAKE_ENDPOINT}/{repo}/commit/{sha}", "commitOid": sha, "success": True})
        if what == "tag":
            p = json.loads(body)
            if p["tag"] in st["tags"]:
                return js({"error": "Tag already exists"}, 409)
            st["tags"][p["tag"]] = rev
            return js({})
        return js({"error": "?"}, 501)


@contextmanager
def fake_hub_installed(fake: FakeHub, monkeypatch: pytest.MonkeyPatch):
    """Route huggingface_hub's requests to ``fake`` (endpoint, online, a token); undone after."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", FAKE_ENDPOINT)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake.handler)))
    try:
        yield fake
    finally:
        set_client_factory(default_client_factory)  # also closes the double's client


@pytest.fixture
def fake_hub(monkeypatch):
    with fake_hub_installed(FakeHub(), monkeypatch) as fake:
        yield fake


# --------------------------------------------------------------------------- published versions, pushed once


def _hub_named(src: Path, dest: Path) -> Path:
    """A copy of a saved LoRA whose config names a Hub base (as a Hub-trained adapter would)."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = BASE_HUB_NAME
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return dest


@pytest.fixture(scope="module")
def src(tmp_path_factory, base_dir, lora_dir, lora_dir_b):
    """A source registry with acme/sentiment 1.0.0, 1.2.0, 1.3.0 and 2.0.0 (pinned to
    base_dir), each pushed with the SDK's push to SRC_REPO on the test double; ``fake`` keeps
    what every push committed, to be mirrored into olah."""
    root = tmp_path_factory.mktemp("hub_src")
    dirs = {"a": _hub_named(lora_dir, root / "lora_a"), "b": _hub_named(lora_dir_b, root / "lora_b")}
    url, blobs = f"sqlite:///{root / 'registry.db'}", root / "blobs"
    fake = FakeHub()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(root / "home"))
        with fake_hub_installed(fake, mp):
            reg = ah.Registry.open(url, blobs=blobs)
            for v, which in VERSIONS.items():
                reg.publish(dirs[which], name="acme/sentiment", version=v, base=base_dir, tasks=["sentiment"],
                            license="apache-2.0", description="Sentiment LoRA for the tiny llama.")
            pushes, first_push_requests = {}, []
            for v in VERSIONS:
                pushes[v] = reg.push(f"acme/sentiment@{v}", to=f"hf://{SRC_REPO}")
                first_push_requests = first_push_requests or list(fake.requests)
    yield {"reg": reg, "url": url, "blobs": blobs, "dirs": dirs, "fake": fake, "pushes": pushes,
           "first_push_requests": first_push_requests, "root": root}
    reg.close()


def mirror_to_olah(server, fake: FakeHub, repo: str, repo_id: str | None = None,
                   tamper=None) -> HubRepo:
    """Write the double's repo into olah, commit for commit, with the same tags: the exact
    layout ``push`` produced. ``tamper(version, files)`` may change a version's files."""
    st = fake.repos[repo]
    by_sha = {}
    for t, sha in st["tags"].items():
        by_sha.setdefault(sha, []).append(t)
    commits = []
    for c in st["commits"]:
        files = dict(c["files"])
        for t in by_sha.get(c["sha"], []):
            if tamper is not None:
                files = tamper(t, files)
        commits.append(HubCommit(files=files, tags=by_sha.get(c["sha"], []), message=c["message"]))
    return make_hub_repo(server.mirrors, repo_id or unique_repo_id("sentiment"), commits=commits)


@pytest.fixture(scope="module")
def olah_repo(hub_server, src):
    """SRC_REPO as pushed, served by the real olah server (tags 1.0.0, 1.2.0, 1.3.0, 2.0.0)."""
    return mirror_to_olah(hub_server, src["fake"], SRC_REPO)


# --------------------------------------------------------------------------- helpers


_PROGRESS = re.compile(r"\d+%\|")  # huggingface_hub's tqdm bars ("Fetching 6 files: 100%|...")


def one_error_line(stderr: str, *needles: str) -> str:
    """Exactly one stderr line 'error: ...' (no traceback) containing every needle. Download
    progress bars, which huggingface_hub draws on stderr before the failure, are not lines
    of the error."""
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    return lines[0]


def invoke(*args: str):
    """The ``adapterhub`` command, in-process (CliRunner keeps stdout and stderr apart)."""
    return CliRunner().invoke(cli, list(args))


def front_matter(card: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def package_files(reg: ah.Registry, ref: str, dest: Path) -> dict[str, bytes]:
    out = reg.pull(ref, dest)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST}


def peft_logits(base: Path, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 3, 7, 2]])).logits


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 for this process (huggingface_hub froze the variable at import, so
    its constant too) and the endpoint at a closed port."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- refs


def test_parse_hub_ref():
    assert parse_hub_ref("hf://acme-org/sentiment-lora") == HubRef("acme-org/sentiment-lora")
    assert parse_hub_ref("hf://acme-org/sentiment-lora@^1").spec == "^1"
    assert str(parse_hub_ref("hf://a/b@1.2.0")) == "hf://a/b@1.2.0"
    for bad in ("acme/x", "hf://noslash", "hf://a/b/c", "hf://a/b@", "hf://a--b/c", "hf://a/b@not a version"):
        with pytest.raises(ah.AdapterHubError):
            parse_hub_ref(bad)
    assert issubclass(HubUnavailableError, ConnectionError)


# --------------------------------------------------------------------------- push (test double)


def test_push_commits_peft_files_manifest_and_card_with_parent_then_tags(src, tmp_path):
    """TEST DOUBLE (write paths; olah has no upload API): ``reg.push`` through
    huggingface_hub's request layer. One commit holds the PEFT files, the package's own README
    at adapterhub/README.md, the canonical manifest and a model card the Hub understands; it
    states its parent (the head read just before) and is then tagged with the version."""
    reg, fake = src["reg"], src["fake"]
    st = fake.repos[SRC_REPO]
    # the first push: repo looked up (absent), created, head read, card validated, commit, tag
    first = [(r["method"], r["path"]) for r in src["first_push_requests"]]
    base = f"/api/models/{SRC_REPO}"
    assert first[:2] == [("GET", f"{base}/refs"), ("POST", "/api/repos/create")]
    assert first[2:] == [("GET", f"{base}/revision/main"), ("POST", "/api/validate-yaml"),
                         ("POST", f"{base}/preupload/main"), ("POST", f"{base}/commit/main"),
                         ("POST", f"{base}/tag/{src['pushes']['1.0.0'].commit}")]
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in src["first_push_requests"])

    commits = fake.calls(method="POST", contains="/commit/")
    tags = fake.calls(method="POST", contains="/tag/")
    assert len(commits) == len(tags) == len(VERSIONS)
    assert set(st["tags"]) == set(VERSIONS)
    shas = [c["sha"] for c in st["commits"]]
    for i, (version, res) in enumerate(src["pushes"].items()):
        info = reg.show(f"acme/sentiment@{version}")
        # the commit stated its parent: the commit before it on main
        header = json.loads(commits[i]["body"].splitlines()[0])["value"]
        assert header["parentCommit"] == shas[i]  # shas[0] is the repo's initial commit
        assert header["summary"] == f"acme/sentiment {version}"
        # one tag per version, at the commit the push returned
        assert json.loads(tags[i]["body"])["tag"] == version
        assert tags[i]["path"].endswith(f"/tag/{res.commit}")
        assert res.commit == shas[i + 1] == st["tags"][version]
        assert (res.repo, res.version) == (SRC_REPO, version)

        files = fake.files_at(SRC_REPO, res.commit)
        committed = {p for p in files if p != ".gitattributes"}
        assert committed == {"adapter_config.json", "adapter_model.safetensors", CARD_KEEP, MANIFEST, "README.md"}
        pkg = package_files(reg, f"acme/sentiment@{version}", tmp_path / version)
        assert files["adapter_config.json"] == pkg["adapter_config.json"]
        assert files["adapter_model.safetensors"] == pkg["adapter_model.safetensors"]
        assert files[CARD_KEEP] == pkg["README.md"]  # the package's own README, moved aside
        assert files[MANIFEST] == info.manifest.to_json()
        assert ah.Manifest.from_json(files[MANIFEST]).digest == info.digest

        card = files["README.md"].decode()
        meta = front_matter(card)
        assert meta["library_name"] == "peft"
        assert meta["base_model"] == BASE_HUB_NAME
        assert meta["base_model_relation"] == "adapter"
        assert meta["license"] == "apache-2.0"
        fp = info.manifest.base.fingerprint
        assert fp and {"adapterhub", "peft", "lora", "sentiment", f"base_fingerprint:{fp}",
                       f"base_arch:{info.manifest.base.arch_signature}"} <= set(meta["tags"])
        assert info.digest in card and f"adapterhub pull hf://{SRC_REPO}@{version}" in card
        assert card == model_card(info.manifest, SRC_REPO)


def test_push_cli_and_pushing_an_existing_version_is_refused(src, fake_hub):
    """TEST DOUBLE (write paths): ``adapterhub push NS/NAME@VERSION --to hf://ORG/REPO`` creates
    the repo, commits and tags; pushing a version the repo already has is refused in one line,
    before any commit or tag is attempted."""
    repo = "test-org/cli-push"
    reg_args = ("--registry", src["url"], "--blobs", str(src["blobs"]))
    r = invoke(*reg_args, "push", "acme/sentiment@1.2.0", "--to", f"hf://{repo}", "--private", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    st = fake_hub.repos[repo]
    assert out["repo"] == repo and out["version"] == "1.2.0" and st["tags"] == {"1.2.0": out["commit"]}
    assert json.loads(fake_hub.calls(contains="/api/repos/create")[0]["body"])["visibility"] == "private"
    digest = src["reg"].show("acme/sentiment@1.2.0").digest
    assert ah.Manifest.from_json(fake_hub.files_at(repo, out["commit"])[MANIFEST]).digest == digest

    n_requests = len(fake_hub.requests)
    r = invoke(*reg_args, "push", "acme/sentiment@1.2.0", "--to", f"hf://{repo}")
    assert r.exit_code == 1
    one_error_line(r.stderr, f"hf://{repo} already has version 1.2.0", "immutable")
    later = fake_hub.requests[n_requests:]
    assert not [x for x in later if x["method"] == "POST"], later  # no create, commit or tag
    with pytest.raises(ah.AdapterHubError, match="already has version 1.2.0"):
        src["reg"].push("acme/sentiment@1.2.0", to=f"hf://{repo}")
    assert len(st["commits"]) == 2 and st["tags"] == {"1.2.0": out["commit"]}

    # the next version goes on top, stating the previous push's commit as its parent
    res = src["reg"].push("acme/sentiment@1.3.0", to=f"hf://{repo}")
    header = json.loads(fake_hub.calls(contains="/commit/")[-1]["body"].splitlines()[0])["value"]
    assert header["parentCommit"] == out["commit"] and st["tags"]["1.3.0"] == res.commit


def test_concurrent_push_fails_cleanly_without_overwriting_or_tagging(src, fake_hub):
    """TEST DOUBLE (write paths): another push lands between our read of the head and our
    commit. The commit stated its parent, so the Hub answers 412; the push fails with an
    AdapterHubError (one line from the CLI), the other push's commit stays the head and no
    tag is created."""
    others = {}

    def someone_else_pushes(repo):
        others[repo] = fake_hub.commit(repo, {"adapter_config.json": b'{"someone": "else"}'}, "other push")
        fake_hub.before_commit = None

    fake_hub.before_commit = someone_else_pushes
    with pytest.raises(ah.AdapterHubError, match="another push won the race") as exc:
        src["reg"].push("acme/sentiment@1.2.0", to="hf://test-org/race-py")
    assert "push again" in exc.value.hint
    st = fake_hub.repos["test-org/race-py"]
    assert st["tags"] == {} and st["head"] == others["test-org/race-py"]
    assert fake_hub.files_at("test-org/race-py", st["head"])["adapter_config.json"] == b'{"someone": "else"}'
    assert not fake_hub.calls(contains="/tag/")

    fake_hub.before_commit = someone_else_pushes
    r = invoke("--registry", src["url"], "--blobs", str(src["blobs"]),
               "push", "acme/sentiment@1.2.0", "--to", "hf://test-org/race-cli")
    assert r.exit_code == 1 and r.stdout == ""
    one_error_line(r.stderr, "hf://test-org/race-cli", "another push won the race")
    st = fake_hub.repos["test-org/race-cli"]
    assert st["tags"] == {} and st["head"] == others["test-org/race-cli"]
    # the commit that was refused did state the parent it saw
    refused = json.loads(fake_hub.calls(contains="race-cli/commit/")[0]["body"].splitlines()[0])["value"]
    assert refused["parentCommit"] == st["commits"][0]["sha"]
    assert not fake_hub.calls(contains="/tag/")


def test_resolve_hub_searches_tags(src, base_dir, fake_hub):
    """TEST DOUBLE (list_models, which olah does not implement): ``resolve --hub`` finds repos
    tagged with the base's fingerprint (exact) or its architecture signature (structural);
    the repo carrying the tags of a card ``push`` wrote is found as exact."""
    fp = ah.fingerprint(base_dir)
    pushed = src["fake"].files_at(SRC_REPO, src["pushes"]["1.2.0"].commit)["README.md"].decode()
    fake_hub.models = [
        {"id": "test-org/exact", "tags": front_matter(pushed)["tags"]},  # also has base_arch:
        {"id": "test-org/struct", "tags": ["adapterhub", "sentiment", f"base_arch:{fp.arch_signature}"]},
        {"id": "test-org/other-task", "tags": ["adapterhub", "ner", f"base_fingerprint:{fp.digest}"]},
        {"id": "test-org/other-base", "tags": ["adapterhub", "sentiment", "base_fingerprint:" + "0" * 64]},
        {"id": "someone/exact", "tags": ["adapterhub", "sentiment", f"base_fingerprint:{fp.digest}"]},
    ]
    r = invoke("resolve", "--hub", "--author", "test-org", "--base", str(base_dir), "--task", "sentiment", "--json")
    assert r.exit_code == 0, r.output
    found = json.loads(r.stdout)
    assert [(h["name"], h["verdict"]) for h in found] == [("hf://test-org/exact", "exact"),
                                                          ("hf://test-org/struct", "structural")]
    assert found[1]["reasons"] and not found[0]["reasons"]
    searches = [c for c in fake_hub.calls(method="GET") if c["path"] == "/api/models"]
    assert [sorted(v for k, v in s["query"] if k == "filter") for s in searches] == [
        sorted(["adapterhub", f"base_fingerprint:{fp.digest}", "sentiment"]),
        sorted(["adapterhub", f"base_arch:{fp.arch_signature}", "sentiment"])]
    assert all(("author", "test-org") in s["query"] for s in searches)

    r = invoke("resolve", "--hub", "--base", str(base_dir), "--task", "summarization")
    assert r.exit_code == 0 and "no adapters on the Hub are tagged for this base" in r.stdout


# --------------------------------------------------------------------------- pull (real olah server)


def test_pull_exact_version_records_verifies_and_resolves_offline(hub_env, src, olah_repo, base_dir, tmp_path,
                                                                  monkeypatch):
    """``adapterhub pull hf://ORG/REPO@1.2.0 --out DIR`` against olah: downloads, verifies,
    records acme/sentiment@1.2.0 under the manifest's digest, writes a directory PEFT loads
    with the original adapter's logits; afterwards ``show`` and ``resolve`` work with
    HF_HUB_OFFLINE=1 (in-process here; the offline test runs them as subprocesses)."""
    out = tmp_path / "out"
    ref = f"hf://{olah_repo.repo_id}@1.2.0"
    proc = run_cli("pull", ref, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"pulled {ref} as acme/sentiment@1.2.0" in proc.stdout
    source = src["reg"].show("acme/sentiment@1.2.0")

    want = package_files(src["reg"], "acme/sentiment@1.2.0", tmp_path / "want")
    got = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(got) == set(want) | {MANIFEST}  # README.md is the package's own, not the card
    assert all(got[k] == v for k, v in want.items())
    assert got[MANIFEST] == source.manifest.to_json()  # the pushed manifest, provenance included

    import torch
    assert torch.equal(peft_logits(base_dir, out), peft_logits(base_dir, src["dirs"]["a"]))

    # afterwards, offline (and with the endpoint dead, so any Hub access would fail)
    go_offline(monkeypatch)
    shown = invoke("show", "acme/sentiment@1.2.0", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["digest"] == source.digest
    res = invoke("resolve", "--base", str(base_dir), "--json")
    assert res.exit_code == 0, res.output
    assert [(h["name"], h["version"], h["verdict"]) for h in json.loads(res.stdout)] == [
        ("acme/sentiment", "1.2.0", "exact")]
    again = invoke("pull", ref)
    assert again.exit_code == 1
    one_error_line(again.stderr, "HF_HUB_OFFLINE")


def test_damaged_hub_cache_is_refused_with_what_to_do_and_base_must_fit(hub_env, src, olah_repo, base_dir,
                                                                         base_other_shape, tmp_path):
    """Against olah: a cached blob whose bytes no longer match its sha256 name is refused by
    name, with how to recover; after deleting the snapshot the pull succeeds. ``--base`` on a
    repo with a manifest must agree with the manifest's pin."""
    ref = f"hf://{olah_repo.repo_id}@1.0.0"
    first = run_cli("pull", ref, "--out", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    hub_cache = Path(os.environ["HF_HOME"]) / "hub"
    snaps = [p for p in hub_cache.rglob(olah_repo.tags["1.0.0"]) if p.is_dir()]
    assert len(snaps) == 1
    blob = (snaps[0] / "adapter_model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with ah.Registry.open(f"sqlite:///{tmp_path / 'fresh' / 'registry.db'}") as fresh:
        with pytest.raises(ah.IntegrityError, match="damaged copies of adapter_model.safetensors") as err:
            fresh.pull(ref)
        assert "hf cache delete" in err.value.hint
        assert fresh.list() == []
        shutil.rmtree(snaps[0])
        blob.unlink()
        fresh.pull(ref)
        assert fresh.show("acme/sentiment@1.0.0").digest == src["reg"].show("acme/sentiment@1.0.0").digest

    r = invoke("pull", ref, "--base", str(base_other_shape))
    assert r.exit_code == 1
    one_error_line(r.stderr, "--base PATH does not apply", "omit --base PATH")
    assert invoke("pull", ref, "--base", str(base_dir)).exit_code == 0  # the base it is pinned to


def test_pull_latest_and_ranges_over_version_tags(hub_env, src, olah_repo, tmp_path):
    """Against olah: no version and ``@latest`` pick the highest version tag, ``@^1`` the
    highest 1.x, an exact version its tag; each pulled version is recorded as pushed."""
    reg = ah.Registry.open()
    digests = {v: src["reg"].show(f"acme/sentiment@{v}").digest for v in VERSIONS}
    repo = olah_repo.repo_id

    r = invoke("pull", f"hf://{repo}@^1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == "1.3.0"
    reg.pull(f"hf://{repo}@latest")
    assert reg.show("acme/sentiment@2.0.0").digest == digests["2.0.0"]
    info = HubClient().pull(reg, f"hf://{repo}")  # no version: latest
    assert info.version == "2.0.0"
    info = HubClient().pull(reg, f"hf://{repo}@~1.0", dest=tmp_path / "one")
    assert info.version == "1.0.0" and (tmp_path / "one" / "adapter_model.safetensors").is_file()
    assert {v.version: v.digest for v in reg.versions("acme/sentiment")} == {
        v: digests[v] for v in ("1.0.0", "1.3.0", "2.0.0")}

    r = invoke("pull", f"hf://{repo}@^3")
    assert r.exit_code == 1
    one_error_line(r.stderr, "no version tag matches", "1.0.0, 1.2.0, 1.3.0, 2.0.0")
    r = invoke("pull", f"hf://{repo}@{olah_repo.tags['1.2.0']}")  # adapters are pulled by version
    assert r.exit_code == 1
    one_error_line(r.stderr, "is not a version")
    r = invoke("pull", f"hf://{unique_repo_id('missing')}@1.0.0")
    assert r.exit_code == 1
    one_error_line(r.stderr, "not found")
    reg.close()


def test_a_repo_cannot_slip_versions_into_a_name_held_by_others(hub_env, hub_server, src, lora_dir, tmp_path):
    """Against olah: the pushed acme/sentiment versions served again by another org's repo.
    A name with versions from elsewhere (published here, or pulled from another repo) does
    not take versions from it unless the user says so (--name); the recorded version keeps
    the repo and commit it came from."""
    evil = mirror_to_olah(hub_server, src["fake"], SRC_REPO, repo_id=unique_repo_id("mimic"))
    reg = ah.Registry.open()
    reg.publish(lora_dir, name="acme/sentiment", version="0.0.1")  # the team's own, published here
    r = invoke("pull", f"hf://{evil.repo_id}@1.3.0")
    assert r.exit_code == 1
    line = one_error_line(r.stderr, "acme/sentiment@1.3.0", "publishes in this registry", "--name acme/sentiment")
    assert evil.repo_id in line and "name=" not in line
    with pytest.raises(ah.AdapterHubError) as err:  # from Python the hint names the keyword
        reg.pull(f"hf://{evil.repo_id}@1.3.0")
    assert "pull with name='acme/sentiment'" in err.value.hint and "--name" not in err.value.hint
    assert [v.version for v in reg.versions("acme/sentiment")] == ["0.0.1"]
    r = invoke("pull", f"hf://{evil.repo_id}@1.3.0", "--name", "acme/other")
    assert r.exit_code == 1
    one_error_line(r.stderr, "not acme/other")

    r = invoke("pull", f"hf://{evil.repo_id}@1.3.0", "--name", "acme/sentiment", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["origin"] == f"hf://{evil.repo_id}@{evil.tags['1.3.0']}"
    info = reg.show("acme/sentiment@1.3.0")
    assert info.source == out["origin"] and info.to_dict()["source"] == out["origin"]
    assert reg.show("acme/sentiment@0.0.1").source is None
    # a second repo serving the same name is refused too: the name now has two origins
    other = mirror_to_olah(hub_server, src["fake"], SRC_REPO, repo_id=unique_repo_id("mimic"))
    r = invoke("pull", f"hf://{other.repo_id}@2.0.0")
    assert r.exit_code == 1 and "--name acme/sentiment" in r.stderr
    reg.close()


def test_repo_pushed_by_peft_without_manifest_is_imported(hub_env, lora_dir, base_dir):
    """Against olah: a repo holding only ``save_pretrained`` output (untagged, or tagged
    v1.0.0) is imported under the repo's name. Without a base its fingerprint is unknown and
    resolve says so (structural, "published without a base fingerprint"); ``--base PATH``
    pins it on import (exact)."""
    files = {p.name: p.read_bytes() for p in lora_dir.iterdir()}
    untagged = make_hub_repo(hub_env.mirrors, unique_repo_id("peft"), files)
    tagged = make_hub_repo(hub_env.mirrors, unique_repo_id("peft"), files, tags=["v1.0.0"])
    reg = ah.Registry.open()

    reg.pull(f"hf://{untagged.repo_id}")
    [listed] = reg.list()
    info = reg.show(f"{listed.name}@{listed.version}")
    assert info.name == untagged.repo_id and info.version == f"0.0.0-rev.g{untagged.head[:12]}"
    m = info.manifest
    assert m.base.fingerprint is None and m.provenance == {"source": f"hf://{untagged.repo_id}",
                                                           "commit": untagged.head}
    assert {f.path for f in m.files} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    [hit] = reg.resolve(base_dir)
    assert (hit.name, hit.verdict) == (untagged.repo_id, "structural")
    assert "adapter was published without a base fingerprint" in hit.reasons

    r = invoke("pull", f"hf://{tagged.repo_id}", "--base", str(base_dir), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == "1.0.0"
    pinned = reg.show(f"{tagged.repo_id}@1.0.0").manifest
    assert pinned.base.fingerprint == ah.fingerprint(base_dir).digest
    hits = {h.name: h for h in reg.resolve(base_dir)}
    assert hits[tagged.repo_id].verdict == "exact" and hits[untagged.repo_id].verdict == "structural"
    r = invoke("resolve", "--base", str(base_dir))
    assert "adapter was published without a base fingerprint" in r.stdout
    # the unpinned import cannot be pinned afterwards (versions never change): say so and how
    r = invoke("pull", f"hf://{untagged.repo_id}", "--base", str(base_dir))
    assert r.exit_code != 0
    assert "before without a base" in r.output and "new version with --base" in r.output
    reg.close()


def test_repo_whose_files_differ_from_its_manifest_is_refused(hub_env, src, tmp_path):
    """Against olah: the tag 1.2.0 holds the pushed manifest but a modified adapter config and
    weights (same tensor shapes, other bytes). The pull is refused naming exactly those files,
    nothing is recorded and --out is not written."""

    def tamper(version, files):
        if version != "1.2.0":
            return files
        files = dict(files)
        w = bytearray(files["adapter_model.safetensors"])
        w[-8:] = bytes(b ^ 0xFF for b in w[-8:])  # tensor data, not the header
        files["adapter_model.safetensors"] = bytes(w)
        files["adapter_config.json"] = files["adapter_config.json"] + b"\n"
        return files

    repo = mirror_to_olah(hub_env, src["fake"], SRC_REPO, unique_repo_id("tampered"), tamper=tamper)
    out = tmp_path / "dest" / "out"
    r = invoke("pull", f"hf://{repo.repo_id}@1.2.0", "--out", str(out))
    assert r.exit_code == 1
    line = one_error_line(r.stderr, "acme/sentiment@1.2.0", "do not match the manifest",
                          "adapter_config.json", "adapter_model.safetensors")
    assert "README.md" not in line and MANIFEST not in line
    assert not out.exists() and not (tmp_path / "dest").exists()
    with ah.Registry.open() as reg:
        assert reg.list() == [] and reg.stats()["versions"] == 0
    blobs = Path(os.environ["ADAPTERHUB_HOME"]) / "blobs"
    assert not blobs.exists() or not [p for p in blobs.rglob("*") if p.is_file()]
    # the untouched versions of the same repo still pull
    r = invoke("pull", f"hf://{repo.repo_id}@1.3.0")
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- bases on the Hub (olah)


def test_base_on_the_hub_resolves_after_fingerprint_register_without_downloading(
        hub_env, src, base_dir, tmp_path):
    """Against olah: a base repo (weights stored as LFS) is identified as
    ``hf://ORG/MODEL@main`` from the Hub's file metadata (tree: LFS sha256 per weight file).
    Before anyone fingerprinted those files, resolve fails with a one-line hint to do so;
    after ``adapterhub fingerprint --register <local copy>``, resolve returns the exact
    adapters. No weights are downloaded: the HF cache holds no .safetensors afterwards."""
    base_files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    hub_base = make_hub_repo(hub_env.mirrors, unique_repo_id("base"), base_files)
    assert "model.safetensors" in base_files
    with ah.Registry.open() as reg:
        reg.publish(src["dirs"]["a"], name="acme/sentiment", version="1.2.0", base=base_dir, tasks=["sentiment"])
        reg.publish(src["dirs"]["b"], name="acme/unpinned", version="0.1.0")

    ref = f"hf://{hub_base.repo_id}@main"
    before = invoke("resolve", "--base", ref)
    assert before.exit_code == 1
    one_error_line(before.stderr, f"base {hub_base.repo_id}@main", "has not been fingerprinted",
                   "adapterhub fingerprint --register")

    local_copy = shutil.copytree(base_dir, tmp_path / "local-copy-of-base")
    registered = invoke("fingerprint", "--register", str(local_copy), "--json")
    assert registered.exit_code == 0, registered.output
    fp = json.loads(registered.stdout)["fingerprint"]

    after = run_cli("resolve", "--base", ref, "--json")  # the installed command, env from hub_env
    assert after.returncode == 0, after.stderr
    hits = [(h["name"], h["version"], h["verdict"]) for h in json.loads(after.stdout)]
    assert hits == [("acme/sentiment", "1.2.0", "exact"), ("acme/unpinned", "0.1.0", "structural")]
    with ah.Registry.open() as reg:
        found = reg.find_base(hub=(hub_base.repo_id, hub_base.head))  # the Hub id is remembered
        assert found is not None and found.digest == ah.fingerprint(base_dir).digest
        assert fp == found.digest
        # the Python API takes the same Hub id
        assert [(m.name, m.verdict) for m in reg.resolve(ref, task="sentiment")] == [("acme/sentiment", "exact")]

    hub_cache = Path(os.environ["HF_HOME"]) / "hub"
    cached = [p for p in hub_cache.rglob("*") if p.is_file()] if hub_cache.exists() else []
    weights = {sha256(base_files["model.safetensors"])}
    assert not [p for p in cached if p.name.endswith(".safetensors") or p.name in weights], cached
    assert sum(p.stat().st_size for p in cached) < len(base_files["model.safetensors"])
    # and the server saw only metadata requests for the base repo (commit, tree), no file GET
    def requests_for_base() -> list[str]:
        return [x for x in hub_env.log_path.read_text(errors="replace").splitlines() if f"/{hub_base.repo_id}/" in x]
    _wait_for(lambda: any("/tree/" in x for x in requests_for_base()), 10, "olah's request log")
    assert not [x for x in requests_for_base() if "/resolve/" in x]


def test_register_base_file_digests_python(hub_env, base_dir, tmp_path):
    """Against olah: ``register_base(path, file_digests=True)`` records each weight file's
    sha256, which is what identifies ``hf://ORG/MODEL`` (any revision with those files)."""
    base_files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    hub_base = make_hub_repo(hub_env.mirrors, unique_repo_id("base"), base_files, tags=["v1"])
    hub_base.add_commit({"README.md": "# a card\n"})  # main moves on, the weights do not
    first = hub_base.shas[0]
    with ah.Registry.open() as reg:
        with pytest.raises(ah.NotFoundError, match="has not been fingerprinted"):
            reg.resolve(f"hf://{hub_base.repo_id}")
        plain = reg.register_base(base_dir)  # without file digests: still unknown on the Hub
        with pytest.raises(ah.NotFoundError):
            HubClient().identify_base(reg, hub_base.repo_id, "v1")
        fp = reg.register_base(shutil.copytree(base_dir, tmp_path / "copy"), file_digests=True)
        assert fp.digest == plain.digest
        for rev in ("v1", "main", None, first):
            assert HubClient().identify_base(reg, hub_base.repo_id, rev).digest == fp.digest
        # a tag, a branch or a full commit sha after '@' (a sha may start with a digit)
        for ref in (f"hf://{hub_base.repo_id}@v1", f"hf://{hub_base.repo_id}@{first}",
                    f"hf://{hub_base.repo_id}@{'0' + first[1:]}"):
            assert parse_hub_ref(ref).spec == ref.rpartition("@")[2]
        assert reg.resolve(f"hf://{hub_base.repo_id}@{first}") == []
        assert reg.find_base(hub=(hub_base.repo_id, first)).digest == fp.digest


def test_deployment_loads_a_base_by_hub_id(hub_env, base_dir, lora_dir):
    """Against olah: ``Deployment("hf://ORG/MODEL@REV")`` downloads the base once (revision
    = a tag here), fingerprints it, and attaches an adapter pinned to the same weights."""
    base_files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    hub_base = make_hub_repo(hub_env.mirrors, unique_repo_id("base"), base_files, tags=["v1"])
    with ah.Registry.open() as reg:
        reg.publish(lora_dir, name="acme/deploy", version="1.0.0", base=base_dir)
        dep = ah.Deployment(f"hf://{hub_base.repo_id}@v1", registry=reg)
        assert dep.fingerprint.digest == ah.fingerprint(base_dir).digest
        assert dep.attach("acme/deploy@1.0.0").verdict == "exact"


# --------------------------------------------------------------------------- offline and unreachable


def test_offline_and_unreachable_hub_one_line_local_commands_keep_working(
        hub_env, olah_repo, src, base_dir, tmp_path, monkeypatch):
    """Subprocesses with the real environment (huggingface_hub reads it at import): with
    HF_HUB_OFFLINE=1, while the server is up, ``pull hf://`` and ``resolve --base hf://``
    print one line and exit 1 while a local ``resolve`` lists a version pulled from the Hub
    earlier; with HF_ENDPOINT at a closed port, ``pull hf://`` prints one line and exits 1.
    Then in-process, offline: ``push`` fails the same way; ``list``, ``show`` and a local
    ``pull`` work."""
    with ah.Registry.open() as reg:
        reg.pull(f"hf://{olah_repo.repo_id}@1.2.0")  # online, in-process: recorded locally
    offline = {"HF_HUB_OFFLINE": "1"}
    dead = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    failing = [
        (("pull", f"hf://{olah_repo.repo_id}@1.2.0"), offline, "HF_HUB_OFFLINE is set"),
        (("resolve", "--base", "hf://test-org/some-base@main"), offline, "HF_HUB_OFFLINE is set"),
        (("pull", f"hf://{olah_repo.repo_id}@1.2.0", "--out", str(tmp_path / "x")), dead, "not reachable"),
    ]
    runs = [(args, env) for args, env, _ in failing] + [(("resolve", "--base", str(base_dir)), offline)]
    procs = [subprocess.Popen([ADAPTERHUB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) for args, env in runs]  # concurrently: start-up dominates
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    for (args, _, needle), (out, err, rc) in zip(failing, results):
        assert rc == 1 and out == "", (args, out, err)
        one_error_line(err, needle)
    out, err, rc = results[-1]
    assert rc == 0 and "Traceback" not in err, err
    assert re.search(r"exact\s+acme/sentiment@1.2.0", out), out
    assert not (tmp_path / "x").exists()

    go_offline(monkeypatch)  # in-process from here
    r = invoke("--registry", src["url"], "--blobs", str(src["blobs"]),
               "push", "acme/sentiment@1.2.0", "--to", "hf://test-org/anything")
    assert r.exit_code == 1
    one_error_line(r.stderr, "hf://test-org/anything", "HF_HUB_OFFLINE is set")
    with pytest.raises(HubUnavailableError):
        src["reg"].push("acme/sentiment@1.2.0", to="hf://test-org/anything")
    assert "acme/sentiment@1.2.0" in invoke("list").stdout
    assert invoke("show", "acme/sentiment@1.2.0").exit_code == 0
    r = invoke("pull", "acme/sentiment@^1", "--out", str(tmp_path / "local"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "local" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- interrupted download


class _StallingProxy(ThreadingHTTPServer):
    """A pass-through HTTP proxy in front of olah. While ``stall`` is set, a GET of
    ``adapter_model.safetensors`` gets the headers and half the body, then the connection is
    held open (``stalled`` is set at that point) until ``release``. ``gets`` logs the file
    downloads (``/resolve/`` paths) it served."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.stall = True
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.gets: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._forward(send_body=False)

    def do_GET(self):
        self._forward(send_body=True)

    def _forward(self, send_body: bool):
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        length = resp.getheader("content-length") if not send_body else str(len(body))
        if length is not None:
            self.send_header("Content-Length", length)
        self.send_header("Connection", "close")
        self.end_headers()
        if not send_body:
            return
        if "/resolve/" in self.path:
            self.server.gets.append(self.path.rpartition("/resolve/")[2].partition("/")[2])
        if self.server.stall and self.path.endswith("/adapter_model.safetensors") and resp.status == 200:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.server.stalled.set()
            self.server.release.wait(60)
            return  # the connection closes short of Content-Length
        self.wfile.write(body)


def _wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_interrupted_download_leaves_nothing_and_a_retry_succeeds(hub_env, olah_repo, src, tmp_path, monkeypatch):
    """Against olah, through a pass-through proxy that stalls the weights half-way: the CLI
    ``adapterhub pull hf://...@1.2.0 --out DIR`` subprocess is SIGKILLed while it is provably
    mid-download (the proxy has sent half of adapter_model.safetensors and signalled it; the
    other files have landed in the HF cache). Deterministic, and as abrupt as an interruption
    gets: no cleanup handler runs. Afterwards DIR does not exist and nothing is recorded.
    The same pull then succeeds, fetching only the interrupted file (the rest comes from the
    cache), and yields the verified version."""
    proxy = _StallingProxy(hub_env.endpoint)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "dest"
        out = dest / "sentiment"
        ref = f"hf://{olah_repo.repo_id}@1.2.0"
        n_files = len(src["fake"].files_at(SRC_REPO, src["pushes"]["1.2.0"].commit))
        snapshot = (Path(os.environ["HF_HOME"]) / "hub" / f"models--{olah_repo.repo_id.replace('/', '--')}"
                    / "snapshots" / olah_repo.tags["1.2.0"])

        def cached() -> set[str]:
            return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                    if p.is_symlink() or p.is_file()} if snapshot.is_dir() else set()

        proc = subprocess.Popen([ADAPTERHUB, "pull", ref, "--out", str(out)],
                                env={**os.environ, "HF_ENDPOINT": proxy.endpoint},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proxy.stalled.wait(120), "the weights download never started"
            _wait_for(lambda: len(cached()) == n_files - 1, what="the other files in the HF cache")
            assert proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        proxy.stall = False
        proxy.release.set()

        assert not out.exists()
        assert not dest.exists() or not any(dest.iterdir())  # no half-written temp dir either
        with ah.Registry.open() as reg:
            assert reg.list() == []
        assert "adapter_model.safetensors" not in cached()

        proxy.gets.clear()  # the retry, through the same proxy (in-process: same command)
        monkeypatch.setattr(hf_constants, "ENDPOINT", proxy.endpoint)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            proxy.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        r = invoke("pull", ref, "--out", str(out))
        assert r.exit_code == 0, r.output
        assert proxy.gets == ["adapter_model.safetensors"]
        want = package_files(src["reg"], "acme/sentiment@1.2.0", tmp_path / "want")
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST} == want
        with ah.Registry.open() as reg:
            assert reg.show("acme/sentiment@1.2.0").digest == src["reg"].show("acme/sentiment@1.2.0").digest
    finally:
        proxy.release.set()
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


def _cache_snapshot(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache snapshot laid out as huggingface_hub writes it: blobs named by
    their sha256, and a snapshot folder of symlinks to them (real files, no server)."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, data in files.items():
        blob = repo_dir / "blobs" / sha256(data)
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


def test_register_verifies_a_hub_cache_snapshot_before_sharing_its_mapping(base_dir, tmp_path):
    """The files -> fingerprint and Hub commit -> fingerprint mappings are shared by everyone
    using the registry: a cached blob whose bytes no longer match its sha256 name is refused,
    and nothing is recorded for it."""
    files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    snap = _cache_snapshot(tmp_path / "hf-cache", "acme-org/llama-mini", files)
    with ah.Registry.open(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}") as reg:
        fp = reg.register_base(snap, file_digests=True)
        assert reg.find_base(hub=("acme-org/llama-mini", "c" * 40)).digest == fp.digest
        assert reg.find_base(files={"model.safetensors": sha256(files["model.safetensors"])}).digest == fp.digest

    bad = _cache_snapshot(tmp_path / "hf-cache-2", "acme-org/llama-bad", files)
    blob = (bad / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # tensor bytes, not the header
    blob.write_bytes(bytes(data))
    with ah.Registry.open(f"sqlite:///{tmp_path / 'reg2' / 'registry.db'}") as reg:
        with pytest.raises(ah.IntegrityError, match="model.safetensors in the Hugging Face cache does not match"):
            reg.register_base(bad, file_digests=True)
        assert reg.find_base(hub=("acme-org/llama-bad", "c" * 40)) is None
        reg.register_base(bad)  # without file digests: the path only, no shared Hub mapping
        assert reg.find_base(hub=("acme-org/llama-bad", "c" * 40)) is None


def test_a_version_tagged_twice_on_different_commits_is_refused(hub_env, hub_server, src):
    """Against olah: '1.3.0' and 'v1.3.0' on different commits name two adapters as one
    version; neither may win silently (it was the later-listed tag). Other versions pull."""
    repo = mirror_to_olah(hub_server, src["fake"], SRC_REPO, repo_id=unique_repo_id("twice"))
    repo.tag("v1.3.0", repo.tags["2.0.0"])
    reg = ah.Registry.open()
    for spec in ("1.3.0", "^1"):
        r = invoke("pull", f"hf://{repo.repo_id}@{spec}")
        assert r.exit_code == 1
        one_error_line(r.stderr, "1.3.0 has tags on different commits", "v1.3.0=", "delete the wrong tag")
    assert reg.list() == []
    r = invoke("pull", f"hf://{repo.repo_id}@~1.2", "--json")  # 1.2.x: unambiguous
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == "1.2.0"
    reg.close()

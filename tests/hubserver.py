"""A real, local Hugging Face Hub-compatible server for tests: ``olah`` serving git repositories.

``olah`` (PyPI, tested with 0.5.4) is a Hub mirror. With ``offline = true`` in its
``[accessibility]`` section it never contacts huggingface.co and answers the Hub API from
plain git repositories found under its ``mirrors-path``, laid out as
``<mirrors>/models/ORG/REPO`` (non-bare repos; default branch ``main``; versions are tags).
This module builds such repositories with the git CLI and runs olah in a subprocess, so
``huggingface_hub`` (tested with 2.4.0) talks real HTTP to a real server.

Usage (see tests/test_hubserver.py)::

    import hubserver
    from hubserver import make_hub_repo, unique_repo_id

    hub_server = hubserver.hub_server   # make the fixtures visible in this module (an
    hub_env = hubserver.hub_env         # assignment, not `from hubserver import hub_env`:
                                        # ruff reports imported fixtures used as args as F811)

    def test_download(hub_env):                      # hub_env: HF_* pointed at the server
        repo = make_hub_repo(hub_env.mirrors, "org/model-a",
                             {"config.json": b"{}", "model.safetensors": weights_bytes},
                             tags=["v1"])
        sha2 = repo.add_commit({"config.json": b'{"x": 1}'}, tags=["v2"])
        path = snapshot_download("org/model-a", revision="v1")   # endpoint from constants
        info = HfApi().model_info("org/model-a", revision="v2")  # info.sha == sha2

The server is session-scoped and shared: give every test its own repo id (e.g. with
``unique_repo_id()``). A session fixture defined in several test modules is instantiated once
per module, so once more than one module uses it, expose the fixtures in tests/conftest.py
instead (``from hubserver import hub_env, hub_server  # noqa: F401``) for a single server.
Startup takes ~3-5 s; each call then takes milliseconds. Repositories and commits created
while the server runs are visible at once (olah opens the git repo on every request;
nothing to restart or invalidate).

Pointing huggingface_hub at the server inside one pytest process
------------------------------------------------------------------
huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
into ``huggingface_hub.constants`` *at import time*, and the module-level functions
(``huggingface_hub.model_info`` ...) are bound methods of an ``HfApi`` built at import.
So setting env vars in a test is not enough. Either

* pass the endpoint explicitly: ``HfApi(endpoint=server.endpoint)``,
  ``hf_hub_download(..., endpoint=server.endpoint)``,
  ``snapshot_download(..., endpoint=server.endpoint, cache_dir=...)``; or
* use ``HubServer.configure_hf(monkeypatch, hf_home)`` (what the ``hub_env`` fixture does):
  it sets/deletes the env vars (for subprocesses) *and* monkeypatches
  ``constants.ENDPOINT``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE``,
  ``constants.HF_HUB_OFFLINE`` (False), ``constants.HF_HOME``/``HF_HUB_CACHE``/
  ``HF_ASSETS_CACHE``/``HF_XET_CACHE`` and ``huggingface_hub.hf_api.api.endpoint``, so plain
  ``HfApi()``, ``hf_hub_download``, ``snapshot_download`` and transformers'
  ``from_pretrained`` (which goes through them) use the server and a fresh cache.
  Checked by hand with transformers 5.24: ``AutoConfig``/``AutoModelForCausalLM
  .from_pretrained("org/repo", revision="v1" or "main")`` work; *without* ``revision`` the
  model load fails (OSError "not a valid model identifier", see the revision-less quirk
  below). Loading from ``snapshot_download(...)``'s local path always works.

The project's autouse fixture sets ``HF_HUB_OFFLINE=1``; ``configure_hf`` deletes it and
forces ``constants.HF_HUB_OFFLINE = False`` (an import under HF_HUB_OFFLINE=1 froze it True).
No other env var is needed: olah sends no Xet headers, so downloads use plain HTTP and
``HF_HUB_DISABLE_XET`` is unnecessary. Use a fresh ``HF_HOME`` per test: the hub cache keeps
``refs/<tag>`` -> sha files and per-commit tree listings, which would hide server changes.

What works (verified by tests/test_hubserver.py)
------------------------------------------------
* ``HfApi.model_info(repo_id, revision=<branch|tag|full sha>, files_metadata=True)``:
  ``.sha`` is the resolved commit sha, ``.siblings`` lists every file (``rfilename``), plus
  ``cardData``/``description`` from a README.md front matter.
* ``HfApi.list_repo_refs(repo_id)``: ``.branches`` and ``.tags`` with ``target_commit``
  (annotated tags are peeled to their commit).
* ``HfApi.list_repo_tree(repo_id, revision=..., recursive=True)`` and
  ``HfApi.get_paths_info(...)``: ``RepoFile.size``, ``.blob_id`` (git blob sha1) and, for
  files stored as LFS, ``.lfs.sha256`` / ``.lfs.size``. ``list_repo_files``, ``file_exists``,
  ``revision_exists`` work too.
* ``get_hf_file_metadata(hf_hub_url(...))``: ``commit_hash``, ``size``, and ``etag`` = the
  file's sha256 for LFS files (git blob sha1 for plain git files), like the real Hub.
* ``hf_hub_download(repo_id, filename, revision=<branch|tag|sha>)`` and
  ``snapshot_download(repo_id, revision=<branch|tag|sha>)``: right bytes, cache laid out as
  usual (``snapshots/<sha>/``, ``refs/<tag>`` containing the sha).

What does NOT work (olah 0.5.4 limitations)
-------------------------------------------
* ``model_info(..., files_metadata=True).siblings[i]`` has only ``rfilename``:
  ``size``, ``blob_id`` and ``lfs`` (hence the sha256) are always ``None`` -- olah ignores
  ``?blobs=true``. Get sha256/sizes from ``list_repo_tree``/``get_paths_info``
  (``RepoFile.lfs.sha256``) or from ``get_hf_file_metadata(...).etag`` instead, and store the
  files as LFS (see below), otherwise there is no sha256 anywhere.
* ``model_info(repo_id)`` / ``repo_info`` / ``repo_exists`` *without* a revision: olah looks
  the latest commit up in its proxy cache, not in the mirror -> 401 RepositoryNotFoundError
  (``repo_exists`` returns False). Always pass ``revision="main"`` (snapshot_download and
  hf_hub_download do that themselves, so they are fine).
* Tags or branches containing ``/`` (``release/v1``): refs lists them, but model_info and
  snapshot_download at them fail (404). Use tags without ``/``.
* Error types differ from the real Hub: a missing file, an unknown tag/revision or an unknown
  repo all give ``RepositoryNotFoundError`` (olah answers 401 RepoNotFound) from
  ``model_info``, ``hf_hub_download`` and ``snapshot_download`` -- never
  ``EntryNotFoundError``/``RevisionNotFoundError``. ``list_repo_refs`` of an unknown repo
  raises ``RemoteEntryNotFoundError`` (404).
* ``list_repo_commits`` (KeyError in huggingface_hub: olah's authors lack ``user``),
  ``list_models``/search (JSONDecodeError), ``whoami`` (504: olah forwards it upstream), and
  everything that writes: create_repo (405), upload_file/folder, create_commit, create_tag,
  delete_* -- there is no upload API; change the git repositories with
  ``HubRepo.add_commit``/``HubRepo.tag`` instead.
* olah's HTML index page ``/`` answers 500 with the installed starlette (harmless; the
  readiness probe uses an API route).
* Datasets (``repo_type="dataset"`` -> ``<mirrors>/datasets/ORG/REPO``) work the same way
  (dataset_info at a tag, refs and snapshot_download were checked by hand, not in the
  self-test); spaces are untested. Repo ids must be ``ORG/REPO``.
* olah bug: a plain-git (non-LFS) file of 121..149 bytes that is not valid UTF-8 makes every
  tree/paths-info/HEAD/GET touching it fail with 500 (and huggingface_hub retries for ~25s).
  ``make_hub_repo`` refuses to create such a file (ValueError); the default ``lfs="auto"``
  stores binary files as LFS anyway, which avoids it.

LFS without git-lfs
-------------------
olah detects LFS pointer blobs (``version https://git-lfs.github.com/spec/v1`` / ``oid
sha256:...`` / ``size N``) and serves the content from ``<repo>/.git/lfs/objects/aa/bb/<oid>``.
``make_hub_repo`` writes exactly that layout itself, so the ``git-lfs`` binary is NOT needed.
``lfs="auto"`` (default) stores a file as LFS when its name matches the Hub's default LFS
patterns (``*.safetensors``, ``*.bin``, ``*.pt`` ...) or its content is not UTF-8 text; pass
``lfs=True``/``False``, an iterable of repo paths, or a ``callable(path, data) -> bool``.
All git commands run with ``GIT_CONFIG_GLOBAL=/dev/null``/``GIT_CONFIG_NOSYSTEM=1`` so a
user's global git-lfs filters, hooks or commit signing cannot interfere. Requires only
``git`` (>= 2.28) on PATH and the ``olah`` package.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

FileValue = bytes | str | Path | None
LfsSpec = str | bool | Iterable[str] | Callable[[str, bytes], bool]

# The Hub's default .gitattributes LFS patterns (matched against the file's basename).
DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet",
    "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)

_GIT_IDENT = ["-c", "user.name=hubserver", "-c", "user.email=hubserver@example.invalid",
              "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
              "-c", "core.autocrlf=false", "-c", "core.hooksPath=/dev/null"]


# --------------------------------------------------------------------------- git repositories


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               LC_ALL="C")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    return env


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *_GIT_IDENT, *args], cwd=cwd, env=_git_env(),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd} ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs v1 pointer text for ``data`` (what the real Hub stores in git)."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _wants_lfs(spec: LfsSpec, path: str, data: bytes) -> bool:
    if spec is True or spec is False:
        return spec
    if spec == "auto":
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, pat) for pat in DEFAULT_LFS_PATTERNS) or not _is_text(data)
    if callable(spec):
        return bool(spec(path, data))
    if isinstance(spec, str):
        raise ValueError(f"lfs must be 'auto', a bool, paths or a callable, not {spec!r}")
    return path in set(spec)


def _expand_files(files: Mapping[str, FileValue]) -> dict[str, bytes | None]:
    """Repo path -> bytes (None = delete). A Path to a directory maps its whole tree under the key."""
    out: dict[str, bytes | None] = {}
    for key, value in files.items():
        rpath = key.strip("/")
        if isinstance(value, Path) and value.is_dir():
            for f in sorted(p for p in value.rglob("*") if p.is_file()):
                rel = f.relative_to(value).as_posix()
                out[f"{rpath}/{rel}" if rpath not in ("", ".") else rel] = f.read_bytes()
            continue
        parts = rpath.split("/")
        if not rpath or parts[0] == ".git" or ".." in parts or "." in parts or "" in parts:
            raise ValueError(f"invalid repo path {key!r}")
        if value is None:
            out[rpath] = None
        elif isinstance(value, Path):
            out[rpath] = value.read_bytes()
        elif isinstance(value, str):
            out[rpath] = value.encode("utf-8")
        elif isinstance(value, bytes | bytearray | memoryview):
            out[rpath] = bytes(value)
        else:
            raise TypeError(f"{key!r}: expected bytes, str, Path or None, got {type(value).__name__}")
    return out


def repo_dir(mirrors: Path, repo_id: str, repo_type: str = "model") -> Path:
    """Where olah looks for ``repo_id``: ``<mirrors>/<repo_type>s/ORG/REPO``."""
    org, sep, name = repo_id.partition("/")
    if not sep or not org or not name or "/" in name:
        raise ValueError(f"repo_id must be 'ORG/REPO', got {repo_id!r}")
    if repo_type not in ("model", "dataset", "space"):
        raise ValueError(f"repo_type must be model, dataset or space, got {repo_type!r}")
    return Path(mirrors) / f"{repo_type}s" / org / name


@dataclass
class HubCommit:
    """One commit for ``make_hub_repo(commits=[...])`` (a plain dict with these keys works too)."""

    files: Mapping[str, FileValue]
    tags: Sequence[str] = ()
    message: str | None = None


@dataclass
class HubRepo:
    """A git repository served by olah. ``shas``: commit shas, oldest first; ``tags``: name -> sha."""

    repo_id: str
    path: Path
    repo_type: str = "model"
    lfs: LfsSpec = "auto"
    shas: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.shas[-1]

    def add_commit(self, files: Mapping[str, FileValue], *, tags: Sequence[str] = (),
                   message: str | None = None, lfs: LfsSpec | None = None) -> str:
        """Commit ``files`` on ``main`` (value None deletes the path), tag it, return its sha.

        Files not named keep their previous content. ``lfs`` overrides the repo's LFS rule."""
        spec = self.lfs if lfs is None else lfs
        expanded = _expand_files(files)
        if not expanded:
            raise ValueError("a commit needs at least one file change")
        for rpath, data in expanded.items():
            target = self.path / rpath
            if data is None:  # deletion: `git add -A` below records it
                if target.is_file():
                    target.unlink()
                continue
            if _wants_lfs(spec, rpath, data):
                oid = hashlib.sha256(data).hexdigest()
                obj = self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                if not obj.exists():
                    obj.write_bytes(data)
                blob = lfs_pointer(data)
            else:
                if 120 < len(data) < 150 and not _is_text(data):
                    raise ValueError(
                        f"{rpath}: olah 0.5.4 crashes (HTTP 500) on non-LFS files of 121..149 bytes "
                        "that are not UTF-8; store it as LFS or change its size")
                blob = data
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
        _git(self.path, "add", "-A")
        msg = message or f"commit {len(self.shas) + 1}"
        _git(self.path, "commit", "-q", "--allow-empty", "-m", msg)
        sha = _git(self.path, "rev-parse", "HEAD")
        self.shas.append(sha)
        for t in tags:
            self.tag(t, sha)
        return sha

    def tag(self, name: str, rev: str = "HEAD", *, annotated: bool = False,
            force: bool = False) -> str:
        """Create (or with ``force`` move) tag ``name`` at ``rev``; returns the tagged commit sha.
        Avoid ``/`` in tag names: olah cannot resolve such revisions."""
        args = ["tag"] + (["-a", "-m", name] if annotated else []) + (["-f"] if force else [])
        _git(self.path, *args, name, rev)
        sha = _git(self.path, "rev-parse", f"{name}^{{commit}}")
        self.tags[name] = sha
        return sha

    def rev_parse(self, rev: str) -> str:
        return _git(self.path, "rev-parse", f"{rev}^{{commit}}")


def make_hub_repo(mirrors: Path, repo_id: str, files: Mapping[str, FileValue] | None = None,
                  tags: Sequence[str] | None = None,
                  commits: Sequence[HubCommit | Mapping[str, Any]] | None = None, *,
                  repo_type: str = "model", lfs: LfsSpec = "auto") -> HubRepo:
    """Create a git repo at ``<mirrors>/models/ORG/REPO`` (branch ``main``) that olah serves.

    ``files`` (repo path -> bytes | str | Path | None; a Path to a directory adds its whole
    tree under that key, ``""`` for the root) becomes the first commit, tagged with ``tags``.
    Each entry of ``commits`` (``HubCommit`` or dict with ``files``/``tags``/``message``) is
    committed after it, on top. Returns a ``HubRepo``: ``.shas`` (oldest first), ``.tags``,
    ``.head``, ``.add_commit(files, tags=...)`` and ``.tag(name, rev)`` for later changes."""
    path = repo_dir(mirrors, repo_id, repo_type)
    if path.exists():
        raise FileExistsError(f"{path} already exists; use a unique repo id per test")
    if files is None and not commits:
        raise ValueError("make_hub_repo needs files or commits")
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    repo = HubRepo(repo_id=repo_id, path=path, repo_type=repo_type, lfs=lfs)
    plan: list[HubCommit] = []
    if files is not None:
        plan.append(HubCommit(files=files, tags=tuple(tags or ())))
    elif tags:
        raise ValueError("tags without files: put the tags in the commits entries")
    for c in commits or ():
        plan.append(c if isinstance(c, HubCommit) else HubCommit(**dict(c)))
    for c in plan:
        repo.add_commit(c.files, tags=c.tags, message=c.message)
    return repo


def unique_repo_id(prefix: str = "model", org: str = "test-org") -> str:
    """A fresh ``ORG/REPO`` id, so tests sharing the session server never collide."""
    return f"{org}/{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the olah server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class HubServer:
    endpoint: str
    mirrors: Path
    root: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of olah's stdout/stderr (request log and tracebacks)."""
        return _tail(self.log_path, lines)

    def make_repo(self, repo_id: str, files: Mapping[str, FileValue] | None = None,
                  tags: Sequence[str] | None = None, **kw: Any) -> HubRepo:
        return make_hub_repo(self.mirrors, repo_id, files, tags, **kw)

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        assert self.alive(), f"olah exited ({self.process.returncode}); log tail:\n{self.log_tail()}"

    def configure_hf(self, monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
        """Point huggingface_hub (this process and subprocesses) at the server, online, with a
        fresh cache under ``hf_home``. See the module docstring for why constants are patched."""
        hf_home = Path(hf_home)
        hub_cache, assets, xet = hf_home / "hub", hf_home / "assets", hf_home / "xet"
        monkeypatch.setenv("HF_ENDPOINT", self.endpoint)
        monkeypatch.setenv("HF_HOME", str(hf_home))
        monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
        monkeypatch.setenv("HF_ASSETS_CACHE", str(assets))
        monkeypatch.setenv("HF_XET_CACHE", str(xet))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE",
                    "HUGGINGFACE_CO_STAGING"):
            monkeypatch.delenv(var, raising=False)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        monkeypatch.setenv("NO_PROXY", no_proxy)
        monkeypatch.setenv("no_proxy", no_proxy)

        from huggingface_hub import constants, hf_api

        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(assets))
        monkeypatch.setattr(constants, "HF_XET_CACHE", str(xet))
        monkeypatch.setattr(hf_api.api, "endpoint", self.endpoint)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


class _PortTaken(RuntimeError):
    pass


def _write_config(root: Path, mirrors: Path, port: int) -> Path:
    def q(p: Path) -> str:  # TOML basic string
        return '"' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'

    cfg = root / "olah.toml"
    cfg.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"repos-path = {q(root / 'olah-cache')}\n"
        f"mirrors-path = [{q(mirrors)}]\n"
        "metadata-cache-ttl = 0\n"
        "\n[accessibility]\n"
        "offline = true\n"
    )
    return cfg


def _launch(root: Path, mirrors: Path, startup_timeout: float) -> HubServer:
    port = _free_port()
    cfg = _write_config(root, mirrors, port)
    log_path = root / f"olah-{port}.log"
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", HOME=str(root / "home"), GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    (root / "home").mkdir(exist_ok=True)
    cmd = [sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())",
           "--config", str(cfg), "--log-path", str(root / "olah-logs")]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    server = HubServer(endpoint=f"http://127.0.0.1:{port}", mirrors=mirrors, root=root,
                       log_path=log_path, process=proc)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log_tail()
            exc = _PortTaken if "address already in use" in tail.lower() else RuntimeError
            raise exc(f"olah exited with {proc.returncode} during startup "
                      f"(port {port}); log tail:\n{tail}")
        # olah's index page "/" is broken (500) with current starlette; probe an API route
        # instead: an unknown repo answers 401 with olah's own x-error-code header.
        try:
            _NO_PROXY_OPENER.open(server.endpoint + "/api/models/hubserver/probe/refs", timeout=2)
            return server
        except urllib.error.HTTPError as err:
            if err.headers.get("x-error-code"):
                return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"olah did not answer on {server.endpoint} within {startup_timeout}s; "
                       f"log tail:\n{server.log_tail()}")


@contextlib.contextmanager
def start_hub_server(root: Path, *, mirrors: Path | None = None, startup_timeout: float = 60.0,
                     attempts: int = 3) -> Iterator[HubServer]:
    """Run olah (offline, serving ``mirrors``, default ``<root>/mirrors``) on a free port of
    127.0.0.1 until the block exits. Retries with a new port if the port was taken meanwhile."""
    root = Path(root)
    mirrors = Path(mirrors) if mirrors is not None else root / "mirrors"
    (mirrors / "models").mkdir(parents=True, exist_ok=True)
    server = None
    for attempt in range(1, attempts + 1):
        try:
            server = _launch(root, mirrors, startup_timeout)
            break
        except _PortTaken:  # the free port was grabbed before olah bound it: new port
            if attempt == attempts:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One olah server for the session: ``.endpoint`` (http://127.0.0.1:PORT), ``.mirrors``."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pytest.importorskip("olah", reason="install olah (PyPI) to run the local Hub server tests")
    with start_hub_server(tmp_path_factory.mktemp("hubserver")) as server:
        yield server


@pytest.fixture
def hub_env(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> HubServer:
    """``hub_server`` with huggingface_hub pointed at it (online) and a fresh HF_HOME
    (``<tmp_path>/hf_home``) for this test; all undone after the test."""
    hub_server.check_alive()
    hub_server.configure_hf(monkeypatch, tmp_path / "hf_home")
    return hub_server

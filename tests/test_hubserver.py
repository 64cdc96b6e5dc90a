"""Self-test of tests/hubserver.py: huggingface_hub against a real olah server on 127.0.0.1.

Each supported call from the hubserver docstring is exercised end to end over HTTP; the
documented limitations that are cheap to observe are asserted too, so a change in olah or
huggingface_hub behaviour shows up here first."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import hubserver
import pytest
from hubserver import HubCommit, HubServer, lfs_pointer, make_hub_repo, unique_repo_id
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

# The fixtures, made visible to this module. (Assigned rather than imported by name: ruff
# flags an imported fixture used as an argument as F811.)
hub_server = hubserver.hub_server
hub_env = hubserver.hub_env

WEIGHTS_V1 = os.urandom(200_000)
WEIGHTS_V2 = os.urandom(150_000)
CONFIG_V1 = b'{"hidden_size": 32}\n'
CONFIG_V2 = b'{"hidden_size": 64}\n'
README = b"---\nlicense: mit\n---\n# Test model\n"
V1_FILES = {"config.json": CONFIG_V1, "model.safetensors": WEIGHTS_V1,
            "README.md": README, "sub/notes.txt": "plain text file\n"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def repo(hub_server: HubServer):
    """v1: first commit (lightweight tag); v2: second commit (annotated tag) = main."""
    r = make_hub_repo(hub_server.mirrors, unique_repo_id("shared"), V1_FILES, tags=["v1"])
    r.add_commit({"config.json": CONFIG_V2, "model.safetensors": WEIGHTS_V2,
                  "sub/notes.txt": None})
    r.tag("v2", annotated=True)
    return r


def test_model_info_at_tag_main_and_sha(hub_env, repo):
    api = HfApi()  # endpoint comes from the patched constants
    v1 = api.model_info(repo.repo_id, revision="v1", files_metadata=True)
    assert v1.id == repo.repo_id
    assert v1.sha == repo.shas[0] == repo.tags["v1"]
    assert sorted(s.rfilename for s in v1.siblings) == sorted(V1_FILES)
    assert v1.card_data is not None and v1.card_data.get("license") == "mit"

    main = api.model_info(repo.repo_id, revision="main", files_metadata=True)
    assert main.sha == repo.head == repo.tags["v2"]
    assert "sub/notes.txt" not in {s.rfilename for s in main.siblings}
    assert api.model_info(repo.repo_id, revision=repo.shas[0]).sha == repo.shas[0]
    # olah limitation: siblings carry no size/blob id/lfs even with files_metadata=True.
    assert all(s.lfs is None and s.size is None for s in main.siblings)


def test_list_repo_refs_tags(hub_env, repo):
    refs = HfApi().list_repo_refs(repo.repo_id)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": repo.shas[0], "v2": repo.shas[1]}
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", repo.head)]


def test_sha256_from_tree_paths_info_and_file_metadata(hub_env, repo):
    api = HfApi()
    tree = {f.path: f for f in api.list_repo_tree(repo.repo_id, revision="v1", recursive=True)
            if isinstance(f, RepoFile)}
    assert set(tree) == set(V1_FILES)
    weights = tree["model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == sha256(WEIGHTS_V1) and weights.size == len(WEIGHTS_V1)
    assert tree["config.json"].lfs is None and tree["config.json"].size == len(CONFIG_V1)

    [info] = api.get_paths_info(repo.repo_id, ["model.safetensors"], revision="v2")
    assert info.lfs.sha256 == sha256(WEIGHTS_V2)

    meta = get_hf_file_metadata(hf_hub_url(repo.repo_id, "model.safetensors", revision="v1"))
    assert meta.etag == sha256(WEIGHTS_V1)
    assert meta.commit_hash == repo.shas[0] and meta.size == len(WEIGHTS_V1)


def test_snapshot_download_tag_into_fresh_cache(hub_env, repo, tmp_path):
    path = Path(snapshot_download(repo.repo_id, revision="v1"))
    hub_cache = tmp_path / "hf_home" / "hub"
    assert path == hub_cache / f"models--{repo.repo_id.replace('/', '--')}" / "snapshots" / repo.shas[0]
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == {k: v.encode() if isinstance(v, str) else v for k, v in V1_FILES.items()}
    assert (path.parent.parent / "refs" / "v1").read_text() == repo.shas[0]

    # A full commit sha and an annotated tag both resolve.
    at_sha = Path(snapshot_download(repo.repo_id, revision=repo.shas[1]))
    assert (at_sha / "model.safetensors").read_bytes() == WEIGHTS_V2
    assert Path(snapshot_download(repo.repo_id, revision="v2")) == at_sha
    assert not (at_sha / "sub").exists()


def test_hf_hub_download_one_file(hub_env, repo):
    p = hf_hub_download(repo.repo_id, "model.safetensors", revision="v1")
    assert Path(p).read_bytes() == WEIGHTS_V1
    assert Path(hf_hub_download(repo.repo_id, "config.json")).read_bytes() == CONFIG_V2


def test_explicit_endpoint_without_configure_hf(hub_server, repo, tmp_path, monkeypatch):
    """The other way: pass endpoint=/cache_dir= explicitly. Offline mode must still be undone
    (the project's autouse fixture sets HF_HUB_OFFLINE=1, maybe before huggingface_hub's import)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    ep, cache = hub_server.endpoint, tmp_path / "cache"
    api = HfApi(endpoint=ep)
    assert api.model_info(repo.repo_id, revision="v1").sha == repo.shas[0]
    assert "v1" in {t.name for t in api.list_repo_refs(repo.repo_id).tags}
    p = hf_hub_download(repo.repo_id, "config.json", revision="v1", endpoint=ep, cache_dir=cache)
    assert Path(p).read_bytes() == CONFIG_V1
    snap = snapshot_download(repo.repo_id, revision="v2", endpoint=ep, cache_dir=cache)
    assert (Path(snap) / "model.safetensors").read_bytes() == WEIGHTS_V2


def test_commits_added_while_running_are_visible(hub_env, tmp_path):
    d = tmp_path / "saved"
    (d / "nested").mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "nested" / "adapter_model.safetensors").write_bytes(b"\x00\x01" * 500)
    r = make_hub_repo(hub_env.mirrors, unique_repo_id("later"), {"": d}, tags=["v1"],
                      commits=[HubCommit({"extra.bin": b"\xff" * 10}, tags=["v2"])])
    api = HfApi()
    assert api.model_info(r.repo_id, revision="main").sha == r.tags["v2"] == r.shas[1]
    sha3 = r.add_commit({"adapter_config.json": '{"r": 8}'}, tags=["v3"])
    assert api.model_info(r.repo_id, revision="v3").sha == sha3
    assert api.model_info(r.repo_id, revision="main").sha == sha3
    snap = Path(snapshot_download(r.repo_id, revision="v1"))
    assert (snap / "nested" / "adapter_model.safetensors").read_bytes() == b"\x00\x01" * 500
    assert not (snap / "extra.bin").exists()
    assert (Path(snapshot_download(r.repo_id, revision="v3")) / "adapter_config.json").read_text() == '{"r": 8}'


def test_documented_limitations(hub_env, repo):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):  # no revision -> olah looks in its proxy cache
        api.model_info(repo.repo_id)
    assert api.repo_exists(repo.repo_id) is False
    with pytest.raises(RepositoryNotFoundError):  # not EntryNotFoundError
        hf_hub_download(repo.repo_id, "missing.txt", revision="v1")


def test_lfs_layout_and_olah_crash_guard(tmp_path):
    data = os.urandom(130)
    r = make_hub_repo(tmp_path, "org/layout", {"w.bin": data, "t.txt": "x"})
    oid = sha256(data)
    assert (r.path / ".git/lfs/objects" / oid[:2] / oid[2:4] / oid).read_bytes() == data
    assert (r.path / "w.bin").read_bytes() == lfs_pointer(data)
    assert (r.path / "t.txt").read_bytes() == b"x"
    with pytest.raises(ValueError, match="121..149"):
        r.add_commit({"raw.dat": data}, lfs=False)
    with pytest.raises(FileExistsError):
        make_hub_repo(tmp_path, "org/layout", {"a": b"b"})

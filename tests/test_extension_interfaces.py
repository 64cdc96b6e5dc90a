"""The seams later issues add object storage and OCI registries through: remotes chosen by
URL scheme (hook ``register_remotes``) and blob stores behind declared protocols
(:mod:`adapterhub_sdk.interfaces`). A remote here is a real one, kept in a directory; the
core must route pull, push and base lookups to it exactly as it does ``hf://``."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.blobs import BlobStore
from adapterhub_sdk.interfaces import (
    BlobStorage,
    QuarantiningBlobStorage,
    Remote,
    StagingBlobStorage,
)
from adapterhub_sdk.plugins import plugin_infos, register_plugin, unregister_plugin
from adapterhub_sdk.registry import MANIFEST_FILE
from adapterhub_sdk.remotes import get_remote, remote_for

from conftest import run_cli

PKG = Path(__file__).resolve().parent.parent / "adapterhub_sdk"


@dataclass
class _Pushed:
    repo: str
    version: str
    commit: str

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "version": self.version, "commit": self.commit}


class DirRemote:
    """``dir:///ROOT[@VERSION]``: a remote registry in a directory, one PEFT directory (with
    its manifest) per version. A base URL ``dir:///PATH`` names a local model directory."""

    def _split(self, url: str) -> tuple[Path, str | None]:
        body, _, spec = url.removeprefix("dir://").partition("@")
        return Path(body), spec or None

    def push(self, registry, ref, to, *, private=None):
        root, _ = self._split(to)
        info = registry.show(ref)
        registry.pull(f"{info.name}@{info.version}", root / info.version)
        return _Pushed(str(root), info.version, info.digest)

    def pull(self, registry, ref, dest=None, *, base=None, overwrite=False, name=None):
        root, spec = self._split(ref)
        version = spec or str(max(self.versions(ref)))
        folder = root / version
        manifest = ah.Manifest.from_json((folder / MANIFEST_FILE).read_bytes())
        registry.import_version(manifest, {f.path: folder / f.path for f in manifest.files},
                                origin=f"dir://{root}@{version}")
        if dest is not None:
            registry.pull(f"{manifest.name}@{manifest.version}", dest, overwrite=overwrite)
        return registry.show(f"{manifest.name}@{manifest.version}")

    def versions(self, url):
        root, _ = self._split(url)
        return {ah.Version.parse(d.name): d.name for d in root.iterdir() if (d / MANIFEST_FILE).is_file()}

    def resolve(self, base, *, task=None, author=None, limit=50):
        raise NotImplementedError  # not reached by these tests

    def identify_base(self, registry, url):
        return registry.register_base(self.fetch_base(url))

    def fetch_base(self, url):
        return self._split(url)[0]

    def model_id(self, url):
        return self._split(url)[0].name


@pytest.fixture
def dir_remote():
    made: list[str] = []

    class Plugin:
        @ah.hookimpl
        def register_remotes(self, register):
            def factory(url):
                made.append(url)
                return DirRemote()

            register("dir", factory)

    plugin = Plugin()
    register_plugin(plugin, name="dir-remote")
    try:
        yield made
    finally:
        unregister_plugin(plugin)


def test_a_remote_plugin_is_used_by_push_pull_and_base_lookups(tmp_path, lora_dir, base_dir, dir_remote):
    src = ah.Registry.open(f"sqlite:///{tmp_path / 'src' / 'r.db'}")
    src.publish(lora_dir, name="acme/m", version="1.0.0", base=base_dir, tasks=["sentiment"])
    remote_root = tmp_path / "remote"
    pushed = src.push("acme/m@1.0.0", to=f"dir://{remote_root}")
    assert pushed.to_dict()["version"] == "1.0.0" and (remote_root / "1.0.0" / MANIFEST_FILE).is_file()
    src.close()

    dst = ah.Registry.open(f"sqlite:///{tmp_path / 'dst' / 'r.db'}")
    out = dst.pull(f"dir://{remote_root}@1.0.0", tmp_path / "out")
    assert out == tmp_path / "out"
    assert (out / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
    info = dst.show("acme/m@1.0.0")
    assert info.source == f"dir://{remote_root}@1.0.0" and info.tasks == ("sentiment",)
    assert dst.pull(f"dir://{remote_root}", None) is None  # recorded only; latest by default

    # a base given as the remote's URL is identified by the remote (as hf://ORG/MODEL is)
    hits = dst.resolve(base=f"dir://{base_dir}", task="sentiment")
    assert [(h.ref, h.verdict) for h in hits] == [("acme/m@1.0.0", "exact")]
    assert [i.name for i in dst.list(base=f"dir://{base_dir}")] == ["acme/m"]
    dst.close()

    from adapterhub_sdk.deploy import Deployment

    assert Deployment._local_base(f"dir://{base_dir}") == base_dir
    assert all(u.startswith("dir://") for u in dir_remote) and len(dir_remote) >= 5


def test_a_url_of_no_installed_remote_is_refused_by_name(tmp_path, lora_dir):
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg.publish(lora_dir, name="acme/m", version="1.0.0")
    with pytest.raises(ah.NotFoundError, match=r"'nope://x' is not the URL of a remote registry \(installed: hf://, oci://\)"):
        reg.push("acme/m@1.0.0", to="nope://x")
    with pytest.raises(ah.AdapterHubError):  # not a remote: read as a local name, which it is not
        reg.pull("nope://x@1.0.0", tmp_path / "out")
    reg.close()
    assert remote_for("acme/m@1.0.0") is None and remote_for("0123abcd" * 8) is None
    assert remote_for(str(tmp_path)) is None


def test_the_hub_is_the_built_in_remote_registered_like_a_plugin():
    hub = get_remote("hf://acme/sentiment@1.0.0")
    assert isinstance(hub, Remote)
    assert hub.model_id("hf://acme/base-model@main") == "acme/base-model"
    (info,) = [i for i in plugin_infos() if i.name == "adapterhub_sdk.hub_remote"]
    assert info.source == "builtin" and info.hooks == ["register_remotes"]


def test_plugins_command_lists_the_remote_schemes():
    proc = run_cli("plugins", "--json", check=True)
    assert json.loads(proc.stdout)["remotes"] == ["hf", "oci"]
    assert "remotes:  hf://, oci://" in run_cli("plugins", check=True).stdout


def _string_prefix_checks(tree: ast.AST) -> list[tuple[int, str]]:
    """``x.startswith(...)`` / ``removeprefix`` calls whose argument is a string constant, or a
    module-level name bound to one: where a module tests for a URL scheme itself."""
    consts = {t.id: n.value.value for n in getattr(tree, "body", []) if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr in ("startswith", "removeprefix"):
            arg = node.args[0]
            value = arg.value if isinstance(arg, ast.Constant) else consts.get(getattr(arg, "id", ""))
            if isinstance(value, str):
                out.append((node.lineno, value))
    return out


def test_no_hub_special_case_outside_the_hub_remote():
    allowed = {PKG / "hub.py", PKG / "hub_remote.py"}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path in allowed or "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(PKG.parent)}:{line} startswith({value!r})"
                  for line, value in _string_prefix_checks(tree) if value.lower().startswith("hf")]
        found += [f"{path.relative_to(PKG.parent)}:{n.lineno} imports the Hub client"
                  for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("hub")
                  and any(a.name in ("HubClient", "parse_hub_ref", "_hub_errors") for a in n.names)]
    assert not found, "hf:// handled outside the Hub remote:\n" + "\n".join(found)


# ------------------------------------------------------------------ blob stores


class _OldDocStore:
    """A store written against the old docs: the eight required methods and nothing else."""

    def __init__(self, root: Path):
        self.inner = BlobStore(root)

    def __str__(self):
        return str(self.inner)

    def put_file(self, source, digest):
        return self.inner.put_file(source, digest)

    def copy_verified(self, digest, out):
        return self.inner.copy_verified(digest, out)

    def verify(self, digest):
        return self.inner.verify(digest)

    def size(self, digest):
        return self.inner.size(digest)

    def iter_digests(self):
        return self.inner.iter_digests()

    def age(self, digest):
        return self.inner.age(digest)

    def delete(self, digest):
        return self.inner.delete(digest)

    def clean_temp(self, older_than, *, dry_run=False):
        return self.inner.clean_temp(older_than, dry_run=dry_run)


def test_blob_store_capabilities_are_declared_by_protocol(tmp_path):
    store = BlobStore(tmp_path)
    assert isinstance(store, BlobStorage) and isinstance(store, StagingBlobStorage)
    assert isinstance(store, QuarantiningBlobStorage)


def test_a_store_with_only_the_required_methods_publishes_pulls_and_collects(tmp_path, lora_dir, base_dir):
    """No staging, no quarantine: publish goes through put_file, gc deletes directly."""
    store = _OldDocStore(tmp_path / "blobs")
    assert isinstance(store, BlobStorage)
    assert not isinstance(store, StagingBlobStorage) and not isinstance(store, QuarantiningBlobStorage)
    opened = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg = ah.Registry(opened.engine, store, opened.url)
    res = reg.publish(lora_dir, name="acme/m", version="1.0.0", base=base_dir)
    assert res.created and res.bytes_written > 0
    out = reg.pull("acme/m@1.0.0", tmp_path / "out")
    assert json.loads((out / "adapter_config.json").read_text())
    assert reg.verify().ok
    reg.delete_version("acme/m@1.0.0")
    report = reg.gc(grace_seconds=0)
    assert report.blobs_removed == res.files and not list(store.inner.iter_digests())
    reg.close()

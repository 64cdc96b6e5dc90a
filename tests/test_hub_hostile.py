"""Hub imports of hostile repos (issue 10's last list), against the real local Hub server
(olah serving git repos, tests/hubserver.py): a manifest listing ``../../etc/x`` or an
absolute path, a file digest the file does not have, a manifest pinned to a base its
adapter files do not fit, a huge or deeply nested manifest, a manifest listing very many
files, signatures that do not hold (a trusted key's over other files; an untrusted key's
under a signed-only policy), and a README pretending to be a manifest. Each is refused in
one line naming what is wrong; nothing is recorded in the registry, no blob is stored and
``--out`` is not written.

The genuine package comes from a real publish and pull (conftest's tiny Llama and PEFT
LoRA); the hostile repos are that package with one thing changed, committed to git and
served over HTTP; huggingface_hub downloads them as from the Hub."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import make_hub_repo, unique_repo_id

import adapterhub_sdk as ah
from adapterhub_sdk.cli import cli
from adapterhub_sdk.errors import AdapterHubError, SignaturePolicyError
from adapterhub_sdk.manifest import Manifest, canonical_json
from adapterhub_sdk.signing import generate_key

MANIFEST = "adapterhub_manifest.json"
_PROGRESS = re.compile(r"\d+%\|")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory, base_dir, lora_dir):
    """A real package, as push lays it out on the Hub: the PEFT files (the package's README
    under adapterhub/README.md), the manifest, a model card; plus a model.sig by 'mallory'
    (a key the pulling registry never trusts) and one by 'alice' over another version."""
    root = tmp_path_factory.mktemp("hostile_src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(root / "home"))
        reg = ah.Registry.open(f"sqlite:///{root / 'r.db'}", blobs=root / "blobs")
        reg.publish(lora_dir, name="acme/victim", version="1.0.0", base=base_dir)
        mallory = generate_key("mallory", directory=root / "keys")
        alice = generate_key("alice", directory=root / "keys")
        reg.sign("acme/victim@1.0.0", key=mallory)
        mallory_dir = reg.pull("acme/victim@1.0.0", root / "mallory")
        reg.publish(lora_dir, name="acme/victim", version="1.1.0", base=base_dir, description="other")
        reg.sign("acme/victim@1.1.0", key=alice)
        alice_other = reg.pull("acme/victim@1.1.0", root / "alice")
        reg.close()
    pkg = {p.name: p.read_bytes() for p in mallory_dir.iterdir() if p.name not in (MANIFEST, "model.sig")}
    files = {("adapterhub/README.md" if n == "README.md" else n): b for n, b in pkg.items()}
    files["README.md"] = b"---\nlibrary_name: peft\n---\n# a card\n"
    return {"files": files, "manifest": json.loads((mallory_dir / MANIFEST).read_bytes()),
            "mallory_sig": (mallory_dir / "model.sig").read_bytes(),
            "alice_sig_other": (alice_other / "model.sig").read_bytes(), "alice": alice}


def _manifest_bytes(d: dict, *, redigest: bool = True) -> bytes:
    d = dict(d)
    d.pop("digest", None)
    if redigest:
        try:
            d["digest"] = Manifest.from_dict(d).digest
        except AdapterHubError:
            pass  # a manifest our own reader refuses: no digest to give it
    return canonical_json(d)


def hostile_repo(hub_env, genuine, *, manifest: dict | bytes | None = None, extra=None, drop=()) -> str:
    files = {k: v for k, v in genuine["files"].items() if k not in drop}
    if manifest is not None:
        files[MANIFEST] = manifest if isinstance(manifest, bytes) else _manifest_bytes(manifest)
    files.update(extra or {})
    return make_hub_repo(hub_env.mirrors, unique_repo_id("hostile"), files, tags=["1.0.0"]).repo_id


def home() -> Path:
    return Path(os.environ["ADAPTERHUB_HOME"])


def assert_nothing_recorded_or_written(out: Path) -> None:
    assert not out.exists() and not out.parent.exists()
    with ah.Registry.open() as reg:
        assert reg.list() == [] and reg.stats()["versions"] == 0
    blobs = home() / "blobs"
    assert not blobs.exists() or not [p for p in (blobs / "sha256").rglob("*") if p.is_file()], \
        "a blob was stored"


def refused(repo: str, out: Path, *needles: str, extra_args=()) -> str:
    """``adapterhub pull hf://REPO@1.0.0 --out OUT`` fails with one 'error:' line holding
    every needle; nothing recorded, nothing written."""
    r = CliRunner().invoke(cli, ["pull", f"hf://{repo}@1.0.0", "--out", str(out), *extra_args])
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert len(lines[0]) < 600, lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    assert_nothing_recorded_or_written(out)
    return lines[0]


def _with_file(genuine, path: str, **change) -> dict:
    m = json.loads(json.dumps(genuine["manifest"]))
    entry = next(f for f in m["files"] if f["path"] == "adapter_config.json")
    m["files"].append({**entry, "path": path, **change})
    return m


@pytest.mark.parametrize("path", ["../../etc/x", "/etc/passwd", "adapterhub/../../x", "..", "a/b"])
def test_a_manifest_listing_a_path_outside_the_package_is_refused(hub_env, genuine, tmp_path, path):
    repo = hostile_repo(hub_env, genuine, manifest=_with_file(genuine, path))
    refused(repo, tmp_path / "dest" / "out", "is not allowed")


def test_a_manifest_listing_a_digest_the_file_does_not_have_is_refused(hub_env, genuine, tmp_path):
    m = json.loads(json.dumps(genuine["manifest"]))
    for f in m["files"]:
        if f["path"] == "adapter_model.safetensors":
            f["sha256"] = "0" * 64
    repo = hostile_repo(hub_env, genuine, manifest=m)
    refused(repo, tmp_path / "dest" / "out", "do not match the manifest", "adapter_model.safetensors")


def test_a_manifest_pinned_to_a_base_its_files_do_not_fit_is_refused(hub_env, genuine, tmp_path,
                                                                      base_other_shape):
    """The repo claims the fingerprint of a base this registry knows (registered here), whose
    shapes the adapter's files do not fit: a resolve against that base would call it exact."""
    with ah.Registry.open() as reg:
        other = reg.register_base(base_other_shape)
    m = json.loads(json.dumps(genuine["manifest"]))
    m["base"] = {**m["base"], "fingerprint": other.digest, "arch_signature": other.arch_signature}
    repo = hostile_repo(hub_env, genuine, manifest=m)
    out = tmp_path / "dest" / "out"
    r = CliRunner().invoke(cli, ["pull", f"hf://{repo}@1.0.0", "--out", str(out)])
    assert r.exit_code == 1, r.output
    line = [x for x in r.stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(line) == 1 and "files do not fit that base" in line[0] and other.digest[:12] in line[0], r.stderr
    assert not out.exists()
    with ah.Registry.open() as reg:
        assert reg.list() == [] and reg.stats()["versions"] == 0


def test_a_deeply_nested_manifest_is_refused(hub_env, genuine, tmp_path):
    m = json.loads(json.dumps(genuine["manifest"]))
    raw = _manifest_bytes(m).replace(b'"metrics":{}', b'"metrics":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    repo = hostile_repo(hub_env, genuine, manifest=raw)
    refused(repo, tmp_path / "dest" / "out", "nests arrays or objects deeper")


def test_a_huge_manifest_is_refused_before_it_is_parsed(hub_env, genuine, tmp_path):
    m = json.loads(json.dumps(genuine["manifest"]))
    m["description"] = "x" * (40 << 20)  # 40 MiB: no manifest of an adapter is that large
    repo = hostile_repo(hub_env, genuine, manifest=_manifest_bytes(m, redigest=False))
    refused(repo, tmp_path / "dest" / "out", "manifest", "larger than")


def test_a_manifest_listing_very_many_files_is_refused_in_one_short_line(hub_env, genuine, tmp_path):
    m = json.loads(json.dumps(genuine["manifest"]))
    entry = next(f for f in m["files"] if f["path"] == "adapter_config.json")
    m["files"] += [{**entry, "path": f"f{i:06d}.json"} for i in range(20_000)]
    repo = hostile_repo(hub_env, genuine, manifest=m)
    refused(repo, tmp_path / "dest" / "out", "missing", "f000000.json", "more")


def test_a_trusted_keys_signature_over_other_files_is_refused(hub_env, genuine, tmp_path):
    with ah.Registry.open() as reg:
        reg.trust_key("alice", genuine["alice"].public_pem)
    repo = hostile_repo(hub_env, genuine, manifest=genuine["manifest"],
                        extra={"model.sig": genuine["alice_sig_other"]})
    out = tmp_path / "dest" / "out"
    r = CliRunner().invoke(cli, ["pull", f"hf://{repo}@1.0.0", "--out", str(out)])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(lines) == 1 and "model.sig by alice is refused" in lines[0], r.stderr
    assert not out.exists() and not out.parent.exists()
    with ah.Registry.open() as reg:
        assert reg.list() == [] and reg.stats()["versions"] == 0


def test_an_untrusted_signature_is_a_claim_and_under_a_policy_is_refused_before_recording(
        hub_env, genuine, tmp_path):
    with ah.Registry.open() as reg:
        reg.trust_key("alice", genuine["alice"].public_pem)
    repo = hostile_repo(hub_env, genuine, manifest=genuine["manifest"],
                        extra={"model.sig": genuine["mallory_sig"]})
    out = tmp_path / "dest" / "out"
    # a signed-only policy: refused, and nothing recorded (CLI and Python)
    r = CliRunner().invoke(cli, ["pull", f"hf://{repo}@1.0.0", "--out", str(out), "--require-signed", "alice"])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(lines) == 1 and "requires a signature by alice" in lines[0], r.stderr
    assert_nothing_recorded_or_written(out)
    with ah.Registry.open() as reg, pytest.raises(SignaturePolicyError):
        reg.pull(f"hf://{repo}@1.0.0", out, require_signed="alice")
    assert_nothing_recorded_or_written(out)
    # no policy: recorded, the signature shown as the repo's claim by a key not trusted here
    with ah.Registry.open() as reg:
        reg.pull(f"hf://{repo}@1.0.0", out)
        vs = reg.signatures("acme/victim@1.0.0")
        assert vs.status == "untrusted" and vs.signed_by == [], vs.to_dict()


def test_a_readme_pretending_to_be_a_manifest_is_only_a_readme(hub_env, genuine, tmp_path, base_dir):
    """A repo without adapterhub_manifest.json whose README.md is a manifest claiming another
    name and a pinned base: imported as the PEFT repo it is (its own name, unpinned), the
    README kept as a file; with no adapter files beside it, refused in one line."""
    claim = _manifest_bytes(genuine["manifest"])
    files = {k: v for k, v in genuine["files"].items() if k not in ("README.md", "adapterhub/README.md")}
    repo = make_hub_repo(hub_env.mirrors, unique_repo_id("card"), {**files, "README.md": claim},
                         tags=["1.0.0"]).repo_id
    with ah.Registry.open() as reg:
        reg.pull(f"hf://{repo}@1.0.0")
        [item] = reg.list()
        info = reg.show(f"{item.name}@1.0.0")
        assert item.name.lower() == repo.lower() and info.manifest.base.fingerprint is None
        assert "acme/victim" not in {i.name for i in reg.list()}
    only_card = make_hub_repo(hub_env.mirrors, unique_repo_id("card"), {"README.md": claim},
                              tags=["1.0.0"]).repo_id
    out = tmp_path / "dest2" / "out"
    r = CliRunner().invoke(cli, ["pull", f"hf://{only_card}@1.0.0", "--out", str(out)])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.strip().splitlines() if x.strip() and not _PROGRESS.search(x)]
    assert len(lines) == 1 and "adapter_config.json" in lines[0], r.stderr
    assert not out.exists()
    with ah.Registry.open() as reg:
        assert [i.name for i in reg.list()] == [item.name]


def test_a_manifest_claiming_another_method_config_than_its_files_is_refused(hub_env, genuine, tmp_path):
    """show, export's limits and the runtimes' verdicts read the manifest's method: a manifest
    claiming another scaling (lora_alpha), DoRA off, or another summary over the genuine
    files is refused before anything is recorded (the files are what PEFT would load)."""
    for i, change in enumerate(({"config": {"lora_alpha": 64}}, {"config": {"use_dora": True}},
                                {"summary": {"rank": 64}}, {"variant": "dora"})):
        m = json.loads(json.dumps(genuine["manifest"]))
        for key, value in change.items():
            if isinstance(value, dict):
                m["method"][key].update(value)
            else:
                m["method"][key] = value
        repo = hostile_repo(hub_env, genuine, manifest=m)
        refused(repo, tmp_path / str(i) / "out", "the manifest's method does not match its adapter files",
                next(iter(change)))


def test_a_manifest_listing_a_pickle_is_refused(hub_env, genuine, tmp_path):
    """A pickle is never stored, however a remote's manifest lists it (publish refuses one too)."""
    import hashlib

    blob = b"\x80\x04\x95fake pickle"
    m = _with_file(genuine, "adapter_model.bin", sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
    repo = hostile_repo(hub_env, genuine, manifest=m, extra={"adapter_model.bin": blob})
    refused(repo, tmp_path / "p" / "out", "adapter_model.bin", "pickle")

"""What an OCI artifact claims is checked against its files before anything is recorded,
whether or not the base it pins is known here: the method (config, variant, summary) the
manifest states, no pickles, and no weights PEFT would ignore. Crafted artifacts pushed
to a real CNCF distribution registry on loopback (tests/ociserver.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ociserver import REGISTRY, SKIP_REASON

from adapterhub_sdk.errors import AdapterFormatError, IntegrityError, UnsafeFormatError
from adapterhub_sdk.manifest import Manifest
from adapterhub_sdk.oci.artifact import artifact_manifest
from adapterhub_sdk.oci.client import OciClient, sha256_digest
from adapterhub_sdk.oci.remote import OciRemote

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


def _push_crafted(oci, repo: str, manifest: dict, files: dict[str, bytes]) -> str:
    """Push ``files`` as the layers of an artifact whose config is ``manifest`` (its file
    entries and digest recomputed from ``files``): what a crafted push would hold."""
    m = json.loads(json.dumps(manifest))
    m["files"] = [{"path": n, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in sorted(files.items())]
    m.pop("digest", None)
    parsed = Manifest.from_dict(m)
    cfg = parsed.to_json()
    with OciClient(oci.host, insecure=True) as c:
        for b in files.values():
            c.push_blob(repo, sha256_digest(b), len(b), b)
        c.push_blob(repo, sha256_digest(cfg), len(cfg), cfg)
        c.put_manifest(repo, "1.0.0", artifact_manifest(parsed, sha256_digest(cfg), len(cfg)))
    return f"oci://{oci.host}/{repo}:1.0.0"


@pytest.fixture
def genuine(reg, lora_dir):
    reg.publish(lora_dir, name="acme/claims", version="1.0.0")  # no base: nothing here could check a pin
    m = reg.show("acme/claims@1.0.0").manifest
    return json.loads(m.to_json()), {p.name: p.read_bytes() for p in lora_dir.iterdir() if p.is_file()}


def _refused(other, url: str, tmp_path: Path, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        OciRemote(insecure=True).pull(other, url, tmp_path / "out")
    assert other.list() == [] and not (tmp_path / "out").exists()
    assert list(other.blobs.iter_digests()) == []


@pytest.mark.parametrize("change", [{"config": {"lora_alpha": 64}}, {"config": {"use_rslora": True}},
                                    {"config": {"init_lora_weights": "pissa"}}, {"variant": "dora"},
                                    {"summary": {"alpha": 64}}], ids=lambda c: json.dumps(c))
def test_a_manifest_whose_method_is_not_its_files_is_refused(oci, other, genuine, tmp_path, change):
    """The manifest's method (what show, export's limits and the runtimes' verdicts read) is
    the files' own adapter_config.json, variant and summary, or the pull is refused."""
    manifest, files = genuine
    for key, value in change.items():
        if isinstance(value, dict):
            manifest["method"][key].update(value)
        else:
            manifest["method"][key] = value
    url = _push_crafted(oci, "t/method-" + hashlib.sha256(json.dumps(change).encode()).hexdigest()[:8], manifest, files)
    _refused(other, url, tmp_path, IntegrityError, "the manifest's method does not match its adapter files")
    out = run_cli("pull", url, "--insecure", env={"ADAPTERHUB_HOME": str(tmp_path / "cli")})
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "not what it claims" in out.stderr, out.stderr


def test_a_pickle_among_the_layers_is_refused(oci, other, genuine, tmp_path):
    manifest, files = genuine
    url = _push_crafted(oci, "t/pickle", manifest, {**files, "adapter_model.bin": b"\x80\x04\x95 not loaded"})
    _refused(other, url, tmp_path, UnsafeFormatError, "adapter_model.bin")


def _with_untargeted(lora_dir: Path, out: Path) -> Path:
    """lora_dir (LoRA on q_proj, v_proj) plus a LoRA pair on gate_proj, which its
    target_modules does not select: PEFT ignores those weights when it loads the adapter."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(lora_dir, out)
    tensors = load_file(out / "adapter_model.safetensors")
    a = next(k for k in tensors if "q_proj.lora_A" in k)
    rank, hidden = tensors[a].shape
    prefix = a.split("self_attn.q_proj")[0].replace("self_attn.", "")
    tensors[prefix + "mlp.gate_proj.lora_A.weight"] = torch.ones(rank, hidden)
    tensors[prefix + "mlp.gate_proj.lora_B.weight"] = torch.ones(2 * hidden, rank)  # the base's intermediate size
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def test_weights_peft_would_ignore_are_refused_without_a_base(oci, reg, other, genuine, lora_dir, tmp_path):
    """Weights on a module the config does not target are refused whether or not a base is
    in hand: at publish without --base, and in a pulled artifact whose base is unknown here
    (a deployment would otherwise apply what PEFT ignores)."""
    extra = _with_untargeted(lora_dir, tmp_path / "extra")
    with pytest.raises(AdapterFormatError, match="gate_proj not selected by target_modules .PEFT would ignore them"):
        reg.publish(extra, name="acme/extra", version="1.0.0")
    out = run_cli("publish", str(extra), "--name", "acme/extra", "--version", "1.0.0",
                  env={"ADAPTERHUB_HOME": str(tmp_path / "pub-cli")})
    assert out.returncode == 1 and "PEFT would ignore them" in out.stderr, out.stderr
    manifest, _ = genuine
    weights = (extra / "adapter_model.safetensors").read_bytes()
    files = {p.name: p.read_bytes() for p in lora_dir.iterdir() if p.is_file()}
    gate = next(k for k in manifest["requirements"] if k.endswith("q_proj.weight")).replace("self_attn.q_proj",
                                                                                             "mlp.gate_proj")
    manifest["requirements"] = {**manifest["requirements"], gate: [None, None]}
    url = _push_crafted(oci, "t/untargeted", manifest, {**files, "adapter_model.safetensors": weights})
    _refused(other, url, tmp_path, AdapterFormatError, "PEFT would ignore them")

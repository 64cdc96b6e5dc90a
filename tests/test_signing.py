"""Signing that interoperates: keys, signatures beside versions, model.sig in the OpenSSF
model signing format (checked by the real ``model_signing`` CLI), verification statuses and
the signed-only policy."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from adapterhub_sdk import tables
from adapterhub_sdk.errors import SignaturePolicyError, SigningError
from adapterhub_sdk.manifest import Manifest
from adapterhub_sdk.signing import generate_key, key_dir, load_private_key

from conftest import run_cli

_BESIDE = Path(sys.executable).parent / "model_signing"
MODEL_SIGNING = str(_BESIDE) if _BESIDE.exists() else shutil.which("model_signing") or "model_signing"


def model_signing_verify(pub: Path, sig: Path, directory: Path, *extra: str) -> subprocess.CompletedProcess:
    """The upstream verifier, as a user runs it."""
    return subprocess.run([MODEL_SIGNING, "verify", "key", "--public_key", str(pub), "--signature", str(sig),
                           *extra, str(directory)], capture_output=True, text=True, timeout=120)


def cli_env(reg) -> dict[str, str]:
    """The environment that points the installed CLI at ``reg``."""
    return {"ADAPTERHUB_REGISTRY_URL": reg.url, "ADAPTERHUB_BLOBS": str(reg.blobs.root)}


def _publish(reg, lora_dir, base_dir, version="1.0.0", name="acme/signed"):
    return reg.publish(lora_dir, name=name, version=version, base=base_dir)


def test_pulled_directory_verifies_with_model_signing_and_fails_after_any_change(tmp_path, lora_dir, base_dir):
    """The publisher's model.sig and a reviewer's model.bob.sig, written by our own code,
    are accepted by ``model_signing verify key``; changing, adding or removing a file fails."""
    run_cli("keys", "generate", "alice", check=True)
    run_cli("keys", "generate", "bob", check=True)  # trusted before the publish: model.sig ignores model.bob.sig
    out = run_cli("publish", str(lora_dir), "--name", "acme/signed", "--version", "1.0.0", "--base", str(base_dir),
                  "--sign", "alice", "--json", check=True)
    assert json.loads(out.stdout)["signatures"]["signed_by"] == ["alice"]
    run_cli("sign", "acme/signed@1.0.0", "--key", "bob", check=True)
    pulled = tmp_path / "pulled"
    run_cli("pull", "acme/signed@1.0.0", "--out", str(pulled), check=True)
    keys = key_dir()
    assert (pulled / "model.sig").is_file() and (pulled / "model.bob.sig").is_file()
    for pub, sig in ((keys / "alice.pub", pulled / "model.sig"), (keys / "bob.pub", pulled / "model.bob.sig")):
        ok = model_signing_verify(pub, sig, pulled)
        assert ok.returncode == 0, ok.stderr
    wrong = model_signing_verify(keys / "bob.pub", pulled / "model.sig", pulled)
    assert wrong.returncode != 0  # alice's signature is not bob's

    for change in ("edit", "add", "remove"):
        d = tmp_path / change
        shutil.copytree(pulled, d)
        if change == "edit":
            with open(d / "adapter_config.json", "a") as f:
                f.write(" ")
        elif change == "add":
            (d / "extra.bin").write_bytes(b"x")
        else:
            (d / "adapterhub_manifest.json").unlink()
        bad = model_signing_verify(keys / "alice.pub", d / "model.sig", d)
        assert bad.returncode != 0 and "Verification failed" in bad.stderr, (change, bad.stdout)


def test_signature_never_changes_digest_or_pulled_manifest(registry, lora_dir, base_dir, tmp_path):
    res = _publish(registry, lora_dir, base_dir)
    before = registry.pull("acme/signed@1.0.0", tmp_path / "a")
    manifest_bytes = (before / "adapterhub_manifest.json").read_bytes()
    assert "signature" not in json.loads(manifest_bytes)  # the unused field is gone
    registry.trust_key("alice", generate_key("alice").public_pem)
    vs = registry.sign("acme/signed@1.0.0", key="alice")
    assert vs.status == "signed" and vs.signed_by == ["alice"]
    assert registry.show("acme/signed@1.0.0").digest == res.digest
    after = registry.pull("acme/signed@1.0.0", tmp_path / "b")
    assert (after / "adapterhub_manifest.json").read_bytes() == manifest_bytes
    assert sorted(p.name for p in after.iterdir()) == sorted([*(p.name for p in before.iterdir()), "model.sig"])
    # signing again with the same key adds nothing
    assert len(registry.sign("acme/signed@1.0.0", key="alice").checks) == 1


def test_manifests_written_with_a_null_signature_keep_their_digest(registry, lora_dir, base_dir):
    """Versions published before the field went carry ``"signature": null``: outside the
    digest then and now, so their digests are unchanged and they still read."""
    res = _publish(registry, lora_dir, base_dir)
    old = json.loads(_manifest_row(registry))
    assert "signature" not in old
    old["signature"] = None
    m = Manifest.from_dict(old)
    assert m.digest == res.digest == old["digest"]


def _manifest_row(reg) -> str:
    with reg.engine.connect() as conn:
        return conn.execute(select(tables.versions.c.manifest)).scalar_one()


def test_verify_reports_each_status_separately(registry, lora_dir, lora_dir_b, base_dir, tmp_path):
    """signed by (trusted names), unsigned, untrusted, revoked, bad signature, tampered: in
    Python, and through the CLI in text and JSON (exit 1 for bad or tampered)."""
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"):
        _publish(registry, lora_dir if v != "1.4.0" else lora_dir_b, base_dir, version=v)
    _publish(registry, lora_dir, base_dir, version="2.0.0")
    for name in ("alice", "carol"):
        registry.trust_key(name, generate_key(name).public_pem)
    outsider = generate_key("dave", directory=tmp_path / "elsewhere")  # never trusted here
    registry.sign("acme/signed@1.0.0", key="alice")
    registry.sign("acme/signed@1.1.0", key=outsider)
    registry.sign("acme/signed@1.2.0", key="carol")
    registry.revoke_key("carol")
    registry.sign("acme/signed@1.3.0", key="alice")
    registry.sign("acme/signed@1.4.0", key="alice")
    sig_t = tables.signatures
    with registry.engine.begin() as conn:
        rows = {r.version: r for r in conn.execute(
            select(sig_t.c.id, sig_t.c.bundle, tables.versions.c.version)
            .join(tables.versions, tables.versions.c.id == sig_t.c.version_id))}
        b = json.loads(rows["1.3.0"].bundle)  # a flipped bit in the signature
        raw = bytearray(base64.b64decode(b["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 1
        b["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
        conn.execute(update(sig_t).where(sig_t.c.id == rows["1.3.0"].id).values(bundle=json.dumps(b)))
        # 1.4.0 holds other files; a good signature of 1.0.0's files put beside it is tampering
        conn.execute(update(sig_t).where(sig_t.c.id == rows["1.4.0"].id).values(bundle=rows["1.0.0"].bundle))

    got = {s.ref.split("@")[1]: s for s in registry.verify_signatures()}
    assert {v: s.status for v, s in got.items()} == {
        "1.0.0": "signed", "1.1.0": "untrusted", "1.2.0": "revoked", "1.3.0": "bad_signature",
        "1.4.0": "tampered", "2.0.0": "unsigned"}
    assert got["1.0.0"].signed_by == ["alice"] and got["1.1.0"].checks[0].signer == "dave"
    assert "adapter_model.safetensors: changed" in got["1.4.0"].checks[0].reason

    env = cli_env(registry)
    text = run_cli("verify", env=env)
    assert text.returncode == 1, text.stderr
    for line in ("acme/signed@1.0.0: signed by alice", "acme/signed@2.0.0: unsigned",
                 "acme/signed@1.1.0: signed by a key this registry does not trust (dave",
                 "acme/signed@1.2.0: signed by a revoked key (carol", "acme/signed@1.3.0: bad signature (alice",
                 "acme/signed@1.4.0: tampered (alice", "2 problems found"):
        assert line in text.stdout, (line, text.stdout)
    data = json.loads(run_cli("verify", "--json", env=env).stdout)
    assert data["ok"] is False
    assert {s["version"]: s["status"] for s in data["signatures"]}["acme/signed@1.3.0"] == "bad_signature"


def test_private_keys_are_owner_only_and_never_in_the_registry(registry, tmp_path):
    pk = generate_key("alice")
    assert stat.S_IMODE(pk.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir().stat().st_mode) == 0o700
    registry.trust_key("alice", pk.public_pem)
    with pytest.raises(SigningError, match="already exists"):
        generate_key("alice")  # a key is never replaced
    os.chmod(pk.path, 0o644)
    with pytest.raises(SigningError, match=r"accessible by other users \(mode 0644\)") as refused:
        load_private_key("alice")
    assert refused.value.hint == f"make it owner-only: chmod 600 {pk.path}"
    os.chmod(pk.path, 0o600)
    assert load_private_key(str(pk.path)).key_id == pk.key_id  # by path as well
    with registry.engine.connect() as conn:
        dumped = repr([tuple(r) for t in tables.metadata.sorted_tables for r in conn.execute(select(t))])
    assert "PRIVATE KEY" not in dumped and "PUBLIC KEY" in dumped
    cli = run_cli("keys", "list", "--json", env=cli_env(registry))
    assert json.loads(cli.stdout) == [{**json.loads(cli.stdout)[0], "name": "alice", "status": "trusted",
                                       "private_key_here": True}]


def test_keys_trust_and_revoke_through_the_cli(tmp_path):
    other = generate_key("bob", directory=tmp_path / "bobs-machine")
    pub = tmp_path / "bobs-machine" / "bob.pub"
    out = run_cli("keys", "trust", str(pub), "--name", "bob", "--json", check=True)
    assert json.loads(out.stdout)["key_id"] == other.key_id
    clash = run_cli("keys", "trust", str(pub), "--name", "robert")
    assert clash.returncode == 1 and "already trusted as 'bob'" in clash.stderr
    assert json.loads(run_cli("keys", "revoke", "bob", "--json", check=True).stdout)["status"] == "revoked"
    listed = run_cli("keys", "list", check=True).stdout
    assert "bob" in listed and "revoked" in listed
    missing = run_cli("keys", "revoke", "nobody")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_signed_only_policy_refuses_pull_with_the_reason(registry, lora_dir, base_dir, tmp_path, monkeypatch):
    _publish(registry, lora_dir, base_dir, version="1.0.0")
    _publish(registry, lora_dir, base_dir, version="1.1.0")
    for name in ("alice", "bob"):
        registry.trust_key(name, generate_key(name).public_pem)
    registry.sign("acme/signed@1.1.0", key="bob")

    monkeypatch.setenv("ADAPTERHUB_REQUIRE_SIGNED", "alice")
    with pytest.raises(SignaturePolicyError, match=r"acme/signed@1.0.0 is refused: .*by alice, and it is unsigned"):
        registry.pull("acme/signed@1.0.0", tmp_path / "x")
    with pytest.raises(SignaturePolicyError, match="signed by bob"):
        registry.pull("acme/signed@1.1.0", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written
    registry.sign("acme/signed@1.1.0", key="alice")
    assert (registry.pull("acme/signed@1.1.0", tmp_path / "ok") / "model.sig").is_file()
    monkeypatch.delenv("ADAPTERHUB_REQUIRE_SIGNED")

    # the option, and the registry-wide policy through the CLI, every one in force must be met
    with pytest.raises(SignaturePolicyError):
        registry.pull("acme/signed@1.0.0", tmp_path / "y", require_signed="alice,bob")
    env = cli_env(registry)
    run_cli("policy", "require-signed", "bob", env=env, check=True)
    assert registry.signing_policy() == ["bob"]
    refused = run_cli("pull", "acme/signed@1.0.0", "--out", str(tmp_path / "z"), env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("error: acme/signed@1.0.0 is refused")
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "z").exists()
    both = run_cli("pull", "acme/signed@1.1.0", "--out", str(tmp_path / "w"), "--require-signed", "alice", env=env)
    assert both.returncode == 0, both.stderr
    run_cli("policy", "require-signed", "--none", env=env, check=True)
    assert registry.pull("acme/signed@1.0.0", tmp_path / "v").is_dir()


def test_signed_directory_is_checked_against_the_files_present(registry, lora_dir, base_dir, tmp_path):
    _publish(registry, lora_dir, base_dir)
    registry.trust_key("alice", generate_key("alice").public_pem)
    registry.sign("acme/signed@1.0.0", key="alice")
    d = registry.pull("acme/signed@1.0.0", tmp_path / "d")
    assert registry.directory_signatures(d).status == "signed"
    assert registry.check_signed_directory(d, "alice") is not None
    (d / "adapter_config.json").write_text("{}")
    vs = registry.directory_signatures(d)
    assert vs.status == "tampered" and "adapter_config.json: changed" in vs.checks[0].reason
    with pytest.raises(SignaturePolicyError, match="tampered"):
        registry.check_signed_directory(d, "alice")
    with pytest.raises(SignaturePolicyError, match="unsigned"):
        registry.check_signed_directory(lora_dir, "alice")
    assert registry.check_signed_directory(lora_dir) is None  # no policy, no check


def test_key_names_are_validated():
    with pytest.raises(SigningError, match="not a key name"):
        generate_key("../evil")


def test_hub_carries_signatures_both_ways(hub_env, lora_dir, base_dir, tmp_path, monkeypatch):
    """push uploads model.sig; a Hub pull records it, checked against the files the manifest
    lists (the repo's README.md is a generated card, the package's own sits elsewhere); a
    signature by a trusted key that covers other files is refused; one by a key not trusted
    here is kept as the repo's claim (untrusted)."""
    from test_hub import FakeHub, fake_hub_installed, mirror_to_olah

    src = ah_open(tmp_path / "src")
    alice = generate_key("alice")
    src.trust_key("alice", alice.public_pem)
    src.publish(lora_dir, name="acme/signed", version="1.0.0", base=base_dir)
    src.sign("acme/signed@1.0.0", key=alice)
    fake = FakeHub()
    with pytest.MonkeyPatch.context() as mp, fake_hub_installed(fake, mp):
        src.push("acme/signed@1.0.0", to="hf://acme/signed")
    pushed = fake.repos["acme/signed"]["commits"][-1]["files"]
    assert "model.sig" in pushed and pushed["README.md"] != (lora_dir / "README.md").read_bytes()

    def pull_into(where: Path, repo, *args: str, trust: bool) -> subprocess.CompletedProcess:
        reg = ah_open(where)
        if trust:
            reg.trust_key("alice", alice.public_pem)
        reg.close()
        return run_cli("pull", f"hf://{repo.repo_id}@1.0.0", "--out", str(where / "out"), *args,
                       env={"ADAPTERHUB_REGISTRY_URL": f"sqlite:///{where / 'r.db'}",
                            "ADAPTERHUB_BLOBS": str(where / "blobs")})

    repo = mirror_to_olah(hub_env, fake, "acme/signed")
    ok = pull_into(tmp_path / "a", repo, trust=True)
    assert ok.returncode == 0, ok.stderr
    with ah_open(tmp_path / "a") as reg:
        assert reg.signatures("acme/signed@1.0.0").signed_by == ["alice"]
    assert model_signing_verify(key_dir() / "alice.pub", tmp_path / "a" / "out" / "model.sig",
                                tmp_path / "a" / "out").returncode == 0

    claim = pull_into(tmp_path / "b", repo, "--require-signed", "alice", trust=False)
    assert claim.returncode == 1 and "is refused" in claim.stderr and "a key this registry does not trust" in claim.stderr, claim.stderr
    assert not (tmp_path / "b" / "out").exists()  # refused before anything is recorded: alice is not trusted there
    with ah_open(tmp_path / "b") as reg:
        assert reg.list() == [] and reg.stats()["versions"] == 0
    signed = pull_into(tmp_path / "a", repo, "--require-signed", "alice", "--force", trust=False)
    assert signed.returncode == 0, signed.stderr

    from adapterhub_sdk.signing import bundle as sigfmt

    other = sigfmt.sign(alice.key, alice.key_id, {"adapter_model.safetensors": "0" * 64}, name="acme/signed@1.0.0")
    forged = mirror_to_olah(hub_env, fake, "acme/signed", repo_id=unique_id("forged"),
                            tamper=lambda version, files: {**files, "model.sig": other.encode()})
    refused = pull_into(tmp_path / "c", forged, trust=True)
    assert refused.returncode == 1 and "model.sig by alice is refused: signed files differ" in refused.stderr


def ah_open(where: Path):
    from adapterhub_sdk import Registry

    where.mkdir(parents=True, exist_ok=True)
    return Registry.open(f"sqlite:///{where / 'r.db'}", blobs=where / "blobs")


def unique_id(prefix: str) -> str:
    from hubserver import unique_repo_id

    return unique_repo_id(prefix)


def test_policy_refuses_attach_serve_and_unsigned_directories(registry, lora_dir, base_dir, tmp_path, monkeypatch):
    """Deployment.attach and ``serve --require-signed`` refuse an unsigned version with the
    reason; ah.load_adapter on a directory needs a good model.sig under a policy."""
    from transformers import AutoModelForCausalLM

    from adapterhub_sdk import Deployment, load_adapter

    _publish(registry, lora_dir, base_dir)
    registry.trust_key("alice", generate_key("alice").public_pem)
    dep = Deployment(base_dir, registry=registry, require_signed="alice")
    with pytest.raises(SignaturePolicyError, match="acme/signed@1.0.0 is refused.*unsigned"):
        dep.attach("acme/signed@1.0.0")
    assert dep.adapters == {}

    pytest.importorskip("fastapi")
    import httpx
    from test_row_isolation import _Serving

    from adapterhub_sdk.server import create_app

    app = create_app(dep, base_id="tiny", batch_wait_ms=0, allow_adapter_updates=True, admin_key="k")
    with _Serving(app) as serving:  # a runtime load over HTTP is refused the same way: 403
        r = httpx.post(f"{serving.url}/v1/adapters", json={"spec": "acme/signed@1.0.0"},
                       headers={"Authorization": "Bearer k"}, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "signature_required", r.text
    assert "requires a signature by alice" in r.json()["error"]["message"]

    env = cli_env(registry)
    served = run_cli("serve", "--base", str(base_dir), "--adapter", "acme/signed@1.0.0", "--port", "0",
                     "--require-signed", "alice", env=env, timeout=180)
    assert served.returncode == 1 and "error: acme/signed@1.0.0 is refused" in served.stderr, served.stderr

    pulled = registry.pull("acme/signed@1.0.0", tmp_path / "unsigned")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with pytest.raises(SignaturePolicyError, match="unsigned"):
        load_adapter(model, pulled, registry=registry, require_signed="alice")
    registry.sign("acme/signed@1.0.0", key="alice")
    dep.attach("acme/signed@1.0.0")  # signed now: attached
    signed = registry.pull("acme/signed@1.0.0", tmp_path / "signed")
    monkeypatch.setenv("ADAPTERHUB_REQUIRE_SIGNED", "alice")
    assert load_adapter(model, signed, registry=registry) is not None
    (signed / "adapter_config.json").chmod(0o644)
    with open(signed / "adapter_config.json", "a") as f:
        f.write("\n")
    with pytest.raises(SignaturePolicyError, match="tampered"):
        load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), signed, registry=registry)

"""``oci://``: adapters pushed to and pulled from a real CNCF distribution registry
(tests/ociserver.py, Debian's docker-registry on loopback), read back by independent OCI
clients (skopeo, the oras Python client), with tags, ranges, tampering, signatures,
credentials from a Docker configuration and the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from ociserver import REGISTRY, SKIP_REASON, start_registry

import adapterhub_sdk as ah
from adapterhub_sdk.errors import (
    AdapterHubError,
    IntegrityError,
    NotFoundError,
    VersionConflictError,
)
from adapterhub_sdk.oci.client import OciAuthError, OciClient, OciUnavailableError, sha256_digest
from adapterhub_sdk.oci.refs import parse_oci_ref, tag_version, version_tag
from adapterhub_sdk.oci.remote import OciRemote

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


# the fixtures oci (the registry server), reg (the publisher) and other (the puller): conftest.py


def _repo(request) -> str:
    return "t/" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_refs_and_tags_map_build_metadata_reversibly():
    r = parse_oci_ref("oci://127.0.0.1:5000/team/sentiment:1.0.0_b.1")
    assert (r.host, r.repo, r.tag) == ("127.0.0.1:5000", "team/sentiment", "1.0.0_b.1")
    assert parse_oci_ref("oci://h/x@^1.2").spec == "^1.2"
    assert parse_oci_ref("oci://h/x@sha256:" + "a" * 64).digest == "sha256:" + "a" * 64
    assert version_tag("1.2.3-rc.1+build.5") == "1.2.3-rc.1_build.5"
    assert str(tag_version("1.2.3-rc.1_build.5")) == "1.2.3-rc.1+build.5"
    assert tag_version("latest") is None and tag_version("sha256-" + "a" * 64 + ".sig") is None
    for bad in ("oci://h/../x", "oci://h/UPPER", "oci:///x", "oci://h/x@sha256:zz", "oci://h/x:bad/tag"):
        with pytest.raises(NotFoundError):
            parse_oci_ref(bad)


def test_push_pull_round_trip_is_byte_identical_and_peft_loads_it(oci, reg, other, tmp_path, base_dir,
                                                                  lora_dir, request):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    repo = _repo(request)
    reg.publish(lora_dir, name="acme/sent", version="1.0.0", base=base_dir, tasks=["sentiment"])
    remote = OciRemote(insecure=True)
    res = remote.push(reg, "acme/sent@1.0.0", f"oci://{oci.host}/{repo}")
    assert res.created and res.tag == "1.0.0" and res.commit.startswith("sha256:")
    assert not remote.push(reg, "acme/sent@1.0.0", f"oci://{oci.host}/{repo}").created  # idempotent

    info = remote.pull(other, f"oci://{oci.host}/{repo}:1.0.0", tmp_path / "pulled")
    assert info.digest == reg.show("acme/sent@1.0.0").digest
    assert info.source == f"oci://{oci.host}/{repo}@{res.commit}"
    local = reg.pull("acme/sent@1.0.0", tmp_path / "local")
    assert _files(tmp_path / "pulled") == _files(local)
    # the config blob is the manifest, byte for byte
    with OciClient(oci.host, insecure=True) as c:
        doc = json.loads(c.get_manifest(repo, "1.0.0")[0])
        assert c.fetch_small(repo, doc["config"]["digest"], 1 << 20) == (local / "adapterhub_manifest.json").read_bytes()
    assert doc["artifactType"] == "application/vnd.adapterhub.adapter.v1"
    assert doc["annotations"]["io.adapterhub.base.fingerprint"] == info.base_fingerprint
    assert {ly["annotations"]["org.opencontainers.image.title"]: ly["digest"] for ly in doc["layers"]} == {
        n: sha256_digest(b) for n, b in _files(local).items() if n != "adapterhub_manifest.json"}

    # resolves offline afterwards (the registry process is not asked)
    assert [h.ref for h in other.resolve(base_dir)] == ["acme/sent@1.0.0"]
    # and PEFT gives the same output as on the adapter PEFT saved
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_dir)(ids).logits
    got = PeftModel.from_pretrained(base, tmp_path / "pulled")(ids).logits
    assert torch.equal(want, got)


def test_a_tag_holding_other_content_is_never_overwritten(oci, reg, tmp_path, base_dir, lora_dir, lora_dir_b,
                                                          request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    first = OciRemote(insecure=True).push(reg, "acme/a@1.0.0", repo)
    third = ah.Registry.open(f"sqlite:///{tmp_path / 'third.db'}", blobs=tmp_path / "third-blobs")
    third.publish(lora_dir_b, name="acme/a", version="1.0.0", base=base_dir)
    with pytest.raises(VersionConflictError, match="already holds other content"):
        OciRemote(insecure=True).push(third, "acme/a@1.0.0", repo)
    third.close()
    assert OciRemote(insecure=True).versions(repo) == {ah.Version.parse("1.0.0"): first.commit}


def test_skopeo_and_oras_read_the_files_byte_identical(oci, reg, tmp_path, base_dir, lora_dir, request):
    repo = _repo(request)
    reg.publish(lora_dir, name="acme/interop", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/interop@1.0.0", f"oci://{oci.host}/{repo}")
    local = _files(reg.pull("acme/interop@1.0.0", tmp_path / "local"))
    checked = 0
    if shutil.which("skopeo"):
        import subprocess

        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{oci.host}/{repo}:1.0.0",
                        f"dir:{tmp_path / 'sk'}"], check=True, capture_output=True, timeout=120)
        by_digest = {p.name: p.read_bytes() for p in (tmp_path / "sk").iterdir()}
        for data in local.values():  # skopeo's dir: layout names each blob by its digest
            assert by_digest[hashlib.sha256(data).hexdigest()] == data
        checked += 1
    try:
        import oras.client
    except ImportError:
        oras = None
    if oras is not None:
        client = oras.client.OrasClient(hostname=oci.host, insecure=True)
        client.pull(target=f"{oci.host}/{repo}:1.0.0", outdir=str(tmp_path / "oras"))
        got = _files(tmp_path / "oras")  # oras names each file by its title
        assert got == {n: b for n, b in local.items() if n != "adapterhub_manifest.json"}
        checked += 1
    if not checked:
        pytest.skip("neither skopeo nor the oras Python package is installed")


def test_latest_ranges_digests_and_build_metadata_tags(oci, reg, other, tmp_path, base_dir, lora_dir, request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    remote = OciRemote(insecure=True)
    for v in ("1.0.0", "1.2.0", "1.3.0+build.7", "2.0.0-rc.1"):
        reg.publish(lora_dir, name="acme/many", version=v, base=base_dir)
        remote.push(reg, f"acme/many@{v}", repo)
    tags = {str(v) for v in remote.versions(repo)}
    assert tags == {"1.0.0", "1.2.0", "1.3.0+build.7", "2.0.0-rc.1"}
    assert remote.pull(other, f"{repo}@latest").version == "1.3.0+build.7"
    assert remote.pull(other, repo).version == "1.3.0+build.7"
    assert remote.pull(other, f"{repo}@~1.2.0").version == "1.2.0"
    assert remote.pull(other, f"{repo}@^1.0,<1.2").version == "1.0.0"
    assert remote.pull(other, f"{repo}:2.0.0-rc.1").version == "2.0.0-rc.1"
    digest = remote.versions(repo)[ah.Version.parse("1.2.0")]
    assert remote.pull(other, f"{repo}@{digest}").version == "1.2.0"
    assert {i.version for i in other.versions("acme/many")} == tags
    with pytest.raises(NotFoundError, match=r"1\.9\.0 not found \(tags: .*1\.2\.0"):
        remote.pull(other, f"{repo}:1.9.0")
    with pytest.raises(NotFoundError, match="no version tag matches '>=3'"):
        remote.pull(other, f"{repo}@>=3")


def test_resolve_against_a_repository_gives_the_usual_verdicts(oci, reg, base_dir, base_other_weights,
                                                               base_other_shape, lora_dir, request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/r", version="1.0.0", base=base_dir, tasks=["sentiment"])
    OciRemote(insecure=True).push(reg, "acme/r@1.0.0", repo)
    remote = OciRemote(repo, insecure=True)
    (hit,) = remote.resolve(reg._as_base(str(base_dir)))
    assert (hit["verdict"], hit["name"], hit["tasks"]) == ("exact", f"{repo}:1.0.0", ["sentiment"])
    assert remote.resolve(reg._as_base(str(base_other_weights)))[0]["verdict"] == "structural"
    (bad,) = remote.resolve(reg._as_base(str(base_other_shape)))
    assert bad["verdict"] == "incompatible"
    # the verdicts and reasons local resolve gives for the same version and base (a 3-layer base
    # was structural here and incompatible there: the remote compared architecture signatures only)
    from conftest import save_base

    deeper = save_base(request.config._tmp_path_factory.mktemp("deeper") / "base", layers=3, seed=0)
    for b in (base_dir, base_other_weights, base_other_shape, deeper):
        (local,) = reg.resolve(b, include_incompatible=True)
        (there,) = remote.resolve(reg._as_base(str(b)))
        assert (there["verdict"], there["reasons"]) == (local.verdict, list(local.reasons)), b
    assert remote.resolve(reg._as_base(str(base_dir)), task="translation") == []


def test_a_tampered_blob_is_refused_with_nothing_recorded_or_written(tmp_path, reg, other, base_dir, lora_dir):
    srv = start_registry(tmp_path / "oci-tamper")
    try:
        repo = f"oci://{srv.host}/acme/t"
        reg.publish(lora_dir, name="acme/t", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(reg, "acme/t@1.0.0", repo)
        sha = next(f.sha256 for f in reg.show("acme/t@1.0.0").manifest.files
                   if f.path == "adapter_model.safetensors")
        blob = srv.blob_path("sha256:" + sha)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1  # one bit of one weight, same size
        os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
        blob.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match="do not match its digest"):
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert other.list() == []
        assert list(other.blobs.iter_digests()) == []
        assert list((tmp_path / "other-blobs" / "tmp").iterdir()) == []  # the layers received before: discarded
        # a manifest changed in storage: its bytes no longer hash to the digest its tag names
        reg.publish(lora_dir, name="acme/t", version="1.0.1", base=base_dir)
        pushed = OciRemote(insecure=True).push(reg, "acme/t@1.0.1", repo)
        mblob = srv.blob_path(pushed.commit)
        os.chmod(mblob, stat.S_IRUSR | stat.S_IWUSR)
        mblob.write_bytes(mblob.read_bytes().replace(b'"1.0.1"', b'"1.0.2"'))
        with pytest.raises(IntegrityError, match="the registry says"):
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.1", tmp_path / "out")
        assert not (tmp_path / "out").exists() and other.list() == []
    finally:
        srv.stop()


def test_large_blobs_go_up_in_chunks(oci, reg, other, tmp_path, base_dir, lora_dir, monkeypatch, request):
    import adapterhub_sdk.oci.client as client

    monkeypatch.setattr(client, "CHUNKED_ABOVE", 2048)  # the adapter's weights (~5 kB) take 3 PATCHes
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/chunked", version="1.0.0", base=base_dir)
    assert max(f.size for f in reg.show("acme/chunked@1.0.0").manifest.files) > 2 * 2048
    OciRemote(insecure=True).push(reg, "acme/chunked@1.0.0", repo)
    OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out")
    assert _files(tmp_path / "out") == _files(reg.pull("acme/chunked@1.0.0", tmp_path / "local"))


def test_a_pull_hashes_each_layer_once_and_stores_it_by_rename(oci, reg, other, tmp_path, base_dir, lora_dir,
                                                                monkeypatch, request):
    """Layers stream into the store's staging area, verified as they arrive: no second copy
    (stage, a packing copy) and no re-hash of the received files before they are stored, or
    when they are written to the destination (a kernel copy of the blobs just stored)."""
    import adapterhub_sdk.adapter_files as af
    import adapterhub_sdk.blobs as blobs

    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/once", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/once@1.0.0", repo)

    def copied(*a, **k):
        raise AssertionError("a received layer was copied or hashed again")

    monkeypatch.setattr(blobs.BlobStore, "stage", copied)
    monkeypatch.setattr(blobs.BlobStore, "copy_verified", copied)  # --out: copied from what was just verified
    monkeypatch.setattr(af, "copy_and_hash", copied)
    monkeypatch.setattr("adapterhub_sdk.package.copy_and_hash", copied)
    monkeypatch.setattr(af, "sha256_file", copied)
    OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out")
    monkeypatch.undo()
    assert _files(tmp_path / "out") == _files(reg.pull("acme/once@1.0.0", tmp_path / "local"))
    assert {f.sha256 for f in reg.show("acme/once@1.0.0").manifest.files} == set(other.blobs.iter_digests())
    assert all(other.blobs.verify(d) is None for d in other.blobs.iter_digests())
    assert list((tmp_path / "other-blobs" / "tmp").iterdir()) == []


def test_layer_titles_never_become_paths(oci, other, tmp_path, reg, base_dir, lora_dir, request):
    repo = _repo(request)
    reg.publish(lora_dir, name="acme/evil", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/evil@1.0.0", f"oci://{oci.host}/{repo}")
    with OciClient(oci.host, insecure=True) as c:
        doc = json.loads(c.get_manifest(repo, "1.0.0")[0])
        doc["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../../escaped"
        c.put_manifest(repo, "evil", json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match="is not a plain file name"):
        OciRemote(insecure=True).pull(other, f"oci://{oci.host}/{repo}:evil", tmp_path / "d" / "out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "d").exists() and other.list() == []


def test_signatures_travel_as_a_cosign_style_tag_and_verify_after_pull(oci, reg, other, tmp_path, base_dir,
                                                                       lora_dir, request):
    from adapterhub_sdk.signing import generate_key

    repo = f"oci://{oci.host}/{_repo(request)}"
    key = generate_key("alice")
    reg.trust_key("alice", key.public_pem)
    other.trust_key("alice", key.public_pem)
    reg.publish(lora_dir, name="acme/signed", version="1.0.0", base=base_dir)
    reg.sign("acme/signed@1.0.0", key="alice")
    res = OciRemote(insecure=True).push(reg, "acme/signed@1.0.0", repo)
    assert res.signatures == 1
    with OciClient(oci.host, insecure=True) as c:
        assert "sha256-" + res.commit.removeprefix("sha256:") + ".sig" in c.tags(parse_oci_ref(repo).repo)
    OciRemote(insecure=True).pull(other, f"{repo}:1.0.0")
    vs = other.signatures("acme/signed@1.0.0")
    assert vs.ok and vs.signed_by == ["alice"]
    other.pull("acme/signed@1.0.0", tmp_path / "out", require_signed="alice")
    assert (tmp_path / "out" / "model.sig").is_file()
    # an unsigned version is refused under the policy, after it was recorded
    reg.publish(lora_dir, name="acme/signed", version="1.1.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/signed@1.1.0", repo)
    other.set_signing_policy(["alice"])
    with pytest.raises(ah.SignaturePolicyError):
        OciRemote(insecure=True).pull(other, f"{repo}:1.1.0", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_a_cosign_signature_at_the_tag_is_left_alone(oci, reg, other, base_dir, lora_dir, request):
    """cosign writes its own artifact at ``sha256-HEX.sig``: a pull ignores it, a push of our
    signatures does not overwrite it (a warning says they were not pushed)."""
    from adapterhub_sdk.oci.refs import signature_tag
    from adapterhub_sdk.signing import generate_key

    repo = _repo(request)
    reg.trust_key("alice", generate_key("alice").public_pem)
    reg.publish(lora_dir, name="acme/cosigned", version="1.0.0", base=base_dir)
    res = OciRemote(insecure=True).push(reg, "acme/cosigned@1.0.0", f"oci://{oci.host}/{repo}")
    payload, config = b'{"critical":{}}', b'{"architecture":"","os":""}'
    with OciClient(oci.host, insecure=True) as c:
        c.push_blob(repo, sha256_digest(payload), len(payload), payload)
        c.push_blob(repo, sha256_digest(config), len(config), config)
        cosign = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                        "digest": sha256_digest(config), "size": len(config)},
                             "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                                         "digest": sha256_digest(payload), "size": len(payload),
                                         "annotations": {"dev.cosignproject.cosign/signature": "MEUC"}}]}).encode()
        c.put_manifest(repo, signature_tag(res.commit), cosign)
    assert OciRemote(insecure=True).pull(other, f"oci://{oci.host}/{repo}:1.0.0").version == "1.0.0"
    reg.sign("acme/cosigned@1.0.0", key="alice")
    with pytest.warns(UserWarning, match="another tool's signature artifact"):
        assert OciRemote(insecure=True).push(reg, "acme/cosigned@1.0.0", f"oci://{oci.host}/{repo}").signatures == 0
    with OciClient(oci.host, insecure=True) as c:
        assert c.get_manifest(repo, signature_tag(res.commit))[0] == cosign


def test_credentials_from_the_docker_configuration(tmp_path, reg, other, base_dir, lora_dir, monkeypatch):
    pytest.importorskip("bcrypt", reason="bcrypt (PyPI) writes the registry's htpasswd file")
    srv = start_registry(tmp_path / "oci-auth", users={"alice": "s3cret"})
    try:
        repo = f"oci://{srv.host}/acme/private"
        reg.publish(lora_dir, name="acme/private", version="1.0.0", base=base_dir)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
        with pytest.raises(OciAuthError, match="requires credentials and none are configured") as exc:
            OciRemote(insecure=True).push(reg, "acme/private@1.0.0", repo)
        assert "docker login" in exc.value.hint
        cfg = tmp_path / "docker"
        cfg.mkdir()
        (cfg / "config.json").write_text(json.dumps({"auths": {srv.host: {"auth": base64.b64encode(
            b"alice:wrong").decode()}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
        with pytest.raises(OciAuthError, match="refused the credentials"):
            OciRemote(insecure=True).push(reg, "acme/private@1.0.0", repo)
        (cfg / "config.json").write_text(json.dumps({"auths": {f"http://{srv.host}/v2/": {"auth": base64.b64encode(
            b"alice:s3cret").decode()}}}))
        assert OciRemote(insecure=True).push(reg, "acme/private@1.0.0", repo).created
        # a credential helper (docker-credential-NAME get), as credHelpers names it
        helper = tmp_path / "bin" / "docker-credential-testhelper"
        helper.parent.mkdir()
        reply = '{"Username":"alice","Secret":"s3cret"}'
        helper.write_text(f'#!/bin/sh\nread host\n[ "$host" = "{srv.host}" ] && echo \'{reply}\'\n')
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
        (cfg / "config.json").write_text(json.dumps({"credHelpers": {srv.host: "testhelper"}}))
        assert OciRemote(insecure=True).pull(other, f"{repo}:1.0.0").version == "1.0.0"
        # a helper that fails, and an identitytoken entry: said, not "none are configured"
        failing = tmp_path / "bin" / "docker-credential-failing"
        failing.write_text("#!/bin/sh\necho 'credentials not found in native keychain' >&2\nexit 1\n")
        failing.chmod(0o755)
        (cfg / "config.json").write_text(json.dumps({"credHelpers": {srv.host: "failing"}}))
        with pytest.raises(OciAuthError, match=r"docker-credential-failing failed \(exit 1: credentials not found"):
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.0")
        (cfg / "config.json").write_text(json.dumps({"auths": {srv.host: {"identitytoken": "tok"}}}))
        with pytest.raises(OciAuthError, match="holds an identitytoken"):
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.0")
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
        with pytest.raises(OciAuthError, match="none are configured"):  # nothing stale from the calls above
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.0")
    finally:
        srv.stop()


def test_bearer_tokens_from_the_registrys_token_service(tmp_path, reg, other, base_dir, lora_dir, monkeypatch):
    from ociserver import TokenService

    (tmp_path / "oci-token").mkdir()
    tokens = TokenService(tmp_path / "oci-token", {"alice": "s3cret"})
    srv = start_registry(tmp_path / "oci-token", token=tokens)
    try:
        repo = f"oci://{srv.host}/acme/tokened"
        reg.publish(lora_dir, name="acme/tokened", version="1.0.0", base=base_dir)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
        with pytest.raises(OciAuthError, match="requires credentials and none are configured"):
            OciRemote(insecure=True).push(reg, "acme/tokened@1.0.0", repo)  # an anonymous token grants nothing
        cfg = tmp_path / "docker"
        cfg.mkdir()
        (cfg / "config.json").write_text(json.dumps({"auths": {srv.host: {"username": "alice",
                                                                          "password": "wrong"}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
        with pytest.raises(OciAuthError, match="token service refused the credentials"):
            OciRemote(insecure=True).push(reg, "acme/tokened@1.0.0", repo)
        (cfg / "config.json").write_text(json.dumps({"auths": {srv.host: {"auth": base64.b64encode(
            b"alice:s3cret").decode()}}}))
        assert OciRemote(insecure=True).push(reg, "acme/tokened@1.0.0", repo).created
        assert OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out").version == "1.0.0"
        assert ("alice", "repository:acme/tokened:pull,push") in tokens.requests
        assert ("alice", "repository:acme/tokened:pull") in tokens.requests
    finally:
        srv.stop()
        tokens.stop()


def test_unreachable_and_plain_http_without_insecure_are_one_line_errors(oci, reg, base_dir, lora_dir):
    from ociserver import free_port

    reg.publish(lora_dir, name="acme/x", version="1.0.0", base=base_dir)
    with pytest.raises(OciUnavailableError, match="not reachable") as exc:
        OciRemote(insecure=True).push(reg, "acme/x@1.0.0", f"oci://127.0.0.1:{free_port()}/acme/x")
    assert "\n" not in str(exc.value)
    with pytest.raises(OciUnavailableError, match="plain-HTTP") as exc:
        OciRemote().push(reg, "acme/x@1.0.0", f"oci://{oci.host}/acme/x")
    assert "--insecure" in exc.value.hint


def test_cli_push_pull_resolve_json(oci, tmp_path, base_dir, lora_dir, request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    with ah.Registry.open() as home:  # the home the CLI opens (ADAPTERHUB_HOME)
        home.publish(lora_dir, name="acme/cli", version="1.0.0", base=base_dir)
    pushed = json.loads(run_cli("push", "acme/cli@1.0.0", "--to", repo, "--insecure", "--json", check=True).stdout)
    assert pushed["tag"] == "1.0.0" and pushed["created"] is True
    with ah.Registry.open() as home:  # the OCI manifest's digest is "digest"; the adapter's, "adapter_digest"
        assert pushed["adapter_digest"] == home.show("acme/cli@1.0.0").digest != pushed["digest"]
    bad = run_cli("push", "acme/cli@1.0.0", "--to", repo)  # HTTPS by default: a plain-HTTP registry fails
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--insecure" in bad.stderr
    env = {"ADAPTERHUB_HOME": str(tmp_path / "home2")}
    pulled = json.loads(run_cli("pull", f"{repo}@^1", "--out", str(tmp_path / "out"), "--insecure", "--json",
                                env=env, check=True).stdout)
    assert pulled["version"] == "1.0.0" and pulled["origin"].startswith(repo + "@sha256:")
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    hits = json.loads(run_cli("resolve", "--base", str(base_dir), "--remote", repo, "--insecure", "--json",
                              env=env, check=True).stdout)
    assert [(h["verdict"], h["name"]) for h in hits] == [("exact", f"{repo}:1.0.0")]
    assert hits[0]["adapter_digest"] == pulled["digest"] and hits[0]["digest"] == pushed["digest"]
    missing = run_cli("pull", f"{repo}:9.9.9", "--insecure", env=env)
    assert missing.returncode == 1 and "not found (tags: 1.0.0)" in missing.stderr


def test_pulling_a_name_held_from_elsewhere_needs_consent(oci, reg, other, base_dir, lora_dir, lora_dir_b,
                                                          request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/owned", version="2.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/owned@2.0.0", repo)
    other.publish(lora_dir_b, name="acme/owned", version="1.0.0", base=base_dir)
    with pytest.raises(AdapterHubError, match="already has versions from publishes in this registry"):
        OciRemote(insecure=True).pull(other, f"{repo}:2.0.0")
    assert OciRemote(insecure=True).pull(other, f"{repo}:2.0.0", name="acme/owned").version == "2.0.0"


def test_the_remote_is_a_builtin_plugin_found_by_scheme():
    from adapterhub_sdk.interfaces import Remote
    from adapterhub_sdk.remotes import get_remote

    r = get_remote("oci://registry.example.com/team/x:1.0.0")
    assert isinstance(r, Remote) and r.model_id("oci://registry.example.com/team/x") == "registry.example.com/team/x"
    with pytest.raises(NotFoundError, match="holds adapters here, not base models"):
        r.fetch_base("oci://registry.example.com/team/x")




def _repinned(oci, repo: str, src_repo: str, tag: str, base: ah.BaseFingerprint, keep_digest: bool = False) -> None:
    """Copy ``src_repo:tag`` to ``repo:tag`` with its config (our manifest) and annotations
    claiming ``base`` as the pinned base: what a crafted or buggy push would hold."""
    from adapterhub_sdk.oci.refs import ANN

    with OciClient(oci.host, insecure=True) as c:
        doc = json.loads(c.get_manifest(src_repo, tag)[0])
        cfg = json.loads(c.fetch_small(src_repo, doc["config"]["digest"], 1 << 20))
        cfg["base"].update(fingerprint=base.digest, arch_signature=base.arch_signature)
        if not keep_digest:
            cfg.pop("digest", None)  # optional; it would no longer match
        raw = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
        for layer in doc["layers"]:
            data = c.fetch_small(src_repo, layer["digest"], 1 << 30)
            c.push_blob(repo, layer["digest"], layer["size"], data)
        c.push_blob(repo, sha256_digest(raw), len(raw), raw)
        doc["config"] = {**doc["config"], "digest": sha256_digest(raw), "size": len(raw)}
        doc["annotations"].update({ANN + "base.fingerprint": base.digest, ANN + "base.arch": base.arch_signature})
        doc["annotations"].pop(ANN + "manifest.digest", None)
        c.put_manifest(repo, tag, json.dumps(doc).encode())


def test_a_pin_the_files_do_not_fit_is_refused_by_pull_and_resolve(oci, reg, other, tmp_path, base_dir,
                                                                     base_other_shape, lora_dir, request):
    """An artifact whose manifest pins a base its files do not fit (crafted, or pushed by a
    buggy tool): where that base is known here, the pull refuses it before anything is
    recorded (as a Hub pull does), and resolve against the repository calls it incompatible
    with the shape that differs, never exact."""
    src, repo = _repo(request) + "-src", _repo(request)
    reg.publish(lora_dir, name="acme/pin", version="1.0.0", base=base_dir, tasks=["sentiment"])
    OciRemote(insecure=True).push(reg, "acme/pin@1.0.0", f"oci://{oci.host}/{src}")
    wrong = other.register_base(base_other_shape)
    _repinned(oci, repo, src, "1.0.0", wrong)
    url = f"oci://{oci.host}/{repo}"
    (hit,) = OciRemote(url, insecure=True).resolve(wrong)
    assert hit["verdict"] == "incompatible" and hit["reasons"][0].startswith("shape:"), hit
    with pytest.raises(ah.IncompatibleAdapterError, match="do not fit that base"):
        OciRemote(insecure=True).pull(other, f"{url}:1.0.0", tmp_path / "out")
    assert other.list() == [] and not (tmp_path / "out").exists()
    assert list(other.blobs.iter_digests()) == []
    out = run_cli("pull", f"{url}:1.0.0", "--insecure", env={"ADAPTERHUB_HOME": str(tmp_path / "cli-home")})
    assert out.returncode == 0  # the base is unknown in that home: the claim is recorded, as a Hub pull does
    from transformers import AutoModelForCausalLM

    claimed = ah.Registry.open(f"sqlite:///{tmp_path / 'cli-home' / 'registry.db'}",
                               blobs=tmp_path / "cli-home" / "blobs")
    try:  # ... and loading it on that base is refused by our check (before PEFT's size mismatch)
        with pytest.raises(ah.IncompatibleAdapterError, match="does not fit this model: shape"):
            ah.load_adapter(AutoModelForCausalLM.from_pretrained(base_other_shape), "acme/pin@1.0.0",
                            registry=claimed)
        assert [m.verdict for m in claimed.resolve(fingerprint=wrong.digest)] == ["exact"]  # the bare claim
        with pytest.warns(UserWarning, match=r"acme/pin@1.0.0 \(pulled from .*\) claims base .*yanked"):
            claimed.register_base(base_other_shape)  # the base known now: the claim is checked, and fails
        assert claimed.resolve(base_other_shape, include_incompatible=True) == []
        assert claimed.show("acme/pin@1.0.0").yanked
        # an exact pin finds a yanked version, but not as an exact match for a base it does not fit
        assert claimed.resolve(base_other_shape, name="acme/pin@1.0.0") == []
        (m,) = claimed.resolve(base_other_shape, name="acme/pin@1.0.0", include_incompatible=True)
        assert m.verdict == "incompatible" and "files do not fit it" in m.reasons[0] and \
            m.reasons[1].startswith("shape:"), m
        # ... and it cannot be un-yanked into resolve's exact matches
        with pytest.raises(ah.IncompatibleAdapterError, match="stays yanked.*do not fit it"):
            claimed.yank("acme/pin@1.0.0", undo=True)
        assert claimed.show("acme/pin@1.0.0").yanked
        # ... and a second pull refuses what the first took
        with pytest.raises(ah.IncompatibleAdapterError, match="do not fit that base"):
            OciRemote(insecure=True).pull(claimed, f"{url}:1.0.0", tmp_path / "again")
        assert not (tmp_path / "again").exists()
    finally:
        claimed.close()
    home = {"ADAPTERHUB_HOME": str(tmp_path / "cli-home2")}
    assert run_cli("fingerprint", str(base_other_shape), "--register", env=home).returncode == 0
    out = run_cli("pull", f"{url}:1.0.0", "--insecure", env=home)
    assert out.returncode == 1 and "do not fit that base" in out.stderr and out.stderr.count("\n") <= 2, out.stderr
    pinned = run_cli("resolve", "--fingerprint", wrong.digest, "--name", "acme/pin@1.0.0", "--json",
                     env={"ADAPTERHUB_HOME": str(tmp_path / "cli-home")})  # the CLI's SQLite read path
    assert pinned.returncode == 0 and json.loads(pinned.stdout) == [], pinned.stdout + pinned.stderr
    undo = run_cli("yank", "acme/pin@1.0.0", "--undo", env={"ADAPTERHUB_HOME": str(tmp_path / "cli-home")})
    assert undo.returncode == 1 and "stays yanked" in undo.stderr and undo.stderr.count("\n") == 1, undo.stderr


def test_a_config_that_is_no_valid_manifest_is_refused_naming_the_artifact(oci, reg, other, tmp_path, base_dir,
                                                                           base_other_shape, lora_dir, request):
    src, repo = _repo(request) + "-src", _repo(request)
    reg.publish(lora_dir, name="acme/cfg", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/cfg@1.0.0", f"oci://{oci.host}/{src}")
    _repinned(oci, repo, src, "1.0.0", ah.fingerprint(base_other_shape), keep_digest=True)  # its digest now lies
    url = f"oci://{oci.host}/{repo}:1.0.0"
    with pytest.raises(IntegrityError, match=f"{repo}.*config.*not valid: manifest digest does not match.*nothing was"):
        OciRemote(insecure=True).pull(other, url, tmp_path / "out")
    assert other.list() == [] and not (tmp_path / "out").exists()


def test_pulling_a_version_held_here_with_intact_blobs_downloads_no_layer(tmp_path, reg, other, base_dir,
                                                                           lora_dir):
    """A second pull of a version recorded here (same manifest digest, blobs re-hashed
    intact) fetches the manifests but no layer: a layer damaged in the registry meanwhile
    does not matter, and the files written are ours, verified."""
    srv = start_registry(tmp_path / "oci-again")
    try:
        repo = f"oci://{srv.host}/acme/again"
        reg.publish(lora_dir, name="acme/again", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(reg, "acme/again@1.0.0", repo)
        OciRemote(insecure=True).pull(other, f"{repo}:1.0.0")
        big = next(f.sha256 for f in reg.show("acme/again@1.0.0").manifest.files
                   if f.path == "adapter_model.safetensors")
        blob = srv.blob_path("sha256:" + big)
        os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1
        blob.write_bytes(bytes(data))  # a download of it now fails its digest
        OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (tmp_path / "out" / name).read_bytes() == (lora_dir / name).read_bytes()
        assert hashlib.sha256((tmp_path / "out" / "adapter_model.safetensors").read_bytes()).hexdigest() == big
        # the local copy damaged too: it is downloaded again, and the registry's damage is found
        (other.blobs.path(big)).chmod(0o644)
        local = bytearray(other.blobs.path(big).read_bytes())
        local[-1] ^= 1
        other.blobs.path(big).write_bytes(bytes(local))
        with pytest.raises(IntegrityError):
            OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", tmp_path / "out2")
        assert not (tmp_path / "out2").exists()
    finally:
        srv.stop()


def test_push_refuses_a_yanked_version_and_a_build_metadata_twin_tag(oci, reg, other, base_dir, lora_dir,
                                                                     lora_dir_b, request):
    """A yanked version pushed became the repository's @latest elsewhere; 1.0.0 pushed beside
    an existing 1.0.0_b1 made @1.0.0 and @latest ambiguous there (a local publish refuses the
    same pair)."""
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/y", version="1.1.0", base=base_dir)
    reg.yank("acme/y@1.1.0")
    with pytest.raises(AdapterHubError, match="is yanked here") as info:
        OciRemote(insecure=True).push(reg, "acme/y@1.1.0", repo)
    assert "--undo" in info.value.hint
    reg.publish(lora_dir, name="acme/y", version="1.0.0+b1", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/y@1.0.0+b1", repo)
    other.publish(lora_dir_b, name="acme/y", version="1.0.0", base=base_dir)
    with pytest.raises(VersionConflictError, match="1.0.0_b1 is the same version as 1.0.0"):
        OciRemote(insecure=True).push(other, "acme/y@1.0.0", repo)
    assert [str(v) for v in OciRemote(insecure=True).versions(repo)] == ["1.0.0+b1"]


def test_a_pull_into_an_existing_out_refuses_before_recording_anything(oci, reg, other, tmp_path, base_dir,
                                                                       lora_dir, request):
    repo = f"oci://{oci.host}/{_repo(request)}"
    reg.publish(lora_dir, name="acme/o", version="1.0.0", base=base_dir)
    OciRemote(insecure=True).push(reg, "acme/o@1.0.0", repo)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        OciRemote(insecure=True).pull(other, f"{repo}:1.0.0", out)
    assert other.list() == [] and (out / "keep.txt").read_text() == "mine"


def test_resolve_remote_refuses_the_filters_it_cannot_apply_instead_of_ignoring_them(oci, tmp_path, base_dir,
                                                                                     lora_dir, request):
    """--method, --name, --runtime and --all were silently ignored by a remote search (a
    nonexistent runtime still listed LoRA versions as exact), and so was a :TAG in the URL."""
    repo = f"oci://{oci.host}/{_repo(request)}"
    with ah.Registry.open() as home:
        home.publish(lora_dir, name="acme/filters", version="1.0.0", base=base_dir)
    run_cli("push", "acme/filters@1.0.0", "--to", repo, "--insecure", check=True)
    for extra, names in ((["--method", "ia3"], "--method"), (["--runtime", "nonexistent"], "--runtime"),
                         (["--name", "acme/filters"], "--name"), (["--all"], "--all")):
        res = run_cli("resolve", "--base", str(base_dir), "--remote", repo, "--insecure", *extra)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and names in res.stderr, res.stderr
        assert "apply to the local registry only" in res.stderr
    tagged = run_cli("resolve", "--base", str(base_dir), "--remote", f"{repo}:1.0.0", "--insecure")
    assert tagged.returncode == 1 and "give the repository only" in tagged.stderr, tagged.stderr
    local = run_cli("resolve", "--base", str(base_dir), "--author", "acme")
    assert local.returncode == 2 and "--author applies to --hub" in local.stderr
    ok = run_cli("resolve", "--base", str(base_dir), "--remote", repo, "--insecure", "--json", check=True)
    assert [h["verdict"] for h in json.loads(ok.stdout)] == ["exact"]


def test_remote_resolve_and_pull_say_what_is_there(oci, tmp_path, base_dir, lora_dir, request):
    """Found by a user-style check. ``resolve --remote`` with a --task no version has says
    which filter matched nothing (it said 'no adapters in REPO' of a repository holding
    versions); on a repository nothing was pushed to it says so and exits 1, as pull does (it
    exited 0); a tag spelled with '+' points to its '_' spelling and to @VERSION."""
    repo = f"oci://{oci.host}/{_repo(request)}"
    with ah.Registry.open() as home:
        home.publish(lora_dir, name="acme/said", version="1.2.0+build.7", base=base_dir)
    run_cli("push", "acme/said@1.2.0+build.7", "--to", repo, "--insecure", check=True)
    r = run_cli("resolve", "--base", str(base_dir), "--remote", repo, "--insecure", "--task", "chat", check=True)
    assert r.stdout.strip() == f"no adapters in {repo} match task chat"
    r = run_cli("resolve", "--base", str(base_dir), "--remote", f"oci://{oci.host}/t/never-pushed", "--insecure")
    assert r.returncode == 1 and "the repository has no tags" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run_cli("pull", f"{repo}:1.2.0+build.7", "--insecure", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and ":1.2.0_build.7" in r.stderr and "@1.2.0+build.7" in r.stderr, r.stderr
    r = run_cli("pull", f"{repo}@1.2.0+build.7", "--insecure", "--out", str(tmp_path / "x"), check=True)

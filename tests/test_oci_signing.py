"""``oci://`` pulls under a signing policy, against a real CNCF distribution registry
(tests/ociserver.py, Debian's docker-registry on loopback): the signatures and the policy
in force are checked before anything is recorded or stored, so a refused artifact leaves
no version (list and resolve show nothing) and no blob behind; a signed one is recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ociserver import REGISTRY, SKIP_REASON

import adapterhub_sdk as ah
from adapterhub_sdk.oci.client import OciClient
from adapterhub_sdk.oci.refs import parse_oci_ref, signature_tag
from adapterhub_sdk.oci.remote import OciRemote
from adapterhub_sdk.signing import generate_key

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")  # never the user's own key directory
    return {"alice": generate_key("alice", directory=d), "bob": generate_key("bob", directory=d)}


@pytest.fixture
def pushed(oci, tmp_path, base_dir, lora_dir, keys, request):
    """A repository holding acme/s@1.0.0 unsigned, 1.1.0 signed by alice, 1.2.0 signed by bob."""
    repo = f"oci://{oci.host}/t/" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    with ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs") as pub:
        for name, key in keys.items():
            pub.trust_key(name, key.public_pem)
        for version, signer in (("1.0.0", None), ("1.1.0", "alice"), ("1.2.0", "bob")):
            pub.publish(lora_dir, name="acme/s", version=version, base=base_dir)
            if signer:
                pub.sign(f"acme/s@{version}", key=keys[signer])
            OciRemote(insecure=True).push(pub, f"acme/s@{version}", repo)
    return repo


def _puller(tmp_path: Path, keys) -> tuple[str, Path]:
    """A second machine's registry, trusting alice only."""
    url, blobs = f"sqlite:///{tmp_path / 'pull.db'}", tmp_path / "pull-blobs"
    with ah.Registry.open(url, blobs=blobs) as reg:
        reg.trust_key("alice", keys["alice"].public_pem)
    return url, blobs


def _nothing_recorded(url: str, blobs: Path, base_dir: Path) -> None:
    with ah.Registry.open(url, blobs=blobs) as reg:
        assert reg.list() == []
        assert reg.resolve(base_dir) == []
        assert list(reg.blobs.iter_digests()) == []  # no layer was stored, referenced or not
    assert not list(blobs.glob("tmp/*"))


def test_cli_require_signed_refuses_unsigned_and_untrusted_before_recording(pushed, tmp_path, base_dir, keys):
    url, blobs = _puller(tmp_path, keys)
    cli = ("--registry", url, "--blobs", str(blobs))
    for tag, says in (("1.0.0", "requires a signature by alice, and it is unsigned"),
                      ("1.2.0", "requires a signature by alice")):
        out = tmp_path / f"out-{tag}"
        proc = run_cli(*cli, "pull", f"{pushed}:{tag}", "--require-signed", "alice", "--insecure",
                       "--out", str(out))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and says in lines[0] and "refused" in lines[0], proc.stderr
        assert not out.exists()
        # and without --out: the version is only recorded when it passes, which it does not
        again = run_cli(*cli, "pull", f"{pushed}:{tag}", "--require-signed", "alice", "--insecure")
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
        _nothing_recorded(url, blobs, base_dir)
    assert "acme/s" not in run_cli(*cli, "list", check=True).stdout
    listed = json.loads(run_cli(*cli, "list", "--json", check=True).stdout)
    assert listed == []

    got = json.loads(run_cli(*cli, "pull", f"{pushed}:1.1.0", "--require-signed", "alice", "--insecure",
                             "--out", str(tmp_path / "signed"), "--json", check=True).stdout)
    assert got["version"] == "1.1.0"
    assert (tmp_path / "signed" / "model.sig").is_file()
    with ah.Registry.open(url, blobs=blobs) as reg:
        assert [i.version for i in reg.list()] == ["1.1.0"]
        assert reg.signatures("acme/s@1.1.0").signed_by == ["alice"]
        assert reg.verify().ok


@pytest.mark.parametrize("how", ["registry policy", "environment", "require_signed="])
def test_a_policy_in_force_is_checked_before_recording(how, pushed, tmp_path, base_dir, keys, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_OCI_INSECURE", parse_oci_ref(pushed).host)
    url, blobs = _puller(tmp_path, keys)
    kw = {}
    with ah.Registry.open(url, blobs=blobs) as reg:
        if how == "registry policy":
            reg.set_signing_policy(["alice"])
        elif how == "environment":
            monkeypatch.setenv("ADAPTERHUB_REQUIRE_SIGNED", "alice")
        else:
            kw = {"require_signed": "alice"}
        for tag in ("1.0.0", "1.2.0"):
            with pytest.raises(ah.SignaturePolicyError, match="requires a signature by alice"):
                reg.pull(f"{pushed}:{tag}", tmp_path / f"out-{tag}", **kw)
            with pytest.raises(ah.SignaturePolicyError):
                reg.pull(f"{pushed}:{tag}", **kw)  # recording only
            with pytest.raises(ah.SignaturePolicyError):
                OciRemote(insecure=True).pull(reg, f"{pushed}:{tag}", **kw)  # the remote itself
            assert not (tmp_path / f"out-{tag}").exists()
    _nothing_recorded(url, blobs, base_dir)
    with ah.Registry.open(url, blobs=blobs) as reg:
        reg.pull(f"{pushed}:1.1.0", tmp_path / "ok", **kw)
        assert [i.version for i in reg.list()] == ["1.1.0"]
        assert [h.ref for h in reg.resolve(base_dir)] == ["acme/s@1.1.0"]


def test_a_trusted_signature_over_other_files_is_refused_without_a_policy(pushed, tmp_path, base_dir, keys,
                                                                          monkeypatch):
    """alice's signature of 1.1.0 copied to 1.0.0's signature tag: it covers other files (a
    different manifest), so the pull is refused before anything is recorded, policy or not."""
    ref = parse_oci_ref(pushed)
    monkeypatch.setenv("ADAPTERHUB_OCI_INSECURE", ref.host)
    with OciClient(ref.host, insecure=True) as c:
        signed = c.head_manifest(ref.repo, "1.1.0")
        unsigned = c.head_manifest(ref.repo, "1.0.0")
        body, _ = c.get_manifest(ref.repo, signature_tag(signed))
        c.put_manifest(ref.repo, signature_tag(unsigned), body)
    url, blobs = _puller(tmp_path, keys)
    with ah.Registry.open(url, blobs=blobs) as reg, pytest.raises(ah.IntegrityError, match="by alice is refused"):
        reg.pull(f"{pushed}:1.0.0")
    _nothing_recorded(url, blobs, base_dir)
    # a key not trusted here signing other files is only that repository's claim: no policy, recorded
    with ah.Registry.open(url, blobs=blobs) as reg:
        assert reg.pull(f"{pushed}:1.2.0") is None
        assert reg.signatures("acme/s@1.2.0").checks[0].status == "untrusted"

"""A repository shared with other tools: semver tags that hold another kind of artifact
(pushed here by the oras Python client, an independent OCI client, to the real CNCF
distribution registry on loopback) are passed over by ``@latest`` and ranges, which pick
the newest tag holding an adapter; a spec whose only matches are foreign says so, naming
them; an exact pin of a foreign tag is refused naming the tag.

Before: ``@latest`` took the highest semver tag whatever it held, and pull, serve and the
vLLM resolver failed on a repository where an image or a model had a higher version tag
than the adapters."""

from __future__ import annotations

import hashlib

import pytest
from ociserver import REGISTRY, SKIP_REASON

from adapterhub_sdk.errors import NotFoundError
from adapterhub_sdk.oci.remote import OciRemote

from conftest import run_cli

oras_client = pytest.importorskip("oras.client", reason="the oras Python package pushes the foreign artifacts")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


def _foreign(oci, repo: str, tag: str, tmp_path) -> None:
    """Push a plain file as an ORAS artifact (oras' own media types, no adapterhub config)."""
    f = tmp_path / f"notes-{tag}.txt"
    f.write_text(f"not an adapter ({tag})\n")
    client = oras_client.OrasClient(hostname=oci.host, insecure=True)
    client.push(target=f"{oci.host}/{repo}:{tag}", files=[str(f)], disable_path_validation=True, quiet=True)


def test_latest_and_ranges_pass_over_tags_holding_other_artifacts(oci, reg, other, tmp_path, base_dir, lora_dir,
                                                                   request):
    repo = "t/" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    url = f"oci://{oci.host}/{repo}"
    remote = OciRemote(insecure=True)
    for v in ("1.0.0", "1.1.0"):
        reg.publish(lora_dir, name="acme/shared", version=v, base=base_dir)
        remote.push(reg, f"acme/shared@{v}", url)
    _foreign(oci, repo, "2.0.0", tmp_path)
    _foreign(oci, repo, "1.2.0", tmp_path)

    assert remote.pull(other, f"{url}@latest").version == "1.1.0"
    assert remote.pull(other, url).version == "1.1.0"
    assert remote.pull(other, f"{url}@^1").version == "1.1.0"
    with pytest.raises(NotFoundError, match=r"no version tag matching '>=2' holds an adapter \(tag 2\.0\.0 holds"):
        remote.pull(other, f"{url}@>=2")
    with pytest.raises(NotFoundError, match=r"matching '>=1\.2' holds an adapter \(tags 2\.0\.0, 1\.2\.0 hold "):
        remote.pull(other, f"{url}@>=1.2")
    with pytest.raises(NotFoundError, match=r"no version tag matching '~1\.2' holds an adapter \(tag 1\.2\.0 holds"):
        remote.pull(other, f"{url}@~1.2")
    with pytest.raises(NotFoundError, match=r"is not an adapter pushed by adapterhub"):
        remote.pull(other, f"{url}:2.0.0")
    with pytest.raises(NotFoundError, match=r"@2\.0\.0 \(tag 2\.0\.0\) is not an adapter pushed by adapterhub"):
        remote.pull(other, f"{url}@2.0.0")

    # the CLI as a user runs it, on a third machine's registry: @latest pulls the adapter
    home = tmp_path / "third"
    r = run_cli("--registry", f"sqlite:///{home / 'r.db'}", "--blobs", str(home / "blobs"), "pull",
                f"{url}@latest", "--insecure", "--out", str(tmp_path / "got"), "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "got" / "adapter_model.safetensors").read_bytes() == \
        (lora_dir / "adapter_model.safetensors").read_bytes()

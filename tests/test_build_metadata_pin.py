"""An exact pin that spells build metadata (``1.0.0+build.8``) names that build: with only
``1.0.0+build.7`` published, show, pull, resolve and load_adapter by spec say there is no
such version, on SQLite and PostgreSQL. A pin without build metadata (``1.0.0``) still
finds ``1.0.0+build.7`` (semver precedence; twins are refused at publish).

Before: the catalog compared versions by precedence only, so ``@1.0.0+build.8`` silently
gave ``+build.7``: another artifact than the one pinned."""

from __future__ import annotations

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.errors import NotFoundError

from conftest import run_cli


@pytest.fixture
def published(registry_url, tmp_path, base_dir, lora_dir):
    url = registry_url
    reg = ah.Registry.open(url, blobs=tmp_path / "blobs")
    reg.publish(lora_dir, name="acme/built", version="1.0.0+build.7", base=base_dir)
    yield reg, url
    reg.close()


def test_a_pin_with_other_build_metadata_finds_nothing(published, tmp_path, base_dir):
    reg, url = published
    with pytest.raises(NotFoundError, match=r"no version of acme/built matches '1\.0\.0\+build\.8' "
                                            r"\(available: 1\.0\.0\+build\.7\)"):
        reg.show("acme/built@1.0.0+build.8")
    with pytest.raises(NotFoundError, match=r"1\.0\.0\+build\.8"):
        reg.pull("acme/built@1.0.0+build.8", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert reg.resolve(base_dir, name="acme/built@1.0.0+build.8", include_incompatible=True) == []
    assert [m.version for m in reg.resolve(base_dir, name="acme/built@1.0.0+build.7")] == ["1.0.0+build.7"]
    assert reg.show("acme/built@1.0.0+build.7").version == "1.0.0+build.7"
    assert reg.show("acme/built@1.0.0").version == "1.0.0+build.7"  # no build spelled: precedence

    r = run_cli("--registry", url, "--blobs", str(tmp_path / "blobs"), "pull", "acme/built@1.0.0+build.8",
                "--out", str(tmp_path / "cli-out"))
    assert r.returncode != 0 and "1.0.0+build.8" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "cli-out").exists()
    r = run_cli("--registry", url, "--blobs", str(tmp_path / "blobs"), "pull", "acme/built@1.0.0+build.7",
                "--out", str(tmp_path / "cli-ok"), "--json")
    assert r.returncode == 0, r.stderr

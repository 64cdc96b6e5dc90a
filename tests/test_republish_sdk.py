"""Re-publishing identical files and metadata with a newer SDK (review of issue 8): the
manifest's digest covers what the SDK derives from the files (the method summary with its
``validated`` note, the variant, the requirements, the base's arch signature), so an older
SDK's manifest of the same adapter has another digest. The same files, config, base and
metadata are recognised as the version already published (created False, its stored
manifest and digest); anything the user gave that differs is still a conflict naming it.

The older SDK is this one with GenericPeftMethod.validation returning None (the SDK before
``validated`` existed); real PEFT adapters, real SQLite and PostgreSQL registries."""

from __future__ import annotations

import pytest
from test_method_table import GENERIC_ROWS, build

from adapterhub_sdk.errors import VersionConflictError
from adapterhub_sdk.methods.generic import GenericPeftMethod


@pytest.fixture(scope="module")
def hra(tmp_path_factory):
    row = next(g.row for g in GENERIC_ROWS if g.row.id == "hra-custom")
    return build(row, tmp_path_factory.mktemp("hra"))


def _publish_as_older_sdk(registry, b, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(GenericPeftMethod, "validation", lambda self, *a, **k: None)
        return registry.publish(b.adapter, name="acme/hra", version="1.0.0", base=b.base, **kw)


def test_identical_files_and_metadata_republished_by_a_newer_sdk_are_the_same_version(registry, hra, monkeypatch):
    old = _publish_as_older_sdk(registry, hra, monkeypatch, tasks=["cls"], license="mit")
    assert "validated" not in old.manifest.method["summary"]
    again = registry.publish(hra.adapter, name="acme/hra", version="1.0.0", base=hra.base, tasks=["cls"],
                             license="mit")
    assert again.created is False
    assert again.digest == old.digest and again.manifest.digest == old.digest  # the stored version
    assert registry.show("acme/hra@1.0.0").digest == old.digest
    assert [v.version for v in registry.versions("acme/hra")] == ["1.0.0"]


def test_what_the_user_changed_is_still_a_conflict_naming_it(registry, hra, monkeypatch):
    _publish_as_older_sdk(registry, hra, monkeypatch, license="mit")
    with pytest.raises(VersionConflictError) as err:
        registry.publish(hra.adapter, name="acme/hra", version="1.0.0", base=hra.base, license="apache-2.0")
    msg = str(err.value)
    assert "license: mit → apache-2.0" in msg and "\n" not in msg
    assert "summary" not in msg  # the SDK's own summary is not blamed on the user
    with pytest.raises(VersionConflictError, match="unpinned"):
        registry.publish(hra.adapter, name="acme/hra", version="1.0.0", license="mit")  # no base now

"""The registry through the Python API, on real SQLite and (when configured) real PostgreSQL.

Every test takes the ``registry`` fixture, so each runs once per backend. Adapters are
real PEFT saves of small Llama models (see conftest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import adapterhub_sdk as ah

NAME = "acme/sentiment"


# --------------------------------------------------------------------------- helpers


def blob_files(reg: ah.Registry) -> set[Path]:
    root = reg.blobs.root / "sha256"
    return {p for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def file_digests(directory: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


def versions_of(matches) -> list[tuple[str, str, str]]:
    return [(m.name, m.version, m.verdict) for m in matches]


@pytest.fixture(scope="module")
def ia3_dir(tmp_path_factory, base_dir) -> Path:
    """A real IA3 adapter (a method handled by the generic plugin)."""
    import torch
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    pm = get_peft_model(model, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                         feedforward_modules=["down_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "ia3_" in n:
                p.mul_(1.5)
    out = tmp_path_factory.mktemp("ia3") / "ia3"
    pm.save_pretrained(out)
    return out


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


# --------------------------------------------------------------------------- publish / pull


def test_publish_resolve_pull_roundtrip_loads_with_peft(registry, base_dir, lora_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"])
    assert res.created is True
    assert res.bytes_written == sum(p.stat().st_size for p in blob_files(registry))
    assert res.bytes_written > 0
    assert res.manifest.base.fingerprint == ah.fingerprint(base_dir).digest

    hits = registry.resolve(base_dir, task="sentiment")
    assert versions_of(hits) == [(NAME, "1.0.0", "exact")]
    assert hits[0].digest == res.digest

    out = registry.pull(f"{NAME}@^1", tmp_path / "pulled")
    assert out == tmp_path / "pulled"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (lora_dir / name).read_bytes()
    assert (out / "adapterhub_manifest.json").is_file()

    ids = torch.tensor([[1, 5, 9, 33, 2, 17]])
    base_model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    plain = _logits(base_model, ids)
    pulled = PeftModel.from_pretrained(base_model, out).eval()
    got = _logits(pulled, ids)
    orig = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), lora_dir).eval()
    want = _logits(orig, ids)
    assert torch.equal(got, want)
    assert not torch.allclose(got, plain), "the adapter must change the output (test would be vacuous)"


def test_identical_republish_is_a_noop(registry, base_dir, lora_dir):
    first = registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"])
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in blob_files(registry)}
    again = registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"])
    assert again.created is False
    assert again.bytes_written == 0
    assert again.digest == first.digest
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in blob_files(registry)}
    assert set(after) == set(before)
    for p, (ino, mtime) in after.items():  # the same files, not rewritten; only refreshed (gc's grace)
        assert ino == before[p][0] and mtime >= before[p][1]
    assert len(registry.list()) == 1
    assert registry.verify().ok


def test_same_version_other_content_conflicts(registry, base_dir, lora_dir, lora_dir_b):
    first = registry.publish(lora_dir, name=NAME, version="1.0.0")
    with pytest.raises(ah.VersionConflictError, match="already exists"):
        registry.publish(lora_dir_b, name=NAME, version="1.0.0")
    with pytest.raises(FileExistsError):
        registry.publish(lora_dir_b, name=NAME, version="1.0.0")
    # other metadata on identical files is other content too: versions are immutable
    with pytest.raises(ah.VersionConflictError):
        registry.publish(lora_dir, name=NAME, version="1.0.0", tasks=["other"])
    assert registry.show(f"{NAME}@1.0.0").digest == first.digest
    assert [i.version for i in registry.list()] == ["1.0.0"]


def test_refused_republish_names_each_field_that_differs(registry, base_dir, lora_dir, lora_dir_b, tmp_path):
    """The conflict says what differs, published value first ("license: apache-2.0 → none"),
    for tasks, description, license, metrics, base and files, in Python and through the CLI;
    an identical re-publish is still a no-op."""
    from conftest import run_cli

    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"],
                     license="apache-2.0", description="first", metrics={"acc": 0.9})
    with pytest.raises(ah.VersionConflictError) as err:
        registry.publish(lora_dir_b, name=NAME, version="1.0.0", tasks=["review", "sentiment"],
                         description="second", metrics={"acc": 0.91, "f1": 0.8})
    msg = str(err.value)
    for want in ("license: apache-2.0 → none", "tasks: sentiment → review, sentiment",
                 "description: first → second", "metrics.acc: 0.9 → 0.91", "metrics.f1: none → 0.8",
                 "base fingerprint: ", "→ none (unpinned: published without a base)",
                 "files: adapter_model.safetensors sha256 "):
        assert want in msg, (want, msg)
    assert "license: apache-2.0 → none" in err.value.differences
    with pytest.raises(ah.VersionConflictError, match=r"other content: license: apache-2.0 → none$"):
        registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"],
                         description="first", metrics={"acc": 0.9})
    assert not registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment"],
                                license="apache-2.0", description="first", metrics={"acc": 0.9}).created
    if registry.url.startswith("sqlite"):  # the CLI says the same (one run is enough)
        proc = run_cli("--registry", registry.url, "--blobs", str(tmp_path / "blobs"), "publish", str(lora_dir),
                       "--name", NAME, "--version", "1.0.0", "--base", str(base_dir), "--task", "sentiment",
                       "--description", "first", "--metric", "acc=0.9")
        assert proc.returncode == 1 and "license: apache-2.0 → none" in proc.stderr, proc.stderr


def test_publish_leaves_no_staged_copies_whatever_the_outcome(registry, base_dir, base_other_shape,
                                                              lora_dir, lora_dir_b, tmp_path):
    """Publish copies each file aside once and hashes the copy; created, no-op, conflict,
    incompatible base: the store's temp dir is empty afterwards and the blobs verify."""
    tmp = registry.blobs.root / "tmp"

    def staged() -> list[str]:
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []

    registry.publish(lora_dir, name=NAME, version="1.0.0")
    assert staged() == []
    assert registry.publish(lora_dir, name=NAME, version="1.0.0").bytes_written == 0
    assert staged() == []
    with pytest.raises(ah.VersionConflictError):
        registry.publish(lora_dir_b, name=NAME, version="1.0.0")
    assert staged() == []
    with pytest.raises(ah.IncompatibleAdapterError):
        registry.publish(lora_dir_b, name=NAME, version="2.0.0", base=base_other_shape)
    assert staged() == []
    with pytest.raises(ah.AdapterHubError):
        registry.publish(lora_dir, name=NAME, version="not-a-version")
    assert staged() == []
    assert registry.stats()["versions"] == 1
    assert registry.verify().ok
    # the stored bytes are the ones that were hashed: a source edited later changes nothing
    src = tmp_path / "src"
    src.mkdir()
    for f in lora_dir_b.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    res = registry.publish(src, name=NAME, version="1.1.0")
    (src / "adapter_config.json").write_text("{}")
    pulled = registry.pull(f"{NAME}@1.1.0", tmp_path / "out")
    for f in lora_dir_b.iterdir():
        assert (pulled / f.name).read_bytes() == f.read_bytes()
    assert {f.sha256 for f in res.manifest.files} == file_digests(lora_dir_b)


def test_identical_files_are_stored_once(registry, lora_dir, lora_dir_b):
    registry.publish(lora_dir, name="acme/a", version="1.0.0")
    n1 = len(blob_files(registry))
    assert n1 == len(file_digests(lora_dir))
    r2 = registry.publish(lora_dir, name="acme/b", version="1.0.0")
    r3 = registry.publish(lora_dir, name="acme/a", version="1.1.0", tasks=["x"])
    assert r2.created and r3.created
    assert r2.bytes_written == 0 and r3.bytes_written == 0
    assert len(blob_files(registry)) == n1
    registry.publish(lora_dir_b, name="acme/c", version="1.0.0")
    assert len(blob_files(registry)) == len(file_digests(lora_dir) | file_digests(lora_dir_b))
    assert registry.stats()["versions"] == 4
    assert registry.verify().ok


def test_names_are_case_insensitive(registry, lora_dir, lora_dir_b):
    registry.publish(lora_dir, name="Acme/X", version="1.0.0")
    res = registry.publish(lora_dir, name="acme/x", version="1.0.0")
    assert res.created is False and res.bytes_written == 0
    infos = registry.list()
    assert [(i.name, i.version) for i in infos] == [("Acme/X", "1.0.0")]
    assert registry.show("ACME/x@1.0.0").name == "Acme/X"
    with pytest.raises(ah.VersionConflictError):
        registry.publish(lora_dir_b, name="acme/X", version="1.0.0")
    registry.publish(lora_dir_b, name="acme/x", version="1.1.0")
    assert [i.version for i in registry.versions("aCmE/x")] == ["1.1.0", "1.0.0"]
    assert registry.stats()["adapters"] == 1


# --------------------------------------------------------------------------- specs


def _publish_series(reg, lora_dir, base_dir, versions, name=NAME):
    for v in versions:
        reg.publish(lora_dir, name=name, version=v, base=base_dir, tasks=["sentiment"])


def test_version_specs(registry, base_dir, lora_dir):
    _publish_series(registry, lora_dir, base_dir,
                    ["1.0.0", "1.2.0", "1.2.5", "1.3.0", "2.0.0", "2.1.0-rc.1"])

    def pick(spec: str | None) -> str:
        return registry.show(NAME if spec is None else f"{NAME}@{spec}").version

    assert pick("1.2.5") == "1.2.5"
    assert pick("^1") == "1.3.0"
    assert pick("~1.2") == "1.2.5"
    assert pick(">=1,<2") == "1.3.0"
    assert pick("^1.2") == "1.3.0"
    assert pick("latest") == "2.0.0"
    assert pick(None) == "2.0.0"
    assert pick("2.1.0-rc.1") == "2.1.0-rc.1"
    with pytest.raises(ah.NotFoundError, match="available"):
        pick("^3")
    with pytest.raises(LookupError):
        pick("~1.4")
    with pytest.raises(ah.InvalidVersionError):
        pick("1.x.>")


def test_alias_points_and_moves(registry, base_dir, lora_dir, tmp_path):
    _publish_series(registry, lora_dir, base_dir, ["1.0.0", "1.1.0"])
    info = registry.alias(f"{NAME}@1.0.0", "prod")
    assert info.version == "1.0.0" and info.aliases == ("prod",)
    assert registry.show(f"{NAME}@prod").version == "1.0.0"
    registry.alias(f"{NAME}@1.1.0", "prod")
    assert registry.show(f"{NAME}@prod").version == "1.1.0"
    assert registry.show(f"{NAME}@1.0.0").aliases == ()
    assert registry.pull(f"{NAME}@prod", tmp_path / "p").joinpath("adapter_model.safetensors").is_file()
    hits = registry.resolve(base_dir, name=f"{NAME}@prod")
    assert versions_of(hits) == [(NAME, "1.1.0", "exact")]
    with pytest.raises(ah.NotFoundError):
        registry.show(f"{NAME}@staging")
    with pytest.raises(ah.InvalidVersionError):
        registry.alias(f"{NAME}@^1", "prod")  # an alias points at an exact version
    with pytest.raises(ah.InvalidNameError):
        registry.alias(f"{NAME}@1.0.0", "latest")


def test_yanked_versions_only_by_exact_pin(registry, base_dir, lora_dir, tmp_path):
    _publish_series(registry, lora_dir, base_dir, ["1.0.0", "1.1.0", "1.2.0"])
    info = registry.yank(f"{NAME}@1.2.0")
    assert info.yanked is True
    assert registry.show(f"{NAME}@^1").version == "1.1.0"
    assert registry.show(f"{NAME}@>=1,<2").version == "1.1.0"
    assert registry.show(f"{NAME}@latest").version == "1.1.0"
    assert registry.show(NAME).version == "1.1.0"
    pinned = registry.show(f"{NAME}@1.2.0")
    assert pinned.version == "1.2.0" and pinned.yanked
    assert registry.pull(f"{NAME}@1.2.0", tmp_path / "y").is_dir()

    assert [m.version for m in registry.resolve(base_dir)] == ["1.1.0", "1.0.0"]
    assert [m.version for m in registry.resolve(base_dir, name=f"{NAME}@^1")] == ["1.1.0", "1.0.0"]
    assert [m.version for m in registry.resolve(base_dir, name=f"{NAME}@1.2.0")] == ["1.2.0"]
    # list shows everything, marked
    assert {(i.version, i.yanked) for i in registry.list()} == {("1.0.0", False), ("1.1.0", False),
                                                                ("1.2.0", True)}
    registry.yank(f"{NAME}@1.1.0")
    registry.yank(f"{NAME}@1.0.0")
    with pytest.raises(ah.NotFoundError, match="yanked"):
        registry.show(f"{NAME}@^1")
    registry.yank(f"{NAME}@1.2.0", undo=True)
    assert registry.show(f"{NAME}@latest").version == "1.2.0"
    with pytest.raises(ah.InvalidVersionError):
        registry.yank(f"{NAME}@^1")


def test_build_metadata_does_not_make_a_second_version(registry, lora_dir, lora_dir_b, ia3_dir, tmp_path):
    """1.0.0+build.5 and 1.0.0+build.6 have the same semver precedence: an exact pin could not
    tell them apart, so the second spelling is refused and pins stay unambiguous."""
    registry.publish(lora_dir, name=NAME, version="1.0.0+build.5")
    for other in ("1.0.0", "1.0.0+build.6"):
        with pytest.raises(ah.VersionConflictError, match=r"same version as the existing .*1\.0\.0\+build\.5"):
            registry.publish(lora_dir_b, name=NAME, version=other)
    registry.publish(ia3_dir, name=NAME, version="1.0.1+build.6")  # another precedence: fine
    assert registry.show(f"{NAME}@1.0.0").version == "1.0.0+build.5"
    assert registry.show(f"{NAME}@1.0.0+build.5").version == "1.0.0+build.5"
    assert registry.show(f"{NAME}@latest").version == "1.0.1+build.6"
    assert [i.version for i in registry.list(name=NAME)] == ["1.0.1+build.6", "1.0.0+build.5"]
    assert registry.publish(lora_dir, name=NAME, version="1.0.0+build.5").created is False  # identical: no-op


def test_republishing_repairs_a_damaged_blob(registry, lora_dir, tmp_path):
    first = registry.publish(lora_dir, name=NAME, version="1.0.0")
    weights = next(f for f in first.manifest.files if f.path == "adapter_model.safetensors")
    blob = registry.blobs.path(weights.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(data))
    assert not registry.verify().ok
    # a new version over the same files must not point at the damaged bytes
    second = registry.publish(lora_dir, name=NAME, version="1.1.0")
    assert second.created and second.bytes_written == weights.size
    assert registry.verify().ok
    blob.unlink()  # missing: the same name@version published again puts it back
    again = registry.publish(lora_dir, name=NAME, version="1.0.0")
    assert again.created is False and again.bytes_written == weights.size
    assert registry.verify().ok
    assert registry.pull(f"{NAME}@1.0.0", tmp_path / "out").is_dir()


def test_pull_with_every_blob_missing_points_at_the_blob_store_first(registry, registry_url, lora_dir, tmp_path):
    """The registry opened over another (empty) blob store: every blob of the version is
    absent, so the likely cause is the store, not damage. The error names blobs=DIR and
    ADAPTERHUB_BLOBS before 'verify' (the CLI: --blobs DIR); one missing blob is still damage."""
    from conftest import run_cli

    registry.publish(lora_dir, name=NAME, version="1.0.0")
    elsewhere = ah.Registry.open(registry_url, blobs=tmp_path / "other-blobs")
    try:
        with pytest.raises(ah.NotFoundError) as err:
            elsewhere.pull(f"{NAME}@1.0.0", tmp_path / "out")
    finally:
        elsewhere.close()
    text = f"{err.value}; {err.value.hint}"
    assert "none of the" in text and "blob store" in text
    assert text.index("blobs=DIR") < text.index("ADAPTERHUB_BLOBS") < text.index("verify"), text
    assert "--blobs" not in text and not (tmp_path / "out").exists()
    proc = run_cli("--registry", registry_url, "--blobs", str(tmp_path / "other-blobs"), "pull", f"{NAME}@1.0.0",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.index("--blobs DIR") < proc.stderr.index("ADAPTERHUB_BLOBS") < proc.stderr.index("verify")
    assert "blobs=DIR" not in proc.stderr
    weights = next(f for f in registry.show(f"{NAME}@1.0.0").manifest.files if f.path == "adapter_model.safetensors")
    blob = registry.blobs.path(weights.sha256)
    blob.chmod(0o644)
    blob.unlink()  # one blob of several: damage, as before
    with pytest.raises(ah.NotFoundError, match="is missing from") as one:
        registry.pull(f"{NAME}@1.0.0", tmp_path / "out")
    assert "none of the" not in str(one.value)


def test_errors_name_python_keywords_and_the_cli_its_options(registry, registry_url, base_dir, lora_dir, tmp_path):
    """From Python a message or hint names the keyword argument (base=PATH, overwrite=True);
    the CLI prints the same error with its option (--base PATH, --force), through
    errors.cli_wording."""
    from adapterhub_sdk.errors import cli_wording

    from conftest import run_cli

    with pytest.raises(ah.NotFoundError) as err:
        registry.resolve(fingerprint="ab" * 6)  # an unknown prefix (a full one may be a base not seen yet)
    assert "base=PATH" in err.value.hint and "--base" not in err.value.hint
    proc = run_cli("--registry", registry_url, "--blobs", str(tmp_path / "blobs"), "resolve", "--fingerprint", "ab" * 6)
    assert proc.returncode == 1 and "resolve with --base PATH once" in proc.stderr, proc.stderr
    assert "base=PATH" not in proc.stderr
    if registry_url.startswith("postgresql"):  # a team registry opened without its blob store
        with pytest.raises(ah.RegistryError) as no_blobs:
            ah.Registry.open(registry_url)
        assert "pass blobs=DIR or set ADAPTERHUB_BLOBS" in no_blobs.value.hint
        proc = run_cli("--registry", registry_url, "list")
        assert "pass --blobs DIR or set ADAPTERHUB_BLOBS" in proc.stderr, proc.stderr
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"pass overwrite=True to replace it"):
        registry.pull(f"{NAME}@1.0.0", taken)
    proc = run_cli("--registry", registry_url, "--blobs", str(tmp_path / "blobs"), "pull", f"{NAME}@1.0.0",
                   "--out", str(taken))
    assert proc.returncode == 1 and "pass --force to replace it" in proc.stderr, proc.stderr
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert cli_wording("pass overwrite=True; or name='acme/x', blobs=DIR, allow_nonfinite=True") == (
        "pass --force; or --name acme/x, --blobs DIR, --allow-nonfinite")
    assert cli_wording("x.base=PATH rebase=PATH base=path") == "x.base=PATH rebase=PATH base=path"


def test_an_unpinned_publish_warns(registry, registry_url, base_dir, lora_dir, lora_dir_b, tmp_path):
    """No base: a UserWarning naming base=PATH from Python; one 'warning:' line naming
    --base PATH on the CLI's stderr (the publish itself succeeds). A pinned publish is quiet."""
    import warnings

    from conftest import run_cli

    with pytest.warns(ah.errors.UnpinnedPublishWarning, match=r"acme/sentiment@1\.0\.0 is published unpinned.*base=PATH"):
        assert registry.publish(lora_dir, name=NAME, version="1.0.0").created
    assert issubclass(ah.registry.UnpinnedPublishWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.errors.UnpinnedPublishWarning)
        registry.publish(lora_dir, name=NAME, version="1.1.0", base=base_dir)
    proc = run_cli("--registry", registry_url, "--blobs", str(tmp_path / "blobs"), "publish", str(lora_dir_b),
                   "--name", NAME, "--version", "2.0.0")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {NAME}@2.0.0 is published unpinned"), proc.stderr
    assert "--base PATH" in warned[0] and "base=PATH" not in warned[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_metrics_are_refused(registry, lora_dir, bad):
    with pytest.raises(ah.AdapterHubError, match="metric 'acc' is .*finite"):
        registry.publish(lora_dir, name=NAME, version="1.0.0", metrics={"acc": bad})
    assert registry.list() == []
    with pytest.raises(ah.AdapterHubError, match="metric 'scores'"):
        registry.publish(lora_dir, name=NAME, version="1.0.0", metrics={"scores": [0.5, bad]})
    ok = registry.publish(lora_dir, name=NAME, version="1.0.0", metrics={"acc": 0.9, "split": "test",
                                                                        "per_class": {"a": 1}})
    assert registry.show(f"{NAME}@1.0.0").manifest.metrics == ok.manifest.metrics


def test_an_alias_to_a_yanked_version_is_refused(registry, base_dir, lora_dir):
    _publish_series(registry, lora_dir, base_dir, ["1.0.0", "1.1.0"])
    registry.alias(f"{NAME}@1.1.0", "prod")
    assert registry.show(f"{NAME}@prod").version == "1.1.0"
    registry.yank(f"{NAME}@1.1.0")
    with pytest.raises(ah.NotFoundError, match="prod points to 1.1.0, which is yanked"):
        registry.show(f"{NAME}@prod")
    with pytest.raises(ah.NotFoundError, match="yanked"):
        registry.resolve(base_dir, name=f"{NAME}@prod")
    assert registry.show(f"{NAME}@1.1.0").yanked  # still reachable by exact pin
    registry.alias(f"{NAME}@1.0.0", "prod")
    assert registry.show(f"{NAME}@prod").version == "1.0.0"


def test_show_without_a_spec_finds_a_pre_release_only_adapter(registry, lora_dir):
    registry.publish(lora_dir, name="acme/pre", version="0.1.0-rc.1")
    registry.publish(lora_dir, name="acme/pre", version="0.1.0-rc.2")
    assert registry.show("acme/pre").version == "0.1.0-rc.2"
    with pytest.raises(ah.NotFoundError, match="no version"):
        registry.show("acme/pre@latest")  # an explicit 'latest' still means a release
    with pytest.raises(ah.NotFoundError, match="no version"):
        registry.show("acme/pre@^0.1")


def test_resolve_breaks_ties_by_name(registry, base_dir, lora_dir):
    for name in ("zeta/x", "acme/b", "mid/a", "acme/a"):
        registry.publish(lora_dir, name=name, version="1.0.0", base=base_dir)
    assert [m.name for m in registry.resolve(base_dir)] == ["acme/a", "acme/b", "mid/a", "zeta/x"]


# --------------------------------------------------------------------------- resolve


def test_resolve_ranks_exact_before_structural_newest_first(registry, base_dir, base_other_weights,
                                                            lora_dir, lora_dir_b):
    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    registry.publish(lora_dir, name="acme/a", version="1.1.0", base=base_dir)
    registry.publish(lora_dir_b, name="acme/b", version="1.0.0", base=base_other_weights)
    registry.publish(lora_dir_b, name="acme/b", version="3.0.0", base=base_other_weights)
    registry.publish(lora_dir_b, name="acme/c", version="2.0.0")  # no base pinned
    hits = registry.resolve(base_dir)
    assert versions_of(hits) == [
        ("acme/a", "1.1.0", "exact"), ("acme/a", "1.0.0", "exact"),
        ("acme/b", "3.0.0", "structural"), ("acme/c", "2.0.0", "structural"),
        ("acme/b", "1.0.0", "structural"),
    ]
    assert all(m.reasons == () for m in hits if m.verdict == "exact")
    assert all(m.reasons for m in hits if m.verdict == "structural")
    # the other base sees the same adapters the other way round
    other = registry.resolve(base_other_weights)
    assert [(m.name, m.verdict) for m in other][:2] == [("acme/b", "exact"), ("acme/b", "exact")]
    assert {m.name for m in other if m.verdict == "structural"} == {"acme/a", "acme/c"}
    assert len(registry.resolve(base_dir, limit=2)) == 2


def test_resolve_filters(registry, base_dir, lora_dir, lora_dir_b, ia3_dir):
    registry.publish(lora_dir, name="acme/sentiment", version="1.0.0", base=base_dir, tasks=["sentiment"])
    registry.publish(lora_dir_b, name="acme/ner", version="1.0.0", base=base_dir, tasks=["ner", "tagging"])
    registry.publish(ia3_dir, name="acme/ia3", version="0.1.0", base=base_dir, tasks=["sentiment"])
    assert {m.name for m in registry.resolve(base_dir)} == {"acme/sentiment", "acme/ner", "acme/ia3"}
    assert {m.name for m in registry.resolve(base_dir, task="sentiment")} == {"acme/sentiment", "acme/ia3"}
    assert [m.name for m in registry.resolve(base_dir, task="tagging")] == ["acme/ner"]
    assert registry.resolve(base_dir, task="nope") == []
    assert {m.name for m in registry.resolve(base_dir, method="lora")} == {"acme/sentiment", "acme/ner"}
    ia3 = registry.resolve(base_dir, method="ia3")
    assert [m.name for m in ia3] == ["acme/ia3"] and ia3[0].variant == "ia3"
    assert [m.name for m in registry.resolve(base_dir, name="ACME/NER")] == ["acme/ner"]
    assert registry.resolve(base_dir, name="acme/ner@^2") == []
    assert registry.resolve(base_dir, name="acme/sentiment", task="ner") == []
    with pytest.raises(ah.InvalidNameError):
        registry.resolve(base_dir, name="not a name")


def test_resolve_by_fingerprint_string_and_prefix(registry, base_dir, base_other_weights, lora_dir,
                                                  lora_dir_b):
    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    registry.publish(lora_dir_b, name="acme/b", version="1.0.0", base=base_other_weights)
    fp = ah.fingerprint(base_dir).digest
    want = [("acme/a", "1.0.0", "exact"), ("acme/b", "1.0.0", "structural")]
    assert versions_of(registry.resolve(fingerprint=fp)) == want
    assert versions_of(registry.resolve(fp)) == want
    assert versions_of(registry.resolve(fp[:10])) == want
    assert versions_of(registry.resolve(fingerprint=fp[:8].upper())) == want
    assert registry.get_base(fp[:12]).digest == fp


def test_resolve_against_other_weights_and_other_shape(registry, base_dir, base_other_weights,
                                                       base_other_shape, lora_dir):
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    structural = registry.resolve(base_other_weights)
    assert versions_of(structural) == [(NAME, "1.0.0", "structural")]
    assert registry.resolve(base_other_shape) == []
    incompatible = registry.resolve(base_other_shape, include_incompatible=True)
    assert versions_of(incompatible) == [(NAME, "1.0.0", "incompatible")]
    reasons = " ".join(incompatible[0].reasons)
    assert "q_proj" in reasons or "v_proj" in reasons, reasons
    assert "shape" in reasons
    # publishing against the wrong base is refused with the same reasons
    with pytest.raises(ah.IncompatibleAdapterError) as err:
        registry.publish(lora_dir, name=NAME, version="1.0.1", base=base_other_shape)
    assert any("proj" in r for r in err.value.reasons)
    assert [i.version for i in registry.list()] == ["1.0.0"]


def test_resolve_with_in_memory_module(registry, base_dir, lora_dir):
    import torch
    from transformers import AutoModelForCausalLM

    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    assert versions_of(registry.resolve(model)) == [(NAME, "1.0.0", "exact")]
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    assert versions_of(registry.resolve(model)) == [(NAME, "1.0.0", "structural")]


def test_unknown_fingerprint_gives_exact_matches_only(registry, base_dir, lora_dir):
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    unknown = "ab" * 32
    assert registry.resolve(fingerprint=unknown) == []
    listed = registry.resolve(fingerprint=unknown, include_incompatible=True)
    assert versions_of(listed) == [(NAME, "1.0.0", "incompatible")]
    assert "not known" in listed[0].reasons[0]
    # the known base still resolves exactly by its full fingerprint
    fp = ah.fingerprint(base_dir).digest
    assert versions_of(registry.resolve(fingerprint=fp)) == [(NAME, "1.0.0", "exact")]
    with pytest.raises(ah.NotFoundError):
        registry.resolve(fingerprint="abababab")  # unknown prefix
    with pytest.raises(ah.NotFoundError, match="not a fingerprint"):
        registry.resolve(fingerprint="not-hex")


# --------------------------------------------------------------------------- list / show


def test_resolve_labels_stay_right_when_a_version_is_replaced(registry, base_dir, lora_dir, lora_dir_b):
    """resolve remembers names and task lists per Registry; a version deleted and published
    again (SQLite may reuse its row id) with other tasks must show the new tasks, also
    through a second Registry on the same database."""
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["old-task"])
    registry.publish(lora_dir, name="acme/other", version="1.0.0", base=base_dir, tasks=["x", "a"])
    hits = {m.ref: m.tasks for m in registry.resolve(base=base_dir)}
    assert hits == {f"{NAME}@1.0.0": ("old-task",), "acme/other@1.0.0": ("a", "x")}
    registry.delete_version(f"{NAME}@1.0.0")
    registry.publish(lora_dir_b, name=NAME, version="1.0.0", base=base_dir, tasks=["new-task", "b"])
    second = ah.Registry.open(registry.url, blobs=registry.blobs.root)
    for reg in (registry, second):
        hits = {m.ref: m for m in reg.resolve(base=base_dir)}
        assert hits[f"{NAME}@1.0.0"].tasks == ("b", "new-task")
        assert hits["acme/other@1.0.0"].tasks == ("a", "x")
        assert [m.ref for m in reg.resolve(base=base_dir, task="old-task")] == []
        assert [m.ref for m in reg.resolve(base=base_dir, task="new-task")] == [f"{NAME}@1.0.0"]
        m = hits[f"{NAME}@1.0.0"]
        assert m.verdict == "exact" and m.to_dict()["tasks"] == ["b", "new-task"]
        assert m == reg.resolve(base=base_dir, name=f"{NAME}@1.0.0")[0]
    second.close()


def test_list_filters(registry, base_dir, base_other_weights, lora_dir, lora_dir_b, ia3_dir):
    registry.publish(lora_dir, name="acme/sentiment", version="1.0.0", base=base_dir, tasks=["sentiment"])
    registry.publish(lora_dir, name="acme/sentiment", version="1.1.0", base=base_dir, tasks=["sentiment"])
    registry.publish(lora_dir_b, name="beta/ner", version="0.1.0", base=base_other_weights, tasks=["ner"])
    registry.publish(ia3_dir, name="acme/ia3", version="1.0.0", tasks=["sentiment"])

    def refs(infos):
        return [f"{i.name}@{i.version}" for i in infos]

    assert refs(registry.list()) == ["acme/ia3@1.0.0", "acme/sentiment@1.1.0", "acme/sentiment@1.0.0",
                                     "beta/ner@0.1.0"]
    assert refs(registry.list(task="ner")) == ["beta/ner@0.1.0"]
    assert refs(registry.list(task="sentiment", method="lora")) == ["acme/sentiment@1.1.0",
                                                                    "acme/sentiment@1.0.0"]
    assert refs(registry.list(method="ia3")) == ["acme/ia3@1.0.0"]
    assert refs(registry.list(base=base_dir)) == ["acme/sentiment@1.1.0", "acme/sentiment@1.0.0"]
    assert refs(registry.list(base=ah.fingerprint(base_other_weights).digest)) == ["beta/ner@0.1.0"]
    assert refs(registry.list(name="Acme/Sentiment")) == ["acme/sentiment@1.1.0", "acme/sentiment@1.0.0"]
    registry.yank("acme/sentiment@1.1.0")
    assert refs(registry.list(name="acme/sentiment", include_yanked=False)) == ["acme/sentiment@1.0.0"]
    assert registry.list(task="nothing") == []


def test_show(registry, base_dir, lora_dir):
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir, tasks=["sentiment", "cls"],
                     license="apache-2.0", description="positive or negative", metrics={"acc": 0.9})
    info = registry.show(f"{NAME}@1.0.0")
    assert (info.name, info.version, info.method, info.variant) == (NAME, "1.0.0", "lora", "lora")
    assert info.tasks == ("cls", "sentiment")
    assert info.base_fingerprint == ah.fingerprint(base_dir).digest
    assert info.yanked is False
    m = info.manifest
    assert m is not None and m.digest == info.digest
    assert m.license == "apache-2.0" and m.description == "positive or negative"
    assert m.metrics == {"acc": 0.9}
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lora_dir.iterdir() if p.is_file()}
    assert {f.path: f.sha256 for f in m.files} == on_disk
    assert info.size == sum(f.size for f in m.files)
    assert info.to_dict(with_manifest=True)["manifest"]["name"] == NAME
    with pytest.raises(ah.NotFoundError):
        registry.show("acme/unknown")
    with pytest.raises(LookupError):
        registry.show(f"{NAME}@9.9.9")


# --------------------------------------------------------------------------- verify / gc


def test_verify_ok_on_fresh_registry(registry, base_dir, lora_dir, lora_dir_b):
    empty = registry.verify()
    assert empty.ok and empty.versions == 0 and empty.blobs == 0
    registry.publish(lora_dir, name="acme/a", version="1.0.0", base=base_dir)
    registry.publish(lora_dir_b, name="acme/b", version="1.0.0", base=base_dir)
    report = registry.verify()
    assert report.ok, report.problems
    assert report.versions == 2
    assert report.blobs == len(blob_files(registry))
    assert report.bytes == sum(p.stat().st_size for p in blob_files(registry))


def test_gc_removes_unreferenced_blobs_and_keeps_referenced(registry, lora_dir, lora_dir_b, tmp_path,
                                                            base_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry.publish(lora_dir, name="acme/a", version="1.0.0")
    registry.publish(lora_dir_b, name="acme/b", version="1.0.0")
    referenced = blob_files(registry)
    # an orphan blob (e.g. left by a publisher that died) and an abandoned temp file
    orphan_src = tmp_path / "orphan.bin"
    orphan_src.write_bytes(b"orphan bytes " * 100)
    orphan_sha = hashlib.sha256(orphan_src.read_bytes()).hexdigest()
    assert registry.blobs.put_file(orphan_src, orphan_sha) == orphan_src.stat().st_size
    tmp_file = registry.blobs.root / "tmp" / "deadbeef.incomplete"
    tmp_file.write_bytes(b"partial")

    kept = registry.gc()  # default grace: the orphan is too recent
    assert kept.blobs_removed == 0 and kept.kept_recent == 1
    assert registry.blobs.has(orphan_sha) and tmp_file.exists()
    dry = registry.gc(grace_seconds=0, dry_run=True)
    assert dry.blobs_removed == 1 and registry.blobs.has(orphan_sha)

    report = registry.gc(grace_seconds=0)
    assert report.blobs_removed == 1 and report.bytes_freed == orphan_src.stat().st_size
    assert report.temp_removed >= 1
    assert not registry.blobs.has(orphan_sha) and not tmp_file.exists()
    assert blob_files(registry) == referenced
    assert registry.verify().ok

    # a deleted version's blobs go, except those another version shares
    shared = file_digests(lora_dir) & file_digests(lora_dir_b)
    registry.delete_version("acme/b@1.0.0")
    registry.gc(grace_seconds=0)
    left = {p.parent.name + p.name for p in blob_files(registry)}
    assert left == file_digests(lora_dir)
    assert shared <= left
    out = registry.pull("acme/a@1.0.0", tmp_path / "a")
    ids = torch.tensor([[3, 4, 5]])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), out).eval()
    orig = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), lora_dir).eval()
    assert torch.equal(_logits(loaded, ids), _logits(orig, ids))


def test_pull_refuses_existing_non_empty_dir_and_keeps_it(registry, lora_dir, tmp_path):
    registry.publish(lora_dir, name=NAME, version="1.0.0")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        registry.pull(f"{NAME}@1.0.0", dest)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
    registry.pull(f"{NAME}@1.0.0", dest, overwrite=True)
    assert not (dest / "mine.txt").exists()
    assert (dest / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_gc_racing_a_publish_that_reuses_its_blobs_loses_nothing(registry, lora_dir, monkeypatch):
    """A publish that reuses blobs no version references (left by a deleted version) while a
    gc that read the references earlier removes them: the two interleavings that matter,
    forced in process on real files and a real database."""
    import os
    import time

    registry.publish(lora_dir, name=NAME, version="1.0.0")
    registry.delete_version(f"{NAME}@1.0.0")
    shas = sorted(registry.blobs.iter_digests())
    old = time.time() - 7200
    for sha in shas:
        os.utime(registry.blobs.path(sha), (old, old))

    # 1. gc moves the blobs aside after the publish found them, before its commit
    real_commit = registry._commit_version
    taken = {}

    def commit_after_gc_took_them(*a, **kw):
        for sha in shas:
            taken[sha] = registry.blobs.quarantine(sha)
        return real_commit(*a, **kw)

    monkeypatch.setattr(registry, "_commit_version", commit_after_gc_took_them)
    res = registry.publish(lora_dir, name=NAME, version="1.1.0")
    monkeypatch.undo()
    assert res.created and all(taken.values())
    for sha, token in taken.items():  # gc asks again: referenced now, so it puts back (or drops its copy)
        registry.blobs.release(token, sha, keep=True)
    assert registry.verify().ok

    # 2. a real gc run after that: nothing referenced is removed, the grace protects the rest
    report = registry.gc(grace_seconds=3600)
    assert report.blobs_removed == 0 and registry.verify().ok

    # 3. the blobs unreferenced and old again: gc's own re-check keeps what a commit references
    registry.delete_version(f"{NAME}@1.1.0")
    for sha in shas:
        os.utime(registry.blobs.path(sha), (old, old))
    real_release = registry.blobs.release

    def publish_meanwhile(token, sha, *, keep):
        if not getattr(publish_meanwhile, "done", False):
            publish_meanwhile.done = True
            registry.publish(lora_dir, name=NAME, version="1.2.0")  # finds the blob missing: writes it
        return real_release(token, sha, keep=keep)

    monkeypatch.setattr(registry.blobs, "release", publish_meanwhile)
    registry.gc(grace_seconds=0)
    monkeypatch.undo()
    assert registry.verify().ok
    assert registry.pull(f"{NAME}@1.2.0", registry.blobs.root.parent / "out").is_dir()

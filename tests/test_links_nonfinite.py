"""What is published is what was in the directory (issue 8).

Links and special files: in an adapter directory only regular files inside it are read. An
adapter file that is a symbolic link (to outside, or to another file inside), a FIFO, or a
subfolder that is a link is refused by name; such an entry that is not part of the adapter
is skipped with a warning naming it; the directory the user names may itself be a link.
After every publish the whole blob store is searched for the outside file's bytes.

NaN and Inf: weights holding them are refused at publish, naming file, tensor and count;
``allow_nonfinite`` / ``--allow-nonfinite`` publishes them (recorded in the provenance), a
pull writes them with a warning, and ``Deployment.attach`` refuses them.

Real PEFT adapters (conftest.save_lora), real safetensors files, real SQLite, real links
and FIFOs, the installed CLI in a subprocess. POSIX only (links, mkfifo).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub_sdk as ah
from adapterhub_sdk.adapter_files import (
    NonFiniteError,
    NonFiniteWarning,
    NotRegularFileError,
    SkippedEntryWarning,
    nonfinite_tensors,
)

from conftest import run_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links and FIFOs as on POSIX")

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
SECRET = b"outside-the-adapter-directory: root:x:0:0:secret-marker-7f3a\n"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every adapter directory, holding a file no publish may store."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "passwd").write_bytes(SECRET)
    return d


@pytest.fixture
def adapter(tmp_path, lora_dir) -> Path:
    """A fresh copy of a real PEFT adapter directory (with PEFT's README.md), ours to alter."""
    d = tmp_path / "adapter"
    shutil.copytree(lora_dir, d)
    assert {p.name for p in d.iterdir()} == {CONFIG, WEIGHTS, "README.md"}
    return d


def store_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def assert_outside_bytes_nowhere(blobs: Path, outside: Path) -> None:
    for path in outside.rglob("*"):
        if path.is_file():
            secret = path.read_bytes()
            assert not any(secret in b for b in store_bytes(blobs)), f"bytes of {path} were stored"


def _link_readme_out(d: Path, outside: Path) -> str:
    (d / "README.md").unlink()
    (d / "README.md").symlink_to(outside / "passwd")
    return "README.md"


def _link_weights_out(d: Path, outside: Path) -> str:
    shutil.move(d / WEIGHTS, outside / WEIGHTS)  # valid weights, but not in the directory
    (d / WEIGHTS).symlink_to(outside / WEIGHTS)
    return WEIGHTS


def _link_config_out(d: Path, outside: Path) -> str:
    shutil.move(d / CONFIG, outside / CONFIG)
    (d / CONFIG).symlink_to(outside / CONFIG)
    return CONFIG


def _link_inside(d: Path, outside: Path) -> str:
    (d / "README.md").unlink()
    (d / "README.md").symlink_to(CONFIG)  # a link to another file of the same directory
    return "README.md"


def _fifo_readme(d: Path, outside: Path) -> str:
    (d / "README.md").unlink()
    os.mkfifo(d / "README.md")
    return "README.md"


def _extra_link(d: Path, outside: Path) -> str:
    (d / "tokenizer_config.json").symlink_to(outside / "passwd")  # an extra file PEFT dirs may hold
    return "tokenizer_config.json"


CASES = {
    "readme-link-outside": (_link_readme_out, "a symbolic link to"),
    "weights-link-outside": (_link_weights_out, "a symbolic link to"),
    "config-link-outside": (_link_config_out, "a symbolic link to"),
    "link-to-a-file-inside": (_link_inside, "a symbolic link to 'adapter_config.json'"),
    "readme-fifo": (_fifo_readme, "a FIFO"),
    "extra-json-link": (_extra_link, "a symbolic link to"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_adapter_file_that_is_not_a_regular_file_is_refused_by_name(case, adapter, outside, registry,
                                                                       tmp_path):
    make, kind = CASES[case]
    name = make(adapter, outside)
    with pytest.raises(NotRegularFileError) as err:
        registry.publish(adapter, name="acme/linked", version="1.0.0")
    msg = str(err.value)
    assert f"{adapter / name} is {kind}" in msg and "\n" not in msg
    assert err.value.hint and ("FIFO" if "FIFO" in kind else "link") in err.value.hint  # its own kind's advice
    assert registry.list() == []
    assert_outside_bytes_nowhere(tmp_path / "blobs", outside)
    # the package alone (no registry) refuses it the same way
    with pytest.raises(NotRegularFileError, match=name):
        ah.pack(adapter)


def test_entries_outside_the_adapter_are_skipped_with_a_warning_and_the_top_dir_may_be_a_link(
        adapter, outside, registry, tmp_path):
    """A link to a directory, a link and a FIFO that are not adapter files are skipped, each
    named in a warning; the directory itself given through a link publishes; what is pulled
    back is exactly the directory's regular files, and no outside bytes are stored."""
    (adapter / "checkpoints").symlink_to(outside, target_is_directory=True)
    (adapter / "training_log").symlink_to(outside / "passwd")
    os.mkfifo(adapter / "progress")
    (adapter / "real_subdir").mkdir()  # a plain folder: not part of the adapter, silently left out
    (adapter / "real_subdir" / "notes.md").write_bytes(SECRET)
    named = tmp_path / "named-by-the-user"
    named.symlink_to(adapter, target_is_directory=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = registry.publish(named, name="acme/skips", version="1.0.0")
    skipped = sorted(str(w.message) for w in caught if issubclass(w.category, SkippedEntryWarning))
    assert len(skipped) == 3
    for entry, kind in (("checkpoints", "a symbolic link"), ("progress", "a FIFO"),
                        ("training_log", "a symbolic link")):
        assert any(f"skipped {named / entry}: it is {kind}" in m for m in skipped), skipped
    assert {f.path for f in res.manifest.files} == {CONFIG, WEIGHTS, "README.md"}

    out = registry.pull("acme/skips@1.0.0", tmp_path / "pulled")
    for f in (CONFIG, WEIGHTS, "README.md"):
        assert (out / f).read_bytes() == (adapter / f).read_bytes()
    assert_outside_bytes_nowhere(tmp_path / "blobs", outside)
    assert not any(SECRET in b for b in store_bytes(tmp_path / "blobs"))


def test_a_subfolder_that_is_a_link_is_refused(tmp_path, lora_dir, registry, outside):
    """``--subfolder`` naming a link, and a linked folder found as the only adapter
    subfolder, are refused by name: the adapter would be read from outside the directory."""
    shutil.copytree(lora_dir, outside / "elsewhere")
    top = tmp_path / "multi"
    top.mkdir()
    (top / "task").symlink_to(outside / "elsewhere", target_is_directory=True)
    with pytest.raises(NotRegularFileError, match=r"adapter subfolder .*task is a symbolic link"):
        registry.publish(top, name="acme/sub", version="1.0.0", subfolder="task")
    with pytest.raises(NotRegularFileError, match=r"adapter subfolder .*task is a symbolic link"):
        registry.publish(top, name="acme/sub", version="1.0.0")
    assert registry.list() == []
    # a real subfolder next to it is used as before
    shutil.copytree(lora_dir, top / "real")
    res = registry.publish(top, name="acme/sub", version="1.0.0", subfolder="real")
    assert res.created


def test_cli_publish_refuses_a_link_in_one_line_and_publishes_the_regular_files(adapter, outside, tmp_path):
    """The installed CLI: README.md -> outside file is refused (exit 1, one line naming it);
    the same directory with a regular README.md publishes, and the pulled files are the
    directory's own; the blob store holds no outside bytes."""
    _link_readme_out(adapter, outside)
    r = run_cli("publish", str(adapter), "--name", "acme/cli-link", "--version", "1.0.0")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{adapter / 'README.md'} is a symbolic link to" in lines[0]
    blobs = Path(os.environ["ADAPTERHUB_HOME"]) / "blobs"
    if blobs.exists():
        assert_outside_bytes_nowhere(blobs, outside)

    (adapter / "README.md").unlink()
    (adapter / "README.md").write_text("# a regular card\n")
    (adapter / "checkpoints").symlink_to(outside, target_is_directory=True)
    r = run_cli("publish", str(adapter), "--name", "acme/cli-link", "--version", "1.0.0", "--json")
    assert r.returncode == 0, r.stderr
    assert f"warning: skipped {adapter / 'checkpoints'}: it is a symbolic link" in r.stderr
    run_cli("pull", "acme/cli-link@1.0.0", "--out", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "README.md").read_text() == "# a regular card\n"
    assert_outside_bytes_nowhere(blobs, outside)


def test_blob_store_paths_are_opened_without_following_links(tmp_path, outside):
    """``BlobStore.put_file``/``stage`` with a path: a link is refused, nothing stored."""
    from adapterhub_sdk.blobs import BlobStore

    store = BlobStore(tmp_path / "store")
    link = tmp_path / "link"
    link.symlink_to(outside / "passwd")
    import hashlib

    with pytest.raises(NotRegularFileError, match="symbolic link"):
        store.put_file(link, hashlib.sha256(SECRET).hexdigest())
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        store.stage(link)
    assert_outside_bytes_nowhere(tmp_path / "store", outside)


# --------------------------------------------------------------------------- NaN / Inf


FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
                torch.float8_e5m2]


def test_nonfinite_scan_matches_torch_for_every_float_dtype(tmp_path):
    """The streaming bit-level scan counts exactly what ``torch.isfinite`` reports, per
    tensor and dtype (NaN, +Inf, -Inf, the largest finite values, subnormals); integer
    tensors are skipped; a clean file reports nothing."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(FLOAT_DTYPES):
        base = torch.randn(64, 33, generator=g, dtype=torch.float32)
        info = torch.finfo(dtype)
        base.view(-1)[:4] = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4])  # finite edges
        t = base.to(dtype)
        pos = torch.randperm(t.numel(), generator=g)[: 3 + i]
        specials = [float("nan"), float("inf"), float("-inf")] if dtype != torch.float8_e4m3fn else [float("nan")]
        flat = t.view(-1)
        for k, p in enumerate(pos):
            flat[p] = torch.tensor(specials[k % len(specials)], dtype=torch.float32).to(dtype)
        tensors[f"t.{i}.{str(dtype).removeprefix('torch.')}"] = t
        tensors[f"t.{i}.clean"] = torch.randn(5, generator=g).to(dtype)
    tensors["ints"] = torch.full((8,), -1, dtype=torch.int32)  # all bits set: an 'exponent' if read as float
    save_file(tensors, tmp_path / "w.safetensors")

    found = {n.tensor: n.count for n in nonfinite_tensors(tmp_path / "w.safetensors")}
    expected = {name: int((~torch.isfinite(t.float() if t.dtype.itemsize == 1 else t)).sum())
                for name, t in tensors.items() if t.is_floating_point()}
    assert found == {k: v for k, v in expected.items() if v}
    assert len(found) == len(FLOAT_DTYPES)

    save_file({k: v for k, v in tensors.items() if "clean" in k or k == "ints"}, tmp_path / "clean.safetensors")
    assert nonfinite_tensors(tmp_path / "clean.safetensors") == []


def poison(adapter: Path, *, dtype: torch.dtype | None = None) -> tuple[str, int]:
    """Put NaN and Inf into one LoRA tensor of a real PEFT adapter; (its name, how many)."""
    tensors = load_file(adapter / WEIGHTS)
    name = sorted(n for n in tensors if "lora_B" in n)[1]
    t = tensors[name].clone()
    t.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    t.view(-1)[7] = float("nan")
    tensors[name] = t
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, adapter / WEIGHTS, metadata={"format": "pt"})
    return name, 4


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_publish_refuses_nonfinite_weights_naming_the_tensor(adapter, registry, base_dir, tmp_path, dtype):
    name, count = poison(adapter, dtype=dtype)
    with pytest.raises(NonFiniteError) as err:
        registry.publish(adapter, name="acme/nan", version="1.0.0", base=base_dir)
    msg = str(err.value)
    assert f"{WEIGHTS}: tensor {name!r} holds {count} non-finite values (NaN or Inf)" in msg
    assert "\n" not in msg and "pass allow_nonfinite=True" in (err.value.hint or "")  # the CLI: --allow-nonfinite
    assert registry.list() == []
    blobs = tmp_path / "blobs"
    assert not blobs.exists() or not [p for p in (blobs / "sha256").rglob("*") if p.is_file()]


def test_allow_nonfinite_publishes_records_it_pull_warns_and_attach_refuses(adapter, registry, base_dir, tmp_path):
    clean = registry.publish(adapter, name="acme/ok", version="1.0.0", base=base_dir)
    assert "nonfinite" not in clean.manifest.provenance
    name, count = poison(adapter)
    res = registry.publish(adapter, name="acme/nan", version="1.0.0", base=base_dir, allow_nonfinite=True)
    assert res.created
    assert res.manifest.provenance["nonfinite"] == {"allowed": True, "tensors": 1, "values": count, "first": name}
    assert registry.show("acme/nan@1.0.0").manifest.provenance["nonfinite"]["values"] == count

    with pytest.warns(NonFiniteWarning, match=f"tensor {name!r} holds {count} non-finite"):
        out = registry.pull("acme/nan@1.0.0", tmp_path / "pulled")
    assert (out / WEIGHTS).read_bytes() == (adapter / WEIGHTS).read_bytes()  # as published, to debug it

    dep = ah.Deployment(base_dir, registry=registry)
    dep.attach("acme/ok@1.0.0")
    with pytest.raises(NonFiniteError, match=rf"acme/nan@1.0.0: {WEIGHTS}: tensor {name!r} holds {count}"):
        dep.attach("acme/nan@1.0.0")
    assert set(dep.adapters) == {"acme/ok"}


def test_cli_publish_nonfinite_refused_in_one_line_and_accepted_with_the_flag(adapter):
    name, count = poison(adapter)
    r = run_cli("publish", str(adapter), "--name", "acme/nan-cli", "--version", "1.0.0")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"tensor {name!r} holds {count} non-finite values" in lines[0]
    assert "--allow-nonfinite" in lines[0]
    r = run_cli("publish", str(adapter), "--name", "acme/nan-cli", "--version", "1.0.0", "--allow-nonfinite",
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] is True


# --------------------------------------------------------------------------- Hub imports


def test_hub_import_reads_the_cache_blobs_and_refuses_a_cache_link_that_leaves_the_cache(
        hub_env, lora_dir, outside, tmp_path):
    """Against olah (tests/hubserver.py): a manifest-less repo PEFT pushed is imported from
    huggingface_hub's cache, whose snapshot entries are links into its own ``blobs/``; the
    stored files are the repo's bytes. A snapshot entry whose link leads out of the cache
    (a tampered cache) is refused by name, and its target's bytes are not stored."""
    from hubserver import make_hub_repo, unique_repo_id
    from huggingface_hub import snapshot_download

    files = {p.name: p.read_bytes() for p in lora_dir.iterdir()}
    good = make_hub_repo(hub_env.mirrors, unique_repo_id("peft"), files)
    reg = ah.Registry.open()
    reg.pull(f"hf://{good.repo_id}", dest=tmp_path / "good")
    assert {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir() if p.name in files} == files

    bad = make_hub_repo(hub_env.mirrors, unique_repo_id("peft"), files)
    snap = Path(snapshot_download(bad.repo_id, revision=bad.head))
    assert (snap / "README.md").is_symlink()  # huggingface_hub's own layout
    (snap / "README.md").unlink()
    (snap / "README.md").symlink_to(outside / "passwd")
    with pytest.raises(NotRegularFileError, match=r"README\.md is a symbolic link to"):
        reg.pull(f"hf://{bad.repo_id}")
    assert [i.name for i in reg.list()] == [good.repo_id]
    assert_outside_bytes_nowhere(Path(os.environ["ADAPTERHUB_HOME"]) / "blobs", outside)
    reg.close()

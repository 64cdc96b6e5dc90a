"""A base's fingerprint covers exactly the tensors ``from_pretrained`` loads from it, and a
Deployment states the fingerprint of what it loaded (issue 8).

Every layout is a real checkpoint written by transformers/safetensors. The file choice
mirrors transformers' own precedence (transformers_weights in config.json, then
model.safetensors, then model.safetensors.index.json); other files are ignored, a
directory transformers cannot load is refused, and a directory with two different
weight sets (model.safetensors and a shard index) is refused as ambiguous."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.errors import WeightsNotFoundError
from adapterhub_sdk.layouts import AmbiguousCheckpointError

from conftest import _llama, run_cli, save_lora


class _Payload:
    """Unpickling this creates ``marker``: proof that something ran pickle.load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _set_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _saved(root: Path, name: str, *, seed: int = 0, dtype=None, tie: bool = False, **save_kw) -> Path:
    model = _llama(seed=seed, tie=tie)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(root / name, **save_kw)
    return root / name


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """name -> a base directory in that layout (seed 0 is 'the' base, seed 1 other weights)."""
    root = tmp_path_factory.mktemp("layouts")
    single = _saved(root, "single")
    other = _saved(root, "other", seed=1)
    out = {"single": single, "sharded": _saved(root, "sharded", max_shard_size="20KB"),
           "tied": _saved(root, "tied", tie=True)}
    # stored at half precision while config.json says otherwise (a stale dtype field): the
    # checkpoint's dtype is what loads, whatever config.json claims
    out["bf16"] = _saved(root, "bf16", dtype=torch.bfloat16)
    _set_config(out["bf16"], dtype="float32")
    out["fp16"] = _saved(root, "fp16", dtype=torch.float16)
    _set_config(out["fp16"], dtype="bfloat16")
    # a variant of other weights beside the main file (transformers loads it only with variant=)
    variant = shutil.copytree(single, root / "variant")
    _saved(root, "other_fp16", seed=1, dtype=torch.float16, variant="fp16")
    shutil.copy(root / "other_fp16" / "model.fp16.safetensors", variant / "model.fp16.safetensors")
    out["variant"] = variant
    # a stray consolidated.safetensors (other weights) beside model.safetensors
    stray = shutil.copytree(single, root / "stray")
    shutil.copy(other / "model.safetensors", stray / "consolidated.safetensors")
    out["stray"] = stray
    # a pickle beside the safetensors: transformers prefers safetensors, nobody unpickles it
    with_bin = shutil.copytree(single, root / "with_bin")
    with open(with_bin / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": _Payload(root / "PWNED")}, f, protocol=4)
    out["with_bin"] = with_bin
    # config.json's transformers_weights names the file to load (other weights than model.safetensors)
    explicit = shutil.copytree(single, root / "explicit")
    shutil.copy(other / "model.safetensors", explicit / "chosen.safetensors")
    _set_config(explicit, transformers_weights="chosen.safetensors")
    out["explicit"] = explicit
    out["hf_cache"] = _hf_cache_snapshot(root / "hub", single)
    return out


def _hf_cache_snapshot(hub: Path, src: Path) -> Path:
    """The huggingface_hub cache layout: snapshot files are links into blobs/ named by sha256."""
    repo = hub / "models--acme--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        os.symlink(Path("..", "..", "blobs", digest), snap / f.name)
    return snap


def _file_fp(path: Path) -> str:
    return ah.fingerprint(path, use_cache=False).digest


# --------------------------------------------------------------------------- which files count


def test_stray_and_variant_files_beside_model_safetensors_are_ignored(layouts):
    """transformers loads model.safetensors and ignores consolidated.safetensors and
    model.fp16.safetensors: the fingerprint is the main file's (today's glob took both and
    failed with 'stored twice')."""
    single = _file_fp(layouts["single"] / "model.safetensors")
    for case in ("stray", "variant", "with_bin"):
        assert ah.fingerprint(layouts[case], use_cache=False).digest == single, case
    assert not (layouts["single"].parent / "PWNED").exists()


def test_transformers_weights_in_config_names_the_file(layouts):
    d = layouts["explicit"]
    assert ah.fingerprint(d, use_cache=False).digest == _file_fp(d / "chosen.safetensors")
    assert ah.fingerprint(d, use_cache=False).digest != _file_fp(d / "model.safetensors")


def test_single_file_beside_shards_of_other_weights_is_ambiguous(layouts, tmp_path):
    """model.safetensors and an index with shards of other weights: transformers loads the
    single file, vLLM and others the shards. Refused, by the fingerprint, the Deployment
    (before loading) and the CLI; with the same tensors in both it is accepted."""
    d = shutil.copytree(layouts["sharded"], tmp_path / "both")
    other = _saved(tmp_path, "other", seed=1)
    shutil.copy(other / "model.safetensors", d / "model.safetensors")
    with pytest.raises(AmbiguousCheckpointError, match="two different weight sets") as info:
        ah.fingerprint(d, use_cache=False)
    assert "model.safetensors.index.json" in info.value.hint
    with pytest.raises(AmbiguousCheckpointError):
        ah.Deployment(d)
    proc = run_cli("fingerprint", str(d))
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "two different weight sets" in lines[0], proc.stderr
    # the same weights both ways: one identity, accepted
    shutil.copy(layouts["single"] / "model.safetensors", d / "model.safetensors")
    assert ah.fingerprint(d, use_cache=False).digest == _file_fp(layouts["single"] / "model.safetensors")


def test_directory_with_only_stray_safetensors_is_refused(layouts, tmp_path):
    """No model.safetensors nor index: from_pretrained cannot load the directory, so it has
    no fingerprint (today: whatever *.safetensors were there). The file itself still works."""
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(layouts["single"] / "config.json", only / "config.json")
    shutil.copy(layouts["single"] / "model.safetensors", only / "consolidated.safetensors")
    variant = tmp_path / "variant_only"
    shutil.copytree(layouts["variant"], variant)
    (variant / "model.safetensors").unlink()
    for d, hint in ((only, "rename it to model.safetensors"), (variant, "variant")):
        with pytest.raises(WeightsNotFoundError, match="from_pretrained cannot load") as info:
            ah.fingerprint(d, use_cache=False)
        assert hint in info.value.hint
        with pytest.raises(WeightsNotFoundError):
            ah.Deployment(d)
        proc = run_cli("fingerprint", str(d), "--json")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert _file_fp(only / "consolidated.safetensors") == _file_fp(layouts["single"] / "model.safetensors")


# --------------------------------------------------------------------------- Deployment


MATRIX = ["single", "sharded", "tied", "bf16", "fp16", "variant", "stray", "with_bin", "explicit", "hf_cache"]


@pytest.mark.parametrize("case", MATRIX)
def test_deployment_states_the_fingerprint_of_what_it_loaded(layouts, case):
    """No cast, nothing attached: the fingerprint a Deployment checks adapters against is
    the one of the model in its memory, and the one of the directory."""
    d = layouts[case]
    dep = ah.Deployment(d)
    described = dep.describe()["base"]
    in_memory = ah.fingerprint(dep.model).digest
    assert described["fingerprint"] == in_memory == ah.fingerprint(d).digest, case
    assert described["loaded"] == {"fingerprint": in_memory, "dtype": str(next(dep.model.parameters()).dtype)[6:],
                                   "requested_dtype": None, "cast": False}
    assert described["checkpoint"]["fingerprint"] == in_memory
    assert described["fingerprint_of"].startswith("the checkpoint, as loaded")
    assert set(described) >= {"fingerprint", "path", "n_params"}  # the keys it always had


def test_half_precision_checkpoint_loads_at_its_stored_dtype(layouts):
    """config.json says float32 (or bfloat16), the file stores bfloat16 (float16): the
    stored dtype is what loads; asking for another dtype casts and describe says so."""
    for case, stored in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        dep = ah.Deployment(layouts[case])
        assert {p.dtype for p in dep.model.parameters()} == {stored}, case
    cast = ah.Deployment(layouts["bf16"], dtype=torch.float32)
    base = cast.describe()["base"]
    assert {p.dtype for p in cast.model.parameters()} == {torch.float32}
    checkpoint_fp = ah.fingerprint(layouts["bf16"]).digest
    assert base["fingerprint"] == base["checkpoint"]["fingerprint"] == checkpoint_fp
    assert base["loaded"]["cast"] is True and base["loaded"]["dtype"] == "float32"
    assert base["loaded"]["fingerprint"] == ah.fingerprint(cast.model).digest != checkpoint_fp
    assert "cast to float32" in base["fingerprint_of"]
    assert base["checkpoint"]["dtypes"] == {"BF16": ah.fingerprint(layouts["bf16"]).n_tensors}


def test_adapter_pinned_to_other_weights_is_not_exact(layouts, tmp_path, registry):
    """The original defect: an adapter pinned to the shards' fingerprint attached as
    'exact' on a directory whose model.safetensors (what loads) holds other weights. With a
    stray consolidated.safetensors the adapter of model.safetensors is exact."""
    lora = save_lora(layouts["single"], tmp_path / "lora", seed=3)
    registry.publish(lora, name="acme/tiny", version="1.0.0", base=layouts["single"])
    dep = ah.Deployment(layouts["stray"], registry=registry)
    assert dep.attach("acme/tiny@1.0.0").verdict == "exact"
    other = ah.Deployment(layouts["explicit"], registry=registry)  # loads chosen.safetensors: other weights
    with pytest.warns(ah.StructuralMatchWarning):
        assert other.attach("acme/tiny@1.0.0").verdict == "structural"


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_tensors_transformers_changes_while_loading_make_the_loaded_weights_the_identity(
        layouts, tmp_path, registry, change):
    """A parameter the architecture has but the file lacks (from_pretrained initialises it
    randomly), or a tensor the architecture does not have (dropped): the model in memory
    is not the checkpoint. The deployment says so and checks adapters against what it
    loaded, so an adapter pinned to the files is not 'exact' (today it was)."""
    from safetensors.torch import load_file, save_file

    from adapterhub_sdk.base_loading import LoadedBaseWarning

    d = shutil.copytree(layouts["single"], tmp_path / change)
    sd = load_file(d / "model.safetensors")
    if change == "missing":
        del sd["model.layers.1.mlp.up_proj.weight"]
    else:
        sd["model.layers.0.extra.weight"] = torch.ones(4, 4)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    lora = save_lora(layouts["single"], tmp_path / "lora", seed=4)
    if change == "missing":  # no pin to such files: what loads there is not them (and not twice the same)
        with pytest.raises(ah.WeightsNotFoundError, match="lacks 1 tensor"):
            registry.publish(lora, name="acme/pinned", version="1.0.0", base=d)
        registry.publish(lora, name="acme/pinned", version="1.0.0", base=layouts["single"])
    else:
        registry.publish(lora, name="acme/pinned", version="1.0.0", base=d)  # pinned to the files
    with pytest.warns(LoadedBaseWarning, match="differs from its checkpoint"):
        dep = ah.Deployment(d, registry=registry)
    base = dep.describe()["base"]
    assert base["fingerprint"] == ah.fingerprint(dep.model).digest == base["loaded"]["fingerprint"]
    assert base["checkpoint"]["fingerprint"] == ah.fingerprint(d, as_stored=True).digest != base["fingerprint"]
    assert base["fingerprint_of"].startswith("the model as loaded")
    with pytest.warns(ah.StructuralMatchWarning):
        assert dep.attach("acme/pinned@1.0.0").verdict == "structural"

"""Base-model fingerprints on real transformers checkpoints: what changes the digest, what
must not, the cache, and hostile or broken inputs (nothing is ever unpickled)."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterhub_sdk import BaseFingerprint, fingerprint
from adapterhub_sdk.errors import (
    AdapterHubError,
    CorruptFileError,
    UnsafeFormatError,
    WeightsNotFoundError,
)

from conftest import ADAPTERHUB, _llama, run_cli, save_base

# the package re-exports the function under the module's name, so fetch the module itself
fpmod = importlib.import_module("adapterhub_sdk.fingerprint")

# --------------------------------------------------------------------------- helpers


class _Payload:
    """Unpickling this creates ``marker``: proof that something ran pickle.load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_bomb(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f, protocol=4)
    return path


def write_raw_safetensors(path: Path, header, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def fp_dict(fp: BaseFingerprint) -> dict:
    d = fp.to_dict()
    d.pop("source")
    return d


@pytest.fixture(scope="module")
def base_fp(base_dir) -> BaseFingerprint:
    return fingerprint(base_dir, use_cache=False)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory) -> Path:
    return save_base(tmp_path_factory.mktemp("tied") / "base", seed=0, tie=True)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "base"
    _llama(seed=0).save_pretrained(out, max_shard_size="20KB")
    return out


def test_payload_would_run_if_unpickled(tmp_path):
    """The payload the refusal tests use is live: loading it does create the marker."""
    marker = tmp_path / "ran"
    bomb = write_pickle_bomb(tmp_path / "x.pkl", marker)
    with open(bomb, "rb") as f:
        pickle.load(f)["state_dict"].close()
    assert marker.exists()


# --------------------------------------------------------------------------- identity


def test_directory_module_and_state_dict_agree(base_dir, base_fp):
    model = _llama(seed=0)  # the same weights that base_dir holds
    from_module = fingerprint(model)
    from_state_dict = fingerprint(model.state_dict())
    from_file_tensors = fingerprint(load_file(base_dir / "model.safetensors"))
    assert base_fp.digest == from_module.digest == from_state_dict.digest == from_file_tensors.digest
    assert base_fp.arch_signature == from_module.arch_signature == from_state_dict.arch_signature
    assert base_fp.n_tensors == from_module.n_tensors
    assert base_fp.n_params == sum(p.numel() for p in model.state_dict().values())
    assert base_fp.dtypes == {"F32": base_fp.n_tensors}
    assert base_fp.total_bytes == (base_dir / "model.safetensors").stat().st_size - \
        8 - struct.unpack("<Q", (base_dir / "model.safetensors").read_bytes()[:8])[0]
    assert len(base_fp.digest) == 64 and base_fp.short == base_fp.digest[:12]


def test_model_loaded_from_disk_matches(base_dir, base_fp):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    assert fingerprint(model).digest == base_fp.digest


def test_single_safetensors_file_matches_directory(base_dir, base_fp):
    fp = fingerprint(base_dir / "model.safetensors", use_cache=False)
    assert fp.digest == base_fp.digest and fp.arch_signature == base_fp.arch_signature


def test_workers_and_chunking_do_not_change_the_digest(base_dir, monkeypatch):
    # small chunks: every tensor is split and hashed on several threads, results in order
    import adapterhub_sdk.hashing as engine  # the hashing engine reads CHUNK from its own module

    monkeypatch.setattr(engine, "CHUNK", 1024)
    one = fingerprint(base_dir, workers=1, use_cache=False)
    many = fingerprint(base_dir, workers=4, use_cache=False)
    mem = fingerprint(_llama(seed=0), workers=3)
    assert one.digest == many.digest == mem.digest
    for read in (256, 1000, 4096):  # a chunk read in several sub-reads, the last one short or not
        monkeypatch.setattr(engine, "READ", read)
        assert fingerprint(base_dir, workers=3, use_cache=False).digest == one.digest, read


def test_shards_hashed_a_few_open_files_at_a_time(sharded_dir, base_fp, monkeypatch):
    # a checkpoint of thousands of shards stays under the open-file limit: same digest
    monkeypatch.setattr(fpmod, "OPEN_FILES", 1)
    assert fingerprint(sharded_dir, workers=2, use_cache=False).digest == base_fp.digest


def test_a_file_cut_short_while_it_is_hashed_is_refused(base_dir, tmp_path, monkeypatch):
    # the header promised more bytes than the file holds by the time they are read: an
    # error naming the file, never the digest of fewer bytes
    d = shutil.copytree(base_dir, tmp_path / "cut")
    f = d / "model.safetensors"
    real = fpmod.read_header

    def then_cut(path, **kw):
        header = real(path, **kw)
        if Path(path) == f:
            os.truncate(f, f.stat().st_size - 100)
        return header

    monkeypatch.setattr(fpmod, "read_header", then_cut)
    with pytest.raises(CorruptFileError, match="model.safetensors (ended at byte|is shorter)"):
        fingerprint(d, use_cache=False)


def test_tied_weights(tied_dir):
    model = _llama(seed=0, tie=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    on_disk = fingerprint(tied_dir, use_cache=False)
    in_memory = fingerprint(model)
    assert in_memory.digest == on_disk.digest
    assert in_memory.arch_signature == on_disk.arch_signature
    # the tied head is counted once, under the name transformers writes
    assert "lm_head.weight" not in on_disk.shapes
    assert on_disk.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert in_memory.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert on_disk.shape_of("lm_head.weight") == (64, 32)
    assert in_memory.shape_of("lm_head.weight") == (64, 32)
    assert on_disk.shape_of("model.embed_tokens.weight") == (64, 32)
    assert on_disk.shape_of("no.such.weight") is None
    assert on_disk.to_dict()["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}


def test_tied_weights_stored_twice_or_listed_in_any_order(tied_dir, tmp_path):
    """A tied model saved with both tensors (plain safetensors.save_file of its state dict),
    and its state dict listed sorted or reversed, give the same fingerprint as the model:
    the tie counts once, under the input embedding's name."""
    from safetensors.torch import save_file

    model = _llama(seed=0, tie=True)
    want = fingerprint(model)
    both = tmp_path / "both"
    both.mkdir()
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(both / "model.safetensors"))
    (both / "config.json").write_bytes((tied_dir / "config.json").read_bytes())
    stored = fingerprint(both, use_cache=False)
    assert stored.digest == want.digest and stored.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert fingerprint(both).digest == want.digest  # and again through the cache
    items = list(model.state_dict().items())
    for order in (sorted(items), list(reversed(items))):
        fp = fingerprint(dict(order))
        assert fp.digest == want.digest and fp.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    # stored twice but NOT equal: two tensors, as stored
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    differ = tmp_path / "differ"
    differ.mkdir()
    save_file(sd, str(differ / "model.safetensors"))
    (differ / "config.json").write_bytes((tied_dir / "config.json").read_bytes())
    fp = fingerprint(differ, use_cache=False)
    assert fp.digest != want.digest and "lm_head.weight" in fp.shapes and fp.tied == {}


def test_untied_base_has_its_own_lm_head(base_fp):
    assert base_fp.tied == {}
    assert base_fp.shape_of("lm_head.weight") == (64, 32)


def test_resharding_keeps_the_fingerprint(sharded_dir, base_fp):
    shards = sorted(sharded_dir.glob("*.safetensors"))
    assert len(shards) > 1 and (sharded_dir / "model.safetensors.index.json").is_file()
    fp = fingerprint(sharded_dir, use_cache=False)
    assert fp.digest == base_fp.digest
    assert fp.arch_signature == base_fp.arch_signature
    assert fp.shapes == base_fp.shapes


def test_renamed_shards_keep_the_fingerprint(sharded_dir, base_fp, tmp_path):
    d = shutil.copytree(sharded_dir, tmp_path / "renamed")
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    renames = {old: f"part-{i}-weights.safetensors"
               for i, old in enumerate(sorted(set(index["weight_map"].values())))}
    for old, new in renames.items():
        (d / old).rename(d / new)
    index["weight_map"] = {k: renames[v] for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    assert fingerprint(d, use_cache=False).digest == base_fp.digest
    # without the index from_pretrained cannot load the directory: refused (tests/test_layouts.py)
    index_path.unlink()
    with pytest.raises(WeightsNotFoundError, match="from_pretrained cannot load"):
        fingerprint(d, use_cache=False)


def test_safetensors_metadata_does_not_count(base_dir, base_fp, tmp_path):
    d = shutil.copytree(base_dir, tmp_path / "meta")
    f = d / "model.safetensors"
    before = f.read_bytes()
    save_file(load_file(f), f, metadata={"format": "pt", "producer": "someone else", "note": "x" * 100})
    assert f.read_bytes() != before
    fp = fingerprint(d, use_cache=False)
    assert fp.digest == base_fp.digest and fp.arch_signature == base_fp.arch_signature


def test_other_weights_change_digest_not_arch(base_other_weights, base_fp):
    fp = fingerprint(base_other_weights, use_cache=False)
    assert fp.digest != base_fp.digest
    assert fp.arch_signature == base_fp.arch_signature
    assert fp.shapes == base_fp.shapes


def test_other_shape_changes_both(base_other_shape, base_fp):
    fp = fingerprint(base_other_shape, use_cache=False)
    assert fp.digest != base_fp.digest
    assert fp.arch_signature != base_fp.arch_signature
    assert fp.shape_of("model.layers.0.self_attn.q_proj.weight") == (48, 48)


def test_one_changed_value_changes_the_digest(base_fp):
    sd = _llama(seed=0).state_dict()
    sd = {k: v.clone() for k, v in sd.items()}
    assert fingerprint(sd).digest == base_fp.digest
    sd["model.norm.weight"][3] += 1e-3
    assert fingerprint(sd).digest != base_fp.digest


def test_renamed_tensor_changes_the_digest(base_fp):
    sd = dict(_llama(seed=0).state_dict())
    sd["model.norm.weights"] = sd.pop("model.norm.weight")
    fp = fingerprint(sd)
    assert fp.digest != base_fp.digest and fp.arch_signature != base_fp.arch_signature


def test_dtype_changes_the_digest(tmp_path, base_fp):
    model = _llama(seed=0).to(torch.float16)
    model.save_pretrained(tmp_path / "fp16")
    on_disk = fingerprint(tmp_path / "fp16", use_cache=False)
    assert on_disk.dtypes == {"F16": base_fp.n_tensors}
    assert on_disk.digest != base_fp.digest
    assert on_disk.arch_signature == base_fp.arch_signature  # names and shapes only
    assert fingerprint(model).digest == on_disk.digest


def test_meta_tensors_are_refused():
    with pytest.raises(WeightsNotFoundError, match="meta"):
        fingerprint({"w": torch.empty(4, device="meta")})


def test_unsupported_objects_are_a_type_error():
    with pytest.raises(TypeError):
        fingerprint(42)


# --------------------------------------------------------------------------- cache


def test_cache_serves_a_second_call_and_invalidates_on_mtime(base_dir, tmp_path, monkeypatch):
    d = shutil.copytree(base_dir, tmp_path / "cached")
    first = fingerprint(d)  # use_cache=True is the default

    engine = "_hash_ranges" if hasattr(os, "preadv") else "_hash_buffers"  # what hashes files here
    real = getattr(fpmod, engine)
    calls = []

    def refuse(*a, **kw):
        raise AssertionError("re-hashed although the files did not change")

    monkeypatch.setattr(fpmod, engine, refuse)
    second = fingerprint(d)
    assert fp_dict(second) == fp_dict(first)
    assert second.shapes == first.shapes
    with pytest.raises(AssertionError, match="re-hashed"):  # the patch is live: no cache, no result
        fingerprint(d, use_cache=False)

    # touching the file (same bytes, new mtime) invalidates its cache entry
    f = d / "model.safetensors"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(fpmod, engine, counting)
    third = fingerprint(d)
    assert calls == [1]
    assert third.digest == first.digest
    fingerprint(d)
    assert calls == [1]  # the new entry is cached again


def test_cache_does_not_hide_new_content(base_dir, base_other_weights, tmp_path):
    d = shutil.copytree(base_dir, tmp_path / "swap")
    first = fingerprint(d)
    shutil.copyfile(base_other_weights / "model.safetensors", d / "model.safetensors")
    assert fingerprint(d).digest == fingerprint(base_other_weights, use_cache=False).digest != first.digest


# --------------------------------------------------------------------------- bad input


def test_directory_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError) as info:
        fingerprint(tmp_path / "empty")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.hint


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "nope")


def test_pickle_checkpoint_is_refused_and_never_loaded(tmp_path):
    d = tmp_path / "bin_model"
    d.mkdir()
    marker = tmp_path / "PWNED"
    write_pickle_bomb(d / "pytorch_model.bin", marker)
    (d / "config.json").write_text("{}")
    with pytest.raises(UnsafeFormatError) as info:
        fingerprint(d)
    assert "pickle" in str(info.value) and "safetensors" in info.value.hint
    with pytest.raises(UnsafeFormatError):
        fingerprint(d / "pytorch_model.bin")
    assert not marker.exists()


def test_pickle_named_safetensors_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    f = write_pickle_bomb(tmp_path / "model.safetensors", marker)
    with pytest.raises(UnsafeFormatError):
        fingerprint(f)
    d = tmp_path / "dir"
    d.mkdir()
    shutil.copy(f, d / "model.safetensors")
    with pytest.raises(UnsafeFormatError):
        fingerprint(d)
    assert not marker.exists()


def test_safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path, base_dir, base_fp):
    """A genuine safetensors header length of 128 (mod 256) begins with byte 0x80 like a pickle."""
    sd = load_file(base_dir / "model.safetensors")
    f = tmp_path / "model.safetensors"
    for pad in range(512):
        save_file(sd, f, metadata={"format": "pt", "pad": "x" * pad})
        if f.read_bytes()[:1] == b"\x80":
            break
    else:  # pragma: no cover
        pytest.fail("could not produce a header length of 128 mod 256")
    assert fingerprint(f, use_cache=False).digest == base_fp.digest
    assert fingerprint(tmp_path, use_cache=False).digest == base_fp.digest


def test_truncated_safetensors(base_dir, tmp_path):
    d = shutil.copytree(base_dir, tmp_path / "trunc")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        fingerprint(d)
    f.write_bytes(data[:4])
    with pytest.raises(CorruptFileError):
        fingerprint(d)
    f.write_bytes(data[:200])  # cut inside the JSON header
    with pytest.raises(CorruptFileError):
        fingerprint(d)
    f.write_bytes(b"")
    with pytest.raises(CorruptFileError):
        fingerprint(d)


def test_header_claiming_gigabytes_is_refused_without_allocating(tmp_path):
    f = write_raw_safetensors(tmp_path / "model.safetensors", b'{"a":', length=5_000_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError) as info:
            fingerprint(f, use_cache=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert "5,000,000,000" in str(info.value)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

BAD_HEADERS = {
    "garbage json": (b"this is {not json", b""),
    "not utf-8": (b"\xff\xfe{}", b""),
    "json list": (b"[1, 2, 3]", b""),
    "entry not an object": ({"a": [1, 2]}, b""),
    "metadata not an object": ({"__metadata__": ["x"], "a": F32_2}, b"\0" * 8),
    "unknown dtype": ({"a": {**F32_2, "dtype": "F33"}}, b"\0" * 8),
    "negative dim": ({"a": {**F32_2, "shape": [-2]}}, b"\0" * 8),
    "bool dim": ({"a": {**F32_2, "shape": [True, 2]}}, b"\0" * 8),
    "string dim": ({"a": {**F32_2, "shape": ["2"]}}, b"\0" * 8),
    "size mismatch": ({"a": {**F32_2, "shape": [3]}}, b"\0" * 8),
    "offsets reversed": ({"a": {**F32_2, "data_offsets": [8, 0]}}, b"\0" * 8),
    "negative offset": ({"a": {**F32_2, "data_offsets": [-8, 0]}}, b"\0" * 8),
    "offsets not a pair": ({"a": {**F32_2, "data_offsets": [0]}}, b"\0" * 8),
    "past the end": ({"a": F32_2}, b"\0" * 4),
    "overlapping": ({"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12),
    "overlap inside": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                        "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 16),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_malformed_safetensors_headers(tmp_path, case):
    header, data = BAD_HEADERS[case]
    f = write_raw_safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CorruptFileError) as info:
        fingerprint(f, use_cache=False)
    assert isinstance(info.value, ValueError)
    with pytest.raises(CorruptFileError):
        fingerprint(tmp_path, use_cache=False)


def test_overlap_message_names_both_tensors(tmp_path):
    header, data = BAD_HEADERS["overlapping"]
    f = write_raw_safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CorruptFileError, match="overlap") as info:
        fingerprint(f, use_cache=False)
    assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_a_valid_handmade_file_is_accepted(tmp_path):
    """Control for the malformed cases: the same writer with a consistent header works."""
    f = write_raw_safetensors(tmp_path / "model.safetensors",
                              {"a": F32_2, "b": {**F32_2, "data_offsets": [8, 16]}}, b"\0" * 16)
    fp = fingerprint(f, use_cache=False)
    assert fp.n_tensors == 2 and fp.shapes == {"a": (2,), "b": (2,)}
    assert fp.digest == fingerprint({"a": torch.zeros(2), "b": torch.zeros(2)}).digest


def test_shard_missing_from_index(sharded_dir, tmp_path):
    d = shutil.copytree(sharded_dir, tmp_path / "missing")
    victim = sorted(d.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CorruptFileError) as info:
        fingerprint(d)
    assert victim.name in str(info.value)


def test_index_naming_a_tensor_no_shard_holds(sharded_dir, tmp_path):
    """An index and shards that do not belong together (a tensor the index places in a shard
    that does not hold it) is refused, naming the tensor; the same model untouched passes."""
    d = shutil.copytree(sharded_dir, tmp_path / "mismatch")
    index_path = next(d.glob("*.safetensors.index.json"))
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = sorted(set(index["weight_map"].values()))[0]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="model.layers.9.mlp.up_proj.weight"):
        fingerprint(d, use_cache=False)
    assert fingerprint(sharded_dir).digest  # the original is fine


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd", ".hidden.safetensors", 7])
def test_index_naming_shards_outside_the_directory(sharded_dir, tmp_path, shard):
    d = shutil.copytree(sharded_dir, tmp_path / "escape")
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptFileError):
        fingerprint(d)


def test_garbage_index(sharded_dir, tmp_path):
    d = shutil.copytree(sharded_dir, tmp_path / "badindex")
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CorruptFileError):
        fingerprint(d)
    (d / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CorruptFileError):
        fingerprint(d)


def test_tensor_stored_twice(base_dir, tmp_path):
    d = tmp_path / "dup"
    d.mkdir()
    shutil.copy(base_dir / "model.safetensors", d / "model-a.safetensors")
    save_file({"model.norm.weight": torch.ones(32)}, d / "model-b.safetensors")
    names = load_file(d / "model-a.safetensors")
    weight_map = {n: "model-b.safetensors" if n == "model.norm.weight" else "model-a.safetensors" for n in names}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CorruptFileError, match="twice"):
        fingerprint(d, use_cache=False)


def test_adapter_directory_passed_as_base(lora_dir):
    with pytest.raises(WeightsNotFoundError) as info:
        fingerprint(lora_dir)
    assert "adapter" in str(info.value)
    assert info.value.hint and "base" in info.value.hint


# --------------------------------------------------------------------------- CLI


def test_cli_fingerprint_json(base_dir, base_fp):
    proc = run_cli("fingerprint", str(base_dir), "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["fingerprint"] == base_fp.digest
    assert out["arch_signature"] == base_fp.arch_signature
    assert out["n_tensors"] == base_fp.n_tensors and out["n_params"] == base_fp.n_params


def test_cli_fingerprint_text(sharded_dir, base_fp):
    proc = run_cli("fingerprint", str(sharded_dir), "--no-cache", check=True)
    assert base_fp.digest in proc.stdout and base_fp.arch_signature in proc.stdout


def _bad_inputs(tmp: Path, lora_dir: Path, base_dir: Path) -> dict[str, Path]:
    (tmp / "empty").mkdir()
    (tmp / "pickled").mkdir()
    write_pickle_bomb(tmp / "pickled" / "pytorch_model.bin", tmp / "PWNED")
    (tmp / "trunc").mkdir()
    (tmp / "trunc" / "model.safetensors").write_bytes((base_dir / "model.safetensors").read_bytes()[:-64])
    return {"empty": tmp / "empty", "pickled": tmp / "pickled",
            "truncated": tmp / "trunc" / "model.safetensors", "adapter": lora_dir}


def test_cli_bad_input_is_one_error_line(tmp_path, lora_dir, base_dir):
    for case, path in _bad_inputs(tmp_path, lora_dir, base_dir).items():
        proc = run_cli("fingerprint", str(path), "--json")
        assert proc.returncode != 0, case
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (case, proc.stderr)
        assert lines[0].startswith("error:"), (case, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == "", case
    assert not (tmp_path / "PWNED").exists()


def test_error_classes_are_adapterhub_errors():
    for cls in (CorruptFileError, UnsafeFormatError, WeightsNotFoundError):
        assert issubclass(cls, AdapterHubError)


def test_cache_sees_a_file_rewritten_in_place_with_its_mtime_put_back(base_dir, tmp_path):
    # same size, same inode, mtime restored (os.utime, touch -r, cp -p): only ctime tells
    d = shutil.copytree(base_dir, tmp_path / "rewritten")
    f = d / "model.safetensors"
    before = fingerprint(d)
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-4] ^= 0x40  # one bit of the last tensor's last value
    with open(f, "r+b") as fh:  # in place: the inode stays
        fh.write(data)
    time.sleep(0.01)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert fingerprint(d).digest == fingerprint(d, use_cache=False).digest != before.digest


# --------------------------------------------------------------------------- pinned definition

# Tensors of fixed bytes (shake_256 streams, not torch RNG) laid out out of name order,
# one of them larger than a chunk, one empty, one a scalar. The digests below are the
# fingerprint definition (version 1) written down: a faster hashing engine must give them.
_PINNED = [  # name, dtype, shape, item size
    ("z.big", "U8", (8 * 1024 * 1024 + 4099,), 1),
    ("a.embed.weight", "BF16", (33, 17), 2),
    ("m.empty", "F32", (0, 4), 4),
    ("m.scalar", "I64", (), 8),
    ("b.norm.weight", "F32", (17,), 4),
]
PINNED_DIGEST = "3a7af64fb326edf436e124278731e0b951cc572855898e5ac751270f6368d352"
PINNED_ARCH = "7a190fd1b904633ecd6d4b8fd1ea7245a5b5e3ee4fb83199f4103f2528ffceb7"
CHUNK_V1 = 8 * 1024 * 1024


def _pinned_bytes(name: str, n: int) -> bytes:
    return hashlib.shake_256(b"adapterhub-pinned\0" + name.encode()).digest(n) if n else b""


def _write_pinned(path: Path, names: list[str]) -> Path:
    header: dict = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, dtype, shape, size in _PINNED:
        if name not in names:
            continue
        n = size * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + n]}
        data += _pinned_bytes(name, n)
    return write_raw_safetensors(path, header, data)


def _definition_v1() -> tuple[str, str]:
    """The fingerprint and arch signature computed straight from the module docstring."""
    fp = hashlib.sha256(b"adapterhub-fingerprint-v1\n")
    arch = hashlib.sha256(b"adapterhub-arch-v1\n")
    for name, dtype, shape, size in sorted(_PINNED):
        raw = _pinned_bytes(name, size * math.prod(shape))
        chunks = b"".join(hashlib.sha256(raw[o:o + CHUNK_V1]).digest() for o in range(0, len(raw), CHUNK_V1))
        entry = hashlib.sha256(b"adapterhub-tensor-v1\0" + name.encode() + b"\0" + dtype.encode() + b"\0"
                               + json.dumps(list(shape), separators=(",", ":")).encode() + b"\0"
                               + hashlib.sha256(chunks).digest())
        fp.update(entry.digest())
        arch.update(f"{name}\t{list(shape)}\n".encode())
    return fp.hexdigest(), arch.hexdigest()


def test_pinned_digests_of_the_v1_definition(tmp_path):
    assert _definition_v1() == (PINNED_DIGEST, PINNED_ARCH)
    names = [n for n, *_ in _PINNED]
    one = _write_pinned(tmp_path / "one.safetensors", names)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    _write_pinned(sharded / "model-00001-of-00002.safetensors", names[:2])
    _write_pinned(sharded / "model-00002-of-00002.safetensors", names[2:])
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        n: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, n in enumerate(names)}}))
    st = {n: torch.frombuffer(bytearray(_pinned_bytes(n, size * math.prod(shape))), dtype=_TORCH_DTYPES[dtype])
          .reshape(shape) if math.prod(shape) else torch.empty(shape, dtype=_TORCH_DTYPES[dtype])
          for n, dtype, shape, size in _PINNED}
    for workers in (1, 2, 4):
        for what in (one, sharded, st):
            got = fingerprint(what, workers=workers, use_cache=False)
            assert (got.digest, got.arch_signature) == (PINNED_DIGEST, PINNED_ARCH), (what, workers)
    cached_home = fingerprint(one)  # through the cache too: first call writes, second reads
    assert fingerprint(one).digest == cached_home.digest == PINNED_DIGEST


_TORCH_DTYPES = {"U8": torch.uint8, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}


def test_small_tensors_share_work_units_and_keep_their_order(monkeypatch):
    # the thread pool is handed ~CHUNK bytes per task, not one task per tensor: 2,000 norms
    # of 4 KB are one unit, a tensor of 2.5 chunks is three pieces, each piece in tensor order
    import adapterhub_sdk.hashing as engine  # the hashing engine reads CHUNK from its own module

    monkeypatch.setattr(engine, "CHUNK", 64 * 1024)
    raw = [bytes([i % 251]) * (4096 if i < 2000 else 160 * 1024 if i == 2000 else 0) for i in range(2002)]
    jobs = [(f"t{i}", "U8", (len(b),), memoryview(b)) for i, b in enumerate(raw)]
    units = fpmod._work_units(jobs)
    assert len(units) == 2000 * 4096 // (64 * 1024) + 3
    assert all(sum(len(p) for _, p in u) <= 64 * 1024 for u in units)
    pieces = [(i, bytes(p)) for u in units for i, p in u]
    assert [i for i, _ in pieces] == sorted(i for i, _ in pieces)
    assert {i: b"".join(p for j, p in pieces if j == i) for i in range(2002) if raw[i]} == \
        {i: b for i, b in enumerate(raw) if b}
    assert sum(1 for i, _ in pieces if i == 2000) == 3  # 2.5 chunks: three pieces


def _imported(stderr: str) -> set[str]:
    """Top-level package names from a ``-X importtime`` / PYTHONPROFILEIMPORTTIME profile."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("plugins", ["none", "installed"])
def test_cli_fingerprint_of_a_directory_imports_no_torch_transformers_or_tqdm(sharded_dir, base_fp, plugins):
    env = {k: v for k, v in os.environ.items() if not (k == "ADAPTERHUB_LOAD_PLUGINS" and plugins == "installed")}
    for extra in ([], ["--no-cache"]):
        proc = subprocess.run([ADAPTERHUB, "fingerprint", str(sharded_dir), "--json", *extra], capture_output=True,
                              text=True, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["fingerprint"] == base_fp.digest
        imported = _imported(proc.stderr)
        assert "click" in imported  # the profile is there
        assert not imported & {"torch", "transformers", "peft", "numpy", "safetensors", "tqdm"}, extra
        # nor what this command never consults: the plugin machinery (entry points through
        # importlib.metadata, pluggy), a thread pool's futures and logging; without the cache, sqlite3
        modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        unused = {"pluggy", "importlib.metadata", "adapterhub_sdk.plugins", "concurrent.futures", "logging"}
        assert not modules & (unused | ({"sqlite3"} if extra else set())), extra


def test_no_progress_bar_import_off_a_terminal(base_dir, base_fp):
    # above the progress threshold, a run whose stderr is not a terminal draws nothing: tqdm
    # (~60 ms to import) stays out; asked for explicitly, the bar is still drawn
    code = ("import importlib, sys; fp = importlib.import_module('adapterhub_sdk.fingerprint'); "
            "fp.PROGRESS_MIN_BYTES = 0; d = fp.fingerprint(sys.argv[1], use_cache=False, progress=%s).digest; "
            "print(d, 'tqdm' in sys.modules)")
    for progress, drawn in (("None", False), ("True", True)):
        proc = subprocess.run([sys.executable, "-c", code % progress, str(base_dir)], capture_output=True,
                              text=True, timeout=300, check=True)
        assert proc.stdout.split() == [base_fp.digest, str(drawn)], (progress, proc.stderr)


def test_an_untied_config_over_a_checkpoint_without_its_head_is_refused(tmp_path):
    """A tied base's files with config.json edited to tie_word_embeddings: false: from_pretrained
    initialises lm_head at random, so the model is not the weights on disk. Before, the edited
    copy had the tied base's fingerprint, and resolve called its adapters exact; now fingerprint
    (and so resolve --base, export --base-path, Deployment) refuses it in one line. The tied
    original, and a base that stores its head, still fingerprint."""
    import json
    import shutil
    import subprocess
    import sys

    from adapterhub_sdk.errors import WeightsNotFoundError

    from conftest import save_base

    tied = save_base(tmp_path / "tied", seed=3, tie=True)
    untied = save_base(tmp_path / "untied", seed=3)
    flipped = tmp_path / "flipped"
    shutil.copytree(tied, flipped)
    cfg = json.loads((flipped / "config.json").read_text())
    assert cfg.get("tie_word_embeddings") is not False
    cfg["tie_word_embeddings"] = False
    (flipped / "config.json").write_text(json.dumps(cfg))
    fingerprint(tied)
    fingerprint(untied)
    with pytest.raises(WeightsNotFoundError, match="stores no output head"):
        fingerprint(flipped)
    r = subprocess.run([sys.executable, "-m", "adapterhub_sdk", "resolve", "--base", str(flipped)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "stores no output head" in r.stderr and len(r.stderr.strip().splitlines()) == 1

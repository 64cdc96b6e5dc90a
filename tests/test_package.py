"""Packing PEFT adapters (directories and in-memory PeftModels), method detection,
requirements against real bases, refusals, and the manifest's digest and schema."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterhub_sdk import BaseRef, Manifest, fingerprint, pack
from adapterhub_sdk.errors import (
    AdapterFormatError,
    IncompatibleAdapterError,
    UnsafeFormatError,
)

from conftest import _llama, save_base, save_lora

PREFIX = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj.weight"
V0 = "model.layers.0.self_attn.v_proj.weight"


class _Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_bomb(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({PREFIX + "x.lora_A.weight": _Payload(marker)}, f, protocol=4)
    return path


def copy_adapter(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


def _peft_model(base_dir: Path, *, adapter_name: str = "default", r: int = 4, targets=("q_proj", "v_proj"),
                **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), **kw),
                          adapter_name=adapter_name)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pkg")


@pytest.fixture(scope="module")
def fp_base(base_dir):
    return fingerprint(base_dir, use_cache=False)


@pytest.fixture(scope="module")
def dora_dir(pkg_dir, base_dir):
    return save_lora(base_dir, pkg_dir / "dora", seed=3, use_dora=True)


@pytest.fixture(scope="module")
def rslora_dir(pkg_dir, base_dir):
    return save_lora(base_dir, pkg_dir / "rslora", seed=4, use_rslora=True)


@pytest.fixture(scope="module")
def head_dir(pkg_dir, base_dir):
    return save_lora(base_dir, pkg_dir / "head", seed=5, modules_to_save=["lm_head"])


@pytest.fixture(scope="module")
def embed_dir(pkg_dir, base_dir):
    return save_lora(base_dir, pkg_dir / "embed", seed=6, modules_to_save=["embed_tokens"])


@pytest.fixture(scope="module")
def base_vocab128(pkg_dir):
    return save_base(pkg_dir / "base_vocab128", vocab=128, seed=0)


@pytest.fixture(scope="module")
def multi_dirs(pkg_dir, base_dir):
    """PEFT's layouts: a default adapter plus 'other' in DIR/other/; only 'other'; 'one' and 'two'."""
    pm = _peft_model(base_dir, targets=("q_proj",))
    pm.add_adapter("other", _lora_config(r=2, targets=("v_proj",)))
    pm.save_pretrained(pkg_dir / "with_root")

    only = _peft_model(base_dir, adapter_name="other", r=2, targets=("v_proj",))
    only.save_pretrained(pkg_dir / "only_other")

    two = _peft_model(base_dir, adapter_name="one", targets=("q_proj",))
    two.add_adapter("two", _lora_config(r=2, targets=("k_proj",)))
    two.save_pretrained(pkg_dir / "two_subs")
    return {"with_root": pkg_dir / "with_root", "only_other": pkg_dir / "only_other",
            "two_subs": pkg_dir / "two_subs"}


def _lora_config(*, r: int, targets):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets))


# --------------------------------------------------------------------------- pack a directory


def test_pack_peft_directory(lora_dir, fp_base):
    pkg = pack(lora_dir)
    assert pkg.root == lora_dir
    assert (pkg.method.name, pkg.variant) == ("lora", "lora")
    assert pkg.config["peft_type"] == "LORA"
    assert pkg.base_name == str(Path(pkg.config["base_model_name_or_path"]))
    names = {f.path for f in pkg.files}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert all("/" not in n for n in names)
    weights = next(f for f in pkg.files if f.path == "adapter_model.safetensors")
    import hashlib

    assert weights.sha256 == hashlib.sha256((lora_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert weights.size == (lora_dir / "adapter_model.safetensors").stat().st_size
    assert pkg.size == sum(f.size for f in pkg.files)
    # q_proj and v_proj of both layers; v_proj is narrower (grouped-query attention)
    assert pkg.requirements == {
        f"model.layers.{i}.self_attn.{m}.weight": shape
        for i in range(2) for m, shape in (("q_proj", [32, 32]), ("v_proj", [16, 32]))
    }
    assert pkg.summary["rank"] == 4 and pkg.summary["ranks"] == [4]
    assert pkg.summary["targets"] == ["q_proj", "v_proj"]
    assert pkg.summary["trainable_params"] == sum(t.numel() for t in
                                                  load_file(lora_dir / "adapter_model.safetensors").values())
    assert pkg.check_base(fp_base) == []
    pkg.require_base(fp_base)


def test_pack_other_targets(lora_dir_b):
    pkg = pack(lora_dir_b)
    assert set(pkg.requirements) == {f"model.layers.{i}.self_attn.{m}.weight"
                                     for i in range(2) for m in ("k_proj", "o_proj")}
    assert pkg.requirements["model.layers.0.self_attn.k_proj.weight"] == [16, 32]
    assert pkg.requirements["model.layers.0.self_attn.o_proj.weight"] == [32, 32]


def test_pack_in_memory_peft_model(base_dir, lora_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_dir)
    from_dir = pack(lora_dir)
    with pack(model) as from_model:
        root = from_model.root
        assert root.is_dir() and root != lora_dir
        assert from_model.requirements == from_dir.requirements
        assert (from_model.method.name, from_model.variant) == ("lora", "lora")
        assert from_model.tensors == from_dir.tensors
        a = load_file(root / "adapter_model.safetensors")
        b = load_file(lora_dir / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not root.exists()  # the temporary copy is gone after close


def test_pack_in_memory_selects_adapter(base_dir):
    pm = _peft_model(base_dir, targets=("q_proj",))
    pm.add_adapter("other", _lora_config(r=2, targets=("v_proj",)))
    with pack(pm, adapter_name="other") as pkg:
        assert set(pkg.requirements) == {f"model.layers.{i}.self_attn.v_proj.weight" for i in range(2)}
        assert pkg.summary["rank"] == 2
    with pack(pm) as pkg:  # the active adapter
        assert set(pkg.requirements) == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)}
    with pytest.raises(AdapterFormatError, match="nope"):
        pack(pm, adapter_name="nope")


def test_subfolder_layouts(multi_dirs):
    root = pack(multi_dirs["with_root"])
    assert set(root.requirements) == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)}
    other = pack(multi_dirs["with_root"], subfolder="other")
    assert other.root == multi_dirs["with_root"] / "other"
    assert set(other.requirements) == {f"model.layers.{i}.self_attn.v_proj.weight" for i in range(2)}
    # no adapter at the root, exactly one subfolder: that one
    only = pack(multi_dirs["only_other"])
    assert only.root == multi_dirs["only_other"] / "other"
    assert set(only.requirements) == set(other.requirements)


def test_several_subfolders_without_root_must_be_chosen(multi_dirs):
    with pytest.raises(AdapterFormatError) as info:
        pack(multi_dirs["two_subs"])
    assert "one" in str(info.value) and "two" in str(info.value)
    assert "subfolder" in info.value.hint
    assert set(pack(multi_dirs["two_subs"], subfolder="two").requirements) == {
        f"model.layers.{i}.self_attn.k_proj.weight" for i in range(2)}


@pytest.mark.parametrize("sub", ["missing", "../with_root", "a/b", ".", "..", ""])
def test_bad_subfolder(multi_dirs, sub):
    with pytest.raises(AdapterFormatError):
        pack(multi_dirs["with_root"], subfolder=sub)


def test_dora_and_rslora_variants(dora_dir, rslora_dir, lora_dir, fp_base):
    dora = pack(dora_dir)
    assert (dora.method.name, dora.variant) == ("lora", "dora")
    assert dora.summary["dora"] is True
    assert any(k.endswith("lora_magnitude_vector") for k in dora.tensors)
    assert dora.requirements == pack(lora_dir).requirements  # magnitudes add no base tensor
    rs = pack(rslora_dir)
    assert (rs.method.name, rs.variant) == ("lora", "rslora")
    assert rs.summary["rslora"] is True and rs.summary["dora"] is False
    assert dora.check_base(fp_base) == [] and rs.check_base(fp_base) == []


def test_modules_to_save_requires_the_full_tensor(head_dir, embed_dir, fp_base):
    head = pack(head_dir)
    assert head.requirements["lm_head.weight"] == [64, 32]
    assert head.summary["modules_to_save"] == ["lm_head"]
    embed = pack(embed_dir)
    assert embed.requirements["model.embed_tokens.weight"] == [64, 32]
    assert head.check_base(fp_base) == [] and embed.check_base(fp_base) == []


def test_modules_to_save_on_a_tied_base(head_dir, tmp_path):
    tied = fingerprint(save_base(tmp_path / "tied", seed=0, tie=True), use_cache=False)
    assert "lm_head.weight" not in tied.shapes
    assert pack(head_dir).check_base(tied) == []


def test_other_shape_is_incompatible(lora_dir, base_other_shape, base_other_weights):
    pkg = pack(lora_dir)
    assert pkg.check_base(fingerprint(base_other_weights, use_cache=False)) == []  # structural fit
    wide = fingerprint(base_other_shape, use_cache=False)
    with pytest.raises(IncompatibleAdapterError) as info:
        pkg.require_base(wide)
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.reasons) == 4  # q_proj and v_proj of two layers
    q = next(r for r in err.reasons if Q0 in r)
    assert "[48, 48]" in q and "[32, 32]" in q
    v = next(r for r in err.reasons if V0 in r)
    assert "[24, 48]" in v and "[16, 32]" in v
    assert wide.short in str(err)


@pytest.mark.parametrize(("fixture", "tensor"), [("head_dir", "lm_head.weight"),
                                                 ("embed_dir", "model.embed_tokens.weight")])
def test_vocabulary_mismatch(request, fixture, tensor, base_vocab128, lora_dir):
    fp128 = fingerprint(base_vocab128, use_cache=False)
    assert pack(lora_dir).check_base(fp128) == []  # plain LoRA does not care about the vocabulary
    pkg = pack(request.getfixturevalue(fixture))
    reasons = pkg.check_base(fp128)
    assert len(reasons) == 1
    assert "vocabulary" in reasons[0] and tensor in reasons[0]
    assert "128" in reasons[0] and "64" in reasons[0]
    with pytest.raises(IncompatibleAdapterError, match="vocabulary"):
        pkg.require_base(fp128)


def test_missing_module_is_named(lora_dir):
    sd = _llama(seed=0).state_dict()
    del sd[Q0]
    reasons = pack(lora_dir).check_base(fingerprint(sd))
    assert reasons and reasons[0].startswith("missing module")
    assert "model.layers.0.self_attn.q_proj" in reasons[0]


# --------------------------------------------------------------------------- refusals


def test_adapter_model_bin_is_refused(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    marker = tmp_path / "PWNED"
    write_pickle_bomb(d / "adapter_model.bin", marker)
    with pytest.raises(UnsafeFormatError) as info:
        pack(d)
    assert "adapter_model.bin" in str(info.value) and info.value.hint
    with pytest.raises(UnsafeFormatError):
        pack(d / "adapter_model.bin")
    # the pickle-only layout of older PEFT versions
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(UnsafeFormatError):
        pack(d)
    assert not marker.exists()


def test_safetensors_that_is_a_pickle_is_refused(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    marker = tmp_path / "PWNED"
    write_pickle_bomb(d / "adapter_model.safetensors", marker)
    with pytest.raises(UnsafeFormatError):
        pack(d)
    # torch.save's zip container under a safetensors name
    torch.save({"w": torch.zeros(2)}, d / "adapter_model.safetensors")
    with pytest.raises(UnsafeFormatError):
        pack(d)
    assert not marker.exists()


def test_genuine_adapter_whose_header_starts_with_0x80(lora_dir, tmp_path):
    """A safetensors header length of 128 (mod 256) begins with 0x80, like a pickle; it is not one."""
    d = copy_adapter(lora_dir, tmp_path / "a")
    f = d / "adapter_model.safetensors"
    tensors = load_file(f)
    for pad in range(512):
        save_file(tensors, f, metadata={"format": "pt", "pad": "x" * pad})
        if f.read_bytes()[:1] == b"\x80":
            break
    else:  # pragma: no cover
        pytest.fail("could not produce a header length of 128 mod 256")
    assert pack(d).requirements == pack(lora_dir).requirements


def test_unexpected_tensor_key(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    tensors = load_file(d / "adapter_model.safetensors")
    tensors[PREFIX + "foo.bar_xyz"] = torch.zeros(2)
    save_file(tensors, d / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match="foo.bar_xyz"):
        pack(d)


def test_lora_a_without_b(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    tensors = load_file(d / "adapter_model.safetensors")
    del tensors[PREFIX + "model.layers.0.self_attn.q_proj.lora_B.weight"]
    save_file(tensors, d / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AdapterFormatError, match="lora_A/lora_B"):
        pack(d)


def test_adapter_without_tensors(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(AdapterFormatError, match="no tensors"):
        pack(d)


def test_truncated_adapter_weights(lora_dir, tmp_path):
    from adapterhub_sdk.errors import CorruptFileError

    d = copy_adapter(lora_dir, tmp_path / "a")
    f = d / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CorruptFileError):
        pack(d)


@pytest.mark.parametrize(
    ("case", "config"),
    [
        ("missing", None),
        ("invalid json", b"{not json"),
        ("not utf-8", b'{"peft_type": "LORA"\xff}'),
        ("no peft_type", b'{"r": 4, "target_modules": ["q_proj"]}'),
        ("peft_type not a string", b'{"peft_type": 7}'),
        ("a list", b'["LORA"]'),
    ],
)
def test_bad_adapter_config(lora_dir, tmp_path, case, config):
    d = copy_adapter(lora_dir, tmp_path / "a")
    if config is None:
        (d / "adapter_config.json").unlink()
    else:
        (d / "adapter_config.json").write_bytes(config)
    with pytest.raises(AdapterFormatError):
        pack(d)


def test_missing_weights_file(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors"):
        pack(d)


def test_not_a_directory(tmp_path, lora_dir):
    with pytest.raises(AdapterFormatError):
        pack(tmp_path / "nope")
    with pytest.raises(AdapterFormatError):
        pack(lora_dir / "adapter_config.json")


def test_stray_files_are_not_packed(lora_dir, tmp_path):
    d = copy_adapter(lora_dir, tmp_path / "a")
    (d / ".secret").write_text("token")
    (d / "notes.txt").write_text("hello")
    (d / "script.sh").write_text("rm -rf /")
    (d / "sub").mkdir()
    names = {f.path for f in pack(d).files}
    assert "notes.txt" in names
    assert not names & {".secret", "script.sh", "sub"}


# --------------------------------------------------------------------------- manifest


def _manifest(pkg, **kw):
    args = {"name": "acme/sentiment", "version": "1.0.0",
            "base": BaseRef(name="llama-tiny", fingerprint="ab" * 32, arch_signature="cd" * 32),
            "tasks": ["sentiment", "english"]}
    args.update(kw)
    return pkg.manifest(**args)


def test_manifest_digest_is_stable(lora_dir, tmp_path):
    pkg = pack(lora_dir)
    m1 = _manifest(pkg, provenance={"created": "2024-01-01T00:00:00Z", "sdk": "0.1.0"})
    m2 = _manifest(pkg, provenance={"created": "2025-06-30T12:00:00Z", "host": "elsewhere"})
    assert m1.digest == m2.digest and m1.digest.startswith("sha256:") and len(m1.digest) == 71
    assert m1.to_json() != m2.to_json()  # provenance is kept, just not hashed
    # task order and duplicates do not matter
    assert _manifest(pkg, tasks=["english", "sentiment", "english"]).digest == m1.digest
    # the same bytes packed from another directory give the same digest
    again = pack(copy_adapter(lora_dir, tmp_path / "copy"))
    assert _manifest(again).digest == m1.digest


def test_manifest_digest_changes_with_content(lora_dir, lora_dir_b, tmp_path):
    pkg = pack(lora_dir)
    m = _manifest(pkg)
    assert _manifest(pkg, tasks=["sentiment"]).digest != m.digest
    assert _manifest(pkg, version="1.0.1").digest != m.digest
    assert _manifest(pkg, description="new").digest != m.digest
    assert _manifest(pkg, base=BaseRef(name="llama-tiny", fingerprint="ef" * 32)).digest != m.digest
    assert _manifest(pack(lora_dir_b)).digest != m.digest
    d = copy_adapter(lora_dir, tmp_path / "edited")
    (d / "README.md").write_text("a different model card\n")
    assert _manifest(pack(d)).digest != m.digest


def test_manifest_json_round_trip(head_dir):
    m = _manifest(pack(head_dir), description="héllo", license="apache-2.0",
                  metrics={"accuracy": 0.91}, provenance={"created": "now"})
    raw = m.to_json()
    assert json.loads(raw)["digest"] == m.digest
    back = Manifest.from_json(raw)
    assert back.digest == m.digest
    assert back.to_dict() == m.to_dict()
    assert back.requirements["lm_head.weight"] == [64, 32]
    assert Manifest.from_json(raw.decode()).digest == m.digest


def test_manifest_tampering_is_detected(lora_dir):
    d = _manifest(pack(lora_dir)).to_dict()
    d["description"] = "tampered"
    with pytest.raises(AdapterFormatError, match="digest"):
        Manifest.from_dict(d)
    del d["digest"]
    assert Manifest.from_dict(d).description == "tampered"  # no digest claimed, nothing to check


@pytest.mark.parametrize("path", ["../evil", "sub/file.json", "/etc/passwd", ".hidden", "",
                                  "a\\b", "évil.json", "x" * 200, "..", "a..b"])
def test_manifest_rejects_unsafe_file_paths(lora_dir, path):
    d = _manifest(pack(lora_dir)).to_dict()
    d["files"][0]["path"] = path
    with pytest.raises(AdapterFormatError) as info:
        Manifest.from_dict(d)
    assert "not allowed" in str(info.value)


@pytest.mark.parametrize("mutate", ["schema", "missing_name", "files_not_list", "size_not_int"])
def test_malformed_manifests(lora_dir, mutate):
    d = _manifest(pack(lora_dir)).to_dict()
    del d["digest"]
    if mutate == "schema":
        d["schema"] = "adapterhub.manifest/999"
    elif mutate == "missing_name":
        del d["name"]
    elif mutate == "files_not_list":
        d["files"] = 5
    else:
        d["files"][0]["size"] = "big"
    with pytest.raises(AdapterFormatError):
        Manifest.from_dict(d)


def test_manifest_from_invalid_json():
    with pytest.raises(AdapterFormatError):
        Manifest.from_json(b"{nope")
    with pytest.raises(AdapterFormatError):
        Manifest.from_json(b"[]")

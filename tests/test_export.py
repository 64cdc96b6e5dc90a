"""``adapterhub export``: a verified copy of a version in the layout PEFT, vLLM, LoRAX, TGI
or Ollama loads, plus what that tool needs; refusals name the tool's limitation; the
output directory is complete or untouched."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.export import (
    FORMATS,
    MANIFEST_FILE,
    PEFT_README,
    VLLM_MAX_LORA_RANKS,
    export,
    vllm_max_lora_rank,
)

from conftest import run_cli, save_lora

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 2, 7, 11], [3, 4, 8, 16, 32, 63, 0, 12]])
NAME = "acme/sentiment"
DIRNAME = "acme--sentiment"


def _logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


@pytest.fixture(scope="module")
def original_logits(base_dir, lora_dir) -> torch.Tensor:
    return _logits(base_dir, lora_dir)


@pytest.fixture
def published(registry, base_dir, lora_dir):
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    return registry


@pytest.fixture(scope="module")
def dora_dir(models_dir, base_dir) -> Path:
    return save_lora(base_dir, models_dir / "lora_dora", seed=3, use_dora=True)


@pytest.fixture(scope="module")
def ia3_dir(models_dir, base_dir) -> Path:
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                     feedforward_modules=["down_proj"]))
    out = models_dir / "ia3"
    model.save_pretrained(out)
    return out


@pytest.fixture
def outs(tmp_path) -> Path:
    """Where exports go: a directory of its own (the registry's files live in tmp_path)."""
    d = tmp_path / "outs"
    d.mkdir()
    return d


def _fp(base_dir: Path) -> str:
    return ah.fingerprint(base_dir).digest


def _check_common(res, out: Path, base_dir: Path) -> None:
    """Every export: manifest beside the files, README with the full fingerprint, PEFT dir intact."""
    fp = _fp(base_dir)
    assert res.path == out.absolute() and out.is_dir()
    assert res.base_fingerprint == fp
    manifest = ah.Manifest.from_json((out / MANIFEST_FILE).read_bytes())
    assert manifest.digest == res.digest and manifest.name == NAME and manifest.base.fingerprint == fp
    readme = (out / res.readme).read_text()
    assert fp in readme and res.digest in readme and f"{NAME}@1.0.0" in readme
    assert (res.adapter_path / "adapter_config.json").is_file()
    assert (res.adapter_path / "adapter_model.safetensors").is_file()
    assert ah.Manifest.from_json((res.adapter_path / MANIFEST_FILE).read_bytes()).digest == res.digest
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert list(res.files) == on_disk
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def _same_bytes(a: Path, b: Path) -> None:
    for p in b.iterdir():
        if p.is_file():
            assert (a / p.name).read_bytes() == p.read_bytes(), p.name


# --------------------------------------------------------------------------- each format


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_loads_in_peft_with_identical_logits(fmt, published, base_dir, lora_dir, original_logits, tmp_path):
    out = tmp_path / "exports" / fmt
    res = export(published, f"{NAME}@^1", fmt, out)
    _check_common(res, out, base_dir)
    assert (res.version, res.format) == ("1.0.0", fmt)
    _same_bytes(res.adapter_path, lora_dir)
    torch.testing.assert_close(_logits(base_dir, res.adapter_path), original_logits, rtol=0, atol=0)
    json.dumps(res.to_dict())  # serialisable


def test_peft_layout_is_the_peft_directory(published, base_dir, lora_dir, tmp_path):
    out = tmp_path / "peft"
    res = export(published, NAME, "peft", out)
    assert res.adapter_path == out.absolute() and res.readme == PEFT_README
    expected = {p.name for p in lora_dir.iterdir()} | {MANIFEST_FILE, PEFT_README}
    assert set(res.files) == expected
    if (lora_dir / "README.md").exists():  # PEFT's model card is kept byte for byte
        assert (out / "README.md").read_bytes() == (lora_dir / "README.md").read_bytes()


def test_vllm_layout(published, base_dir, tmp_path):
    out = tmp_path / "vllm"
    res = export(published, NAME, "vllm", out, base_path=base_dir)
    assert res.adapter_path == out.absolute() / DIRNAME
    assert res.base_checked and res.base_name == str(base_dir.resolve())
    modules = json.loads((out / "lora-modules.json").read_text())
    assert modules == [{"name": NAME, "path": str(res.adapter_path), "base_model_name": str(base_dir.resolve())}]
    assert res.details["max_lora_rank"] == 8  # r=4, rounded up to a value vLLM accepts
    script = out / "serve.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/sh") and _fp(base_dir) in text
    # the exec line, as sh would split it
    exec_line = text[text.index("exec "):].replace("\\\n", " ")
    argv = shlex.split(exec_line)
    assert argv[:4] == ["exec", "vllm", "serve", str(base_dir.resolve())]
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "8"
    assert json.loads(argv[argv.index("--lora-modules") + 1]) == modules[0]  # one JSON object per argument
    assert argv[-1] == "$@"


def test_vllm_without_base_path_names_the_recorded_base(published, base_dir, tmp_path):
    res = export(published, NAME, "vllm", tmp_path / "v")
    assert not res.base_checked
    assert res.base_name == published.show(NAME).base_name == str(base_dir)  # as PEFT recorded it
    modules = json.loads((tmp_path / "v" / "lora-modules.json").read_text())
    assert modules[0]["base_model_name"] == res.base_name


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (2, 8), (4, 8), (8, 8), (9, 16), (64, 64),
                                                (257, 320), (320, 320), (321, 512), (512, 512)])
def test_vllm_max_lora_rank_rounds_up_to_allowed_values(rank, expected):
    assert vllm_max_lora_rank(rank) == expected
    assert expected in VLLM_MAX_LORA_RANKS


def test_vllm_max_lora_rank_above_512_is_an_error():
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_max_lora_rank(513)


def test_vllm_rank_from_a_larger_adapter(registry, base_dir, models_dir, tmp_path):
    big = save_lora(base_dir, models_dir / "lora_r24", seed=4, r=24)
    registry.publish(big, name="acme/big", version="1.0.0", base=base_dir)
    res = export(registry, "acme/big", "vllm", tmp_path / "v")
    assert res.details["max_lora_rank"] == 32
    assert "--max-lora-rank 32" in (tmp_path / "v" / "serve.sh").read_text()


def test_lorax_layout(published, tmp_path):
    out = tmp_path / "lorax"
    res = export(published, NAME, "lorax", out)
    request = json.loads((out / "request.json").read_text())
    assert request["parameters"] == {"max_new_tokens": 64, "adapter_id": str(res.adapter_path),
                                     "adapter_source": "local"}
    assert isinstance(request["inputs"], str)
    readme = (out / "README.md").read_text()
    assert '"adapter_source": "local"' in readme and f"/data/{DIRNAME}" in readme


def test_tgi_layout(published, base_dir, tmp_path):
    out = tmp_path / "tgi"
    res = export(published, NAME, "tgi", out, base_path=base_dir)
    env = dict(line.split("=", 1) for line in (out / "tgi.env").read_text().splitlines())
    assert env == {"MODEL_ID": str(base_dir.resolve()), "LORA_ADAPTERS": f"{NAME}={res.adapter_path}"}
    launch = (out / "launch.sh").read_text()
    assert os.access(out / "launch.sh", os.X_OK)
    assert "text-generation-launcher --model-id" in launch and f"LORA_ADAPTERS={NAME}=" in launch
    request = json.loads((out / "request.json").read_text())
    assert request["parameters"]["adapter_id"] == NAME


def test_tgi_refuses_a_path_its_launcher_cannot_parse(published, outs):
    with pytest.raises(ah.AdapterHubError, match="LORA_ADAPTERS path"):
        export(published, NAME, "tgi", outs / "a@b")
    assert list(outs.iterdir()) == []


def test_ollama_layout(published, base_dir, tmp_path):
    out = tmp_path / "ollama"
    res = export(published, NAME, "ollama", out, base_path=base_dir)
    lines = [ln for ln in (out / "Modelfile").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [f"FROM {base_dir.resolve()}", f"ADAPTER ./{DIRNAME}"]
    assert (out / DIRNAME / "adapter_model.safetensors").is_file()  # ADAPTER is relative to the Modelfile
    assert res.details["model_type"] == "llama" and res.base_checked
    assert _fp(base_dir) in (out / "Modelfile").read_text()


def test_ollama_quotes_a_base_path_with_spaces(registry, base_dir, lora_dir, tmp_path):
    import shutil

    spaced = Path(shutil.copytree(base_dir, tmp_path / "my base"))
    registry.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
    res = export(registry, NAME, "ollama", tmp_path / "o", base_path=spaced)
    assert f'FROM "{spaced.resolve()}"' in (tmp_path / "o" / "Modelfile").read_text()
    assert res.base_checked


def test_ollama_without_base_path_warns_about_from(published, tmp_path):
    res = export(published, NAME, "ollama", tmp_path / "o")
    assert any("FROM names" in w for w in res.warnings)
    assert "FROM names" in (tmp_path / "o" / "README.md").read_text()


def test_ollama_refuses_an_unsupported_architecture(registry, lora_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(gpt2)
    registry.publish(lora_dir, name="acme/unpinned", version="1.0.0")  # no pin: only the architecture decides
    with pytest.raises(ah.IncompatibleAdapterError, match="only llama and gemma2 bases; this base is 'gpt2'"):
        export(registry, "acme/unpinned", "ollama", tmp_path / "o", base_path=gpt2)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- refusals


def test_dora_is_refused_for_vllm_naming_the_limitation(registry, base_dir, dora_dir, outs):
    registry.publish(dora_dir, name="acme/dora", version="1.0.0", base=base_dir)
    with pytest.raises(ah.IncompatibleAdapterError, match="vLLM does not support DoRA") as exc:
        export(registry, "acme/dora", "vllm", outs / "v")
    assert "cannot export acme/dora@1.0.0 for vLLM" in str(exc.value)
    assert not (outs / "v").exists()
    assert list(outs.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("fmt", ["lorax", "tgi", "ollama"])
def test_dora_is_refused_by_the_other_servers(fmt, registry, base_dir, dora_dir, tmp_path):
    registry.publish(dora_dir, name="acme/dora", version="1.0.0", base=base_dir)
    with pytest.raises(ah.IncompatibleAdapterError, match="DoRA"):
        export(registry, "acme/dora", fmt, tmp_path / fmt)


def test_dora_exports_as_peft(registry, base_dir, dora_dir, tmp_path):
    registry.publish(dora_dir, name="acme/dora", version="1.0.0", base=base_dir)
    res = export(registry, "acme/dora", "peft", tmp_path / "p")
    torch.testing.assert_close(_logits(base_dir, res.adapter_path), _logits(base_dir, dora_dir), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["vllm", "lorax", "tgi", "ollama"])
def test_non_lora_is_refused_by_servers(fmt, registry, base_dir, ia3_dir, tmp_path):
    registry.publish(ia3_dir, name="acme/ia3", version="1.0.0", base=base_dir)
    with pytest.raises(ah.IncompatibleAdapterError, match="LoRA adapters only; this is a ia3 adapter"):
        export(registry, "acme/ia3", fmt, tmp_path / fmt)


def test_base_path_with_other_weights_is_refused(published, base_other_weights, tmp_path):
    with pytest.raises(ah.IncompatibleAdapterError, match="pinned to base .* have fingerprint"):
        export(published, NAME, "vllm", tmp_path / "v", base_path=base_other_weights)
    assert not (tmp_path / "v").exists()


def test_a_base_path_that_is_a_name_is_written_unchecked(published, tmp_path):
    res = export(published, NAME, "ollama", tmp_path / "o", base_path="llama3.2:1b")
    assert not res.base_checked and res.base_name == "llama3.2:1b"
    assert "FROM llama3.2:1b" in (tmp_path / "o" / "Modelfile").read_text()
    assert any("not checked" in w for w in res.warnings)


def test_unknown_format_and_hub_refs(published, outs):
    with pytest.raises(ah.AdapterHubError, match="unknown export format"):
        export(published, NAME, "gguf", outs / "x")
    with pytest.raises(ah.AdapterHubError, match="Hub reference"):
        export(published, "hf://acme/x", "peft", outs / "x")
    with pytest.raises(ah.NotFoundError):
        export(published, "acme/missing", "peft", outs / "x")
    assert list(outs.iterdir()) == []


# --------------------------------------------------------------------------- atomicity


def test_non_empty_out_is_refused_without_overwrite(published, outs):
    out = outs / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"pass overwrite=True"):
        export(published, NAME, "vllm", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = export(published, NAME, "vllm", out, overwrite=True)
    assert not (out / "keep.txt").exists() and "lora-modules.json" in res.files
    assert [p.name for p in outs.iterdir()] == ["out"]


def test_empty_out_is_used(published, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert "Modelfile" in export(published, NAME, "ollama", out).files


def test_out_that_is_a_file_is_refused(published, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        export(published, NAME, "peft", f, overwrite=True)


def test_failure_midway_leaves_nothing(published, outs, monkeypatch):
    import adapterhub_sdk.export as mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "_layout_vllm", boom)
    out = outs / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        export(published, NAME, "vllm", out)
    assert list(outs.iterdir()) == []
    # and with an existing export and overwrite: the old one stays as it was
    monkeypatch.undo()
    first = export(published, NAME, "vllm", out)
    before = {f: (out / f).read_bytes() for f in first.files}
    monkeypatch.setattr(mod, "_layout_vllm", boom)
    with pytest.raises(RuntimeError):
        export(published, NAME, "vllm", out, overwrite=True)
    assert {f: (out / f).read_bytes() for f in first.files} == before
    assert [p.name for p in outs.iterdir()] == ["out"]


def test_a_corrupt_blob_is_caught_and_nothing_is_written(published, outs):
    info = published.show(NAME)
    weights = next(f for f in info.manifest.files if f.path == "adapter_model.safetensors")
    blob = published.blobs.path(weights.sha256)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ah.IntegrityError):
        export(published, NAME, "vllm", outs / "v")
    assert list(outs.iterdir()) == []


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_registry(tmp_path, base_dir, lora_dir, dora_dir):
    url = f"sqlite:///{tmp_path / 'reg' / 'r.db'}"
    (tmp_path / "reg").mkdir()
    with ah.Registry.open(url) as reg:
        reg.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
        reg.publish(dora_dir, name="acme/dora", version="1.0.0", base=base_dir)
    return ("--registry", url)


def _one_line_error(proc, *needles: str, code: int = 1) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_cli_export_json(cli_registry, base_dir, tmp_path):
    out = tmp_path / "v"
    proc = run_cli(*cli_registry, "export", f"{NAME}@1.0.0", "--format", "vllm", "--out", str(out),
                   "--base-path", str(base_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["name"] == NAME and d["version"] == "1.0.0" and d["format"] == "vllm"
    assert d["base"] == {"name": str(base_dir.resolve()), "fingerprint": _fp(base_dir), "checked": True}
    assert d["max_lora_rank"] == 8 and d["lora_modules"][0]["name"] == NAME
    assert d["path"] == str(out.absolute()) and "serve.sh" in d["files"]


def test_cli_export_text(cli_registry, tmp_path):
    proc = run_cli(*cli_registry, "export", NAME, "--format", "OLLAMA", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert f"exported {NAME}@1.0.0 for Ollama" in proc.stdout and "note" in proc.stdout


def test_cli_export_errors_are_one_line(cli_registry, tmp_path):
    _one_line_error(run_cli(*cli_registry, "export", "acme/dora", "--format", "vllm", "--out",
                            str(tmp_path / "d")), "vLLM does not support DoRA", "--format peft")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    _one_line_error(run_cli(*cli_registry, "export", NAME, "--format", "tgi", "--out", str(out)),
                    "exists and is not empty", "--force")
    ok = run_cli(*cli_registry, "export", NAME, "--format", "tgi", "--out", str(out), "--force")
    assert ok.returncode == 0, ok.stderr
    _one_line_error(run_cli(*cli_registry, "export", NAME, "--format", "gguf", "--out", str(tmp_path / "g")),
                    "--format", "'gguf' is not one of", code=2)  # a usage error, as click numbers them
    _one_line_error(run_cli(*cli_registry, "export", "acme/nope", "--format", "peft", "--out",
                            str(tmp_path / "n")), "no adapter named 'acme/nope'")
    assert not (tmp_path / "d").exists() and not (tmp_path / "g").exists()


def test_cli_choices_match_the_module():
    from adapterhub_sdk.cli import cli

    fmt = next(p for p in cli.commands["export"].params if p.name == "fmt")
    assert tuple(fmt.type.choices) == FORMATS

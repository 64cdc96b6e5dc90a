"""`show` says what a version's fingerprint is of, and labels the base name PEFT recorded as
PEFT's: they can name different models (issue 8)."""

from __future__ import annotations

import json
import shutil

import adapterhub_sdk as ah

from conftest import run_cli


def test_show_labels_peft_name_apart_from_the_pinned_weights(tmp_path, base_dir, lora_dir):
    adapter = tmp_path / "lora"
    shutil.copytree(lora_dir, adapter)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"  # what a trainer's script wrote
    cfg_path.write_text(json.dumps(cfg))
    env = {"ADAPTERHUB_HOME": str(tmp_path / "home")}
    run_cli("publish", str(adapter), "--name", "acme/x", "--version", "1.0.0", "--base", str(base_dir),
            env=env, check=True)
    text = run_cli("show", "acme/x@1.0.0", env=env, check=True).stdout
    fp = ah.fingerprint(base_dir).digest
    base_line = next(line for line in text.splitlines() if line.strip().startswith("base "))
    # the fingerprint line names the weights it is of, and not PEFT's label
    assert fp in base_line and str(base_dir.resolve()) in base_line
    assert "Llama-2-7b" not in base_line
    peft_line = next(line for line in text.splitlines() if "meta-llama/Llama-2-7b-hf" in line)
    assert "PEFT recorded" in peft_line and fp not in peft_line
    d = json.loads(run_cli("show", "acme/x@1.0.0", "--json", env=env, check=True).stdout)
    assert d["base_seen_as"] == [str(base_dir.resolve())]
    assert d["base_name"] == "meta-llama/Llama-2-7b-hf"  # unchanged field: PEFT's name


def test_show_unpinned(tmp_path, lora_dir):
    env = {"ADAPTERHUB_HOME": str(tmp_path / "home")}
    run_cli("publish", str(lora_dir), "--name", "acme/y", "--version", "1.0.0", env=env, check=True)
    text = run_cli("show", "acme/y@1.0.0", env=env, check=True).stdout
    assert "not pinned to base weights" in text
    assert "PEFT recorded" in text
    d = json.loads(run_cli("show", "acme/y@1.0.0", "--json", env=env, check=True).stdout)
    assert "base_seen_as" not in d and d["base_fingerprint"] is None

"""adapterhub-policy: each rule accepts and rejects; no policy accepts everything; a broken
policy file rejects, naming the file; through the registry and the real CLI.

The fixtures live in this module, not in a conftest.py: the adapterhub_sdk suite, collected
in the same pytest run, imports helpers with ``from conftest import ...``, and a second
top-level ``conftest`` module would take that name. Nothing here depends on that suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.plugins import get_plugin_manager, register_plugin, unregister_plugin

try:
    import adapterhub_policy
except ImportError:  # a checkout without `pip install -e plugins/adapterhub-policy`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import adapterhub_policy

from adapterhub_policy import ENV, Policy, check, load_policy, validate_publish  # noqa: E402

PLUGIN_NAME = "adapterhub-policy"


@pytest.fixture(autouse=True)
def _policy_isolated(tmp_path, monkeypatch):
    """Own ADAPTERHUB_HOME, no policy unless a test sets one, and no entry-point plugins
    should the plugin manager first load in this process: the plugin comes in through
    ``policy_plugin`` only, so nothing stays registered after these tests."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS", "ADAPTERHUB_POLICY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def policy_plugin():
    """The plugin registered in this process; unregistered after the test unless it was
    already loaded from its entry point (the plugin manager is process-wide, loads once)."""
    if get_plugin_manager().is_registered(adapterhub_policy):
        yield adapterhub_policy
        return
    register_plugin(adapterhub_policy, name=PLUGIN_NAME)
    try:
        yield adapterhub_policy
    finally:
        unregister_plugin(adapterhub_policy)


@pytest.fixture
def write_policy(tmp_path, monkeypatch):
    """write_policy(text) -> path: writes a policy file and points ADAPTERHUB_POLICY at it."""
    counter = iter(range(1000))

    def write(text: str) -> Path:
        path = tmp_path / f"policy-{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("ADAPTERHUB_POLICY", str(path))
        return path

    return write


@pytest.fixture(scope="module")
def policy_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("policy-models")


@pytest.fixture(scope="module")
def policy_base(policy_models) -> Path:
    """A small Llama (hidden 32, 2 layers) saved by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = policy_models / "base"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy_lora(policy_models, policy_base) -> Path:
    """A LoRA adapter of ``policy_base`` saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(policy_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    path = policy_models / "lora"
    model.save_pretrained(path)
    return path


FP = "3f2a9c1d" + "0" * 56


def manifest(*, license=None, fingerprint=FP, metrics=None, description=None) -> ah.Manifest:
    return ah.Manifest(name="acme/x", version="1.0.0", method={"type": "lora"},
                       base=ah.BaseRef(name="base", fingerprint=fingerprint), files=(), requirements={},
                       license=license, metrics=dict(metrics or {}), description=description)


# ---------------------------------------------------------------- no policy


def test_no_policy_accepts_everything(monkeypatch):
    bare = manifest(fingerprint=None)
    assert validate_publish(manifest=bare, package=None) is None
    monkeypatch.setenv(ENV, "")
    assert validate_publish(manifest=bare, package=None) is None


def test_empty_policy_file_accepts_everything(write_policy):
    write_policy("")
    assert validate_publish(manifest=manifest(fingerprint=None), package=None) is None


# ---------------------------------------------------------------- each rule


def test_allowed_licenses(write_policy):
    write_policy('allowed_licenses = ["apache-2.0"]\n')
    assert validate_publish(manifest=manifest(license="apache-2.0"), package=None) is None
    assert validate_publish(manifest=manifest(license="Apache-2.0"), package=None) is None
    assert (validate_publish(manifest=manifest(license="mit"), package=None)
            == "rule allowed_licenses: license 'mit' is not in [apache-2.0]")
    assert validate_publish(manifest=manifest(), package=None).startswith(
        "rule allowed_licenses: no license given")


def test_allowed_base_fingerprints(write_policy):
    write_policy(f'allowed_base_fingerprints = ["{FP}"]\n')
    assert validate_publish(manifest=manifest(), package=None) is None
    write_policy('allowed_base_fingerprints = ["ffffffff", "3F2A9C1D"]\n')  # a prefix, any case
    assert validate_publish(manifest=manifest(), package=None) is None
    write_policy('allowed_base_fingerprints = ["sha256:3f2a9c1d00"]\n')
    assert validate_publish(manifest=manifest(), package=None) is None

    write_policy('allowed_base_fingerprints = ["ffffffff"]\n')
    assert (validate_publish(manifest=manifest(), package=None)
            == "rule allowed_base_fingerprints: base 3f2a9c1d0000 is not in [ffffffff]")
    assert "not pinned to a base" in validate_publish(manifest=manifest(fingerprint=None), package=None)


def test_required_metrics(write_policy):
    write_policy('required_metrics = ["accuracy", "f1"]\n')
    assert validate_publish(manifest=manifest(metrics={"accuracy": 0.9, "f1": 0.8}), package=None) is None
    assert (validate_publish(manifest=manifest(metrics={"accuracy": 0.9}), package=None)
            == "rule required_metrics: metric 'f1' missing (pass --metric NAME=VALUE)")
    assert "metric 'accuracy', 'f1' missing" in validate_publish(manifest=manifest(), package=None)


def test_require_description(write_policy):
    write_policy("require_description = true\n")
    assert validate_publish(manifest=manifest(description="sentiment on reviews"), package=None) is None
    for empty in (None, "", "   "):
        assert (validate_publish(manifest=manifest(description=empty), package=None)
                == "rule require_description: a description is required (pass --description)")
    write_policy("require_description = false\n")
    assert validate_publish(manifest=manifest(), package=None) is None


def test_first_failed_rule_is_named_and_the_rest_counted(write_policy):
    write_policy('allowed_licenses = ["apache-2.0"]\nrequired_metrics = ["accuracy"]\n'
                 "require_description = true\n")
    reason = validate_publish(manifest=manifest(license="mit"), package=None)
    assert reason == ("rule allowed_licenses: license 'mit' is not in [apache-2.0] "
                      "(and 2 more rules failed)")
    assert len(check(load_policy(os.environ[ENV]), manifest(license="mit"))) == 3


def test_check_with_a_policy_object():
    policy = Policy(allowed_licenses=("mit",), required_metrics=())
    assert check(policy, manifest(license="MIT")) == []


# ---------------------------------------------------------------- malformed files


@pytest.mark.parametrize("text, detail", [
    ('allowed_licenses = ["apache-2.0"\n', "is not valid TOML"),
    ('allowed_license = ["apache-2.0"]\n', "unknown key 'allowed_license'"),
    ('allowed_licenses = "apache-2.0"\n', "allowed_licenses must be a list of non-empty strings"),
    ("required_metrics = [1]\n", "required_metrics must be a list of non-empty strings"),
    ('require_description = "yes"\n', "require_description must be true or false"),
    ('allowed_base_fingerprints = ["3f2a9c1"]\n', "prefix of at least 8 hex digits"),
    ('allowed_base_fingerprints = ["not-hex-at-all"]\n', "allowed_base_fingerprints[0]"),
])
def test_malformed_policy_rejects_naming_the_file(write_policy, text, detail):
    path = write_policy(text)
    reason = validate_publish(manifest=manifest(license="apache-2.0"), package=None)
    assert reason is not None and str(path) in reason and detail in reason, reason
    assert ENV in reason and "\n" not in reason


def test_missing_policy_file_rejects_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "nowhere" / "policy.toml"
    monkeypatch.setenv(ENV, str(path))
    reason = validate_publish(manifest=manifest(), package=None)
    assert reason == (f"policy file {path} cannot be read: No such file or directory "
                      f"(from {ENV}); fix the file or unset {ENV}")


# ---------------------------------------------------------------- through the registry


def test_registry_publish_obeys_the_policy(tmp_path, write_policy, policy_plugin, policy_base, policy_lora):
    fp = ah.fingerprint(policy_base).digest
    write_policy(f'allowed_licenses = ["apache-2.0"]\nallowed_base_fingerprints = ["{fp[:8]}"]\n'
                 'required_metrics = ["accuracy"]\n')
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        with pytest.raises(ah.AdapterHubError, match=r"publish rejected by policy 'adapterhub-policy': "
                                                     r"rule allowed_licenses: license 'mit' is not in"):
            reg.publish(policy_lora, name="acme/x", version="1.0.0", base=policy_base, license="mit",
                        metrics={"accuracy": 0.9})
        with pytest.raises(ah.AdapterHubError, match="rule allowed_base_fingerprints: the adapter is not pinned"):
            reg.publish(policy_lora, name="acme/x", version="1.0.0", license="apache-2.0",
                        metrics={"accuracy": 0.9})
        with pytest.raises(ah.AdapterHubError, match="rule required_metrics: metric 'accuracy' missing"):
            reg.publish(policy_lora, name="acme/x", version="1.0.0", base=policy_base, license="apache-2.0")
        assert reg.list() == []
        res = reg.publish(policy_lora, name="acme/x", version="1.0.0", base=policy_base,
                          license="apache-2.0", metrics={"accuracy": 0.9})
        assert res.created
    finally:
        reg.close()


# ---------------------------------------------------------------- through the CLI


def _installed() -> bool:
    try:
        distribution("adapterhub-policy")
    except PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="the CLI finds the plugin by its entry point: "
                    "pip install -e plugins/adapterhub-policy (CI does)")
def test_cli_rejection_is_one_line_naming_the_rule(tmp_path, write_policy, policy_lora):
    adapterhub = str(Path(sys.executable).with_name("adapterhub"))
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERHUB_LOAD_PLUGINS"}

    def publish(*extra: str, version: str = "1.0.0") -> subprocess.CompletedProcess:
        return subprocess.run([adapterhub, "--registry", f"sqlite:///{tmp_path / 'r.db'}", "publish",
                               str(policy_lora), "--name", "acme/x", "--version", version, *extra],
                              capture_output=True, text=True, env={**env, ENV: os.environ[ENV]}, timeout=300)

    write_policy('allowed_licenses = ["apache-2.0"]\n')
    bad = publish("--license", "mit")
    assert bad.returncode == 1
    assert bad.stderr == ("error: publish rejected by policy 'adapterhub-policy': "
                          "rule allowed_licenses: license 'mit' is not in [apache-2.0]\n")
    ok = publish("--license", "apache-2.0")
    assert ok.returncode == 0, ok.stderr

    path = write_policy("allowed_licenses = [apache-2.0]\n")  # unquoted: not TOML
    broken = publish("--license", "apache-2.0", version="1.0.1")
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1
    assert broken.stderr.startswith(f"error: publish rejected by policy 'adapterhub-policy': policy file {path} "
                                    "is not valid TOML")

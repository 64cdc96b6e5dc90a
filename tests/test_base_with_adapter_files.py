"""A base directory that also holds an adapter (``adapter_config.json`` beside
``config.json``): ``from_pretrained`` of it applies that adapter while loading, so the model
is not the weights the directory's tensors are. Its fingerprint is refused in one line
(``ah.fingerprint``, ``adapterhub fingerprint``, ``resolve --base``, ``publish --base``), so no
adapter is called exact on it; a Deployment, which checks what loaded, keeps its own
handling (refused under strict, otherwise a warning and the loaded model's fingerprint).

Before: the directory got the bare base's fingerprint, and an adapter pinned to the base was
called exact on it by resolve, though the model that loads there computes other logits."""

from __future__ import annotations

import shutil

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.base_loading import LoadedBaseError
from adapterhub_sdk.layouts import AmbiguousCheckpointError

from conftest import run_cli


@pytest.fixture
def mixed_dir(tmp_path, base_dir, lora_dir_b):
    d = tmp_path / "base-with-adapter"
    shutil.copytree(base_dir, d)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(lora_dir_b / name, d / name)
    return d


def test_the_fingerprint_of_a_base_holding_an_adapter_is_refused(mixed_dir, base_dir, lora_dir, tmp_path):
    with pytest.raises(AmbiguousCheckpointError, match="holds an adapter"):
        ah.fingerprint(mixed_dir)
    assert ah.fingerprint(mixed_dir, as_stored=True).digest == ah.fingerprint(base_dir).digest
    url = f"sqlite:///{tmp_path / 'r.db'}"
    common = ["--registry", url, "--blobs", str(tmp_path / "blobs")]
    run_cli(*common, "publish", str(lora_dir), "--name", "acme/a", "--version", "1.0.0", "--base", str(base_dir),
            check=True)
    for args in (["fingerprint", str(mixed_dir)], ["resolve", "--base", str(mixed_dir)],
                 ["publish", str(lora_dir), "--name", "acme/a", "--version", "2.0.0", "--base", str(mixed_dir)]):
        r = run_cli(*common, *args)
        assert r.returncode != 0, (args, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert "holds an adapter (adapter_config.json)" in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert "exact" not in r.stdout


def test_a_strict_deployment_still_refuses_it(mixed_dir):
    with pytest.raises(LoadedBaseError, match="holds adapter files"):
        ah.Deployment(str(mixed_dir), strict=True)

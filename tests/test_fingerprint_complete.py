"""A checkpoint that lacks a tensor its architecture has (one layer's down_proj lost) is
refused by the fingerprint: from_pretrained would initialise that tensor at random (two loads
differ), so no adapter can be exact on it; ``resolve --base`` and ``publish --base`` refuse it
in one line. Models whose layers differ by design (a Qwen2-MoE with dense and sparse layers
alternating, a DeepSeek-style dense first layer) are not refused: the architecture, built on
the meta device, decides.

Before: the directory was fingerprinted as stored, an adapter pinned to it was called exact,
and what loaded there changed from one load to the next."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub_sdk as ah
from adapterhub_sdk.errors import WeightsNotFoundError

from conftest import run_cli


def test_a_tensor_lost_from_one_layer_is_refused(tmp_path, base_dir):
    d = tmp_path / "damaged"
    shutil.copytree(base_dir, d)
    weights = load_file(str(d / "model.safetensors"))
    lost = next(n for n in sorted(weights) if ".layers.1." in n and n.endswith("down_proj.weight"))
    del weights[lost]
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsNotFoundError, match=rf"lacks 1 tensor\(s\) of its architecture .*{lost}"):
        ah.fingerprint(d)
    r = run_cli("resolve", "--base", str(d))
    assert r.returncode != 0 and lost in r.stderr.splitlines()[0] and "Traceback" not in r.stderr
    ah.fingerprint(base_dir)  # the intact base still fingerprints


def _save(model, out):
    model.save_pretrained(out)
    return out


def test_layers_that_differ_by_design_are_not_refused(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         shared_expert_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, num_experts=2, num_experts_per_tok=1, decoder_sparse_step=2,
                         mlp_only_layers=[0])
    d = _save(AutoModelForCausalLM.from_config(cfg), tmp_path / "moe")
    from adapterhub_sdk.fingerprint import _holes

    shapes = {n: tuple(t.shape) for n, t in load_file(str(d / "model.safetensors")).items()}
    assert _holes(shapes)  # its layers differ: the architecture was asked, and it has all it needs
    assert ah.fingerprint(d).n_tensors == len(shapes)

"""Convolution adapters published without a base (review of issue 8): PEFT's LoHa, OFT,
BOFT and AdaLoRA layers see a kernel flattened, so the adapter alone says ``[out, in_flat]``
of a ``[out, in/groups, k...]`` kernel. Resolve against the base it was trained on must say
``structural`` (it was refused as incompatible, and a plain resolve did not list it: the
probe ``kernel.weight:6x36`` was no key of the base); a base whose kernel differs (other
channels, same output size) is still refused naming the kernel.

The rows and their tiny bases come from tests/test_method_table.py (real PEFT adapters,
every trainable tensor perturbed); real SQLite registry; the CLI in a subprocess."""

from __future__ import annotations

import json
import warnings

import pytest
import test_method_table
import torch
from test_method_table import (
    CONV1,
    CONV2,
    ROWS,
    Base,
    ConvNet,
    Row,
    _load_base,
    _out,
    _save_base,
    _x,
    cfg,
)

import adapterhub_sdk as ah

from conftest import run_cli

FLATTENED = ["loha-conv1d", "loha-conv2d", "loha-conv1d-grouped", "oft-conv2d", "boft-conv2d", "adalora-conv2d"]
ROW = {r.id: r for r in ROWS}
built = test_method_table.built  # the fixture: each row's base and adapter, built once per module


def _same_out_other_in(row: Row, path):
    """A base whose kernel has the trained one's output channels and kernel size but other
    input channels: the flattened size differs, so the adapter does not fit."""
    dim = 1 if row.base is CONV1 else 2
    groups = 2 if "grouped" in row.id else 1
    torch.manual_seed(2)
    return _save_base(ConvNet(dim, cin=8, groups=groups).eval(), path, False)


@pytest.mark.parametrize("row_id", FLATTENED)
def test_an_unpinned_conv_adapter_resolves_structural_on_its_base_and_is_refused_elsewhere(
        row_id, built, tmp_path):
    row = ROW[row_id]
    b = built(row)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ah.UnpinnedPublishWarning)
            reg.publish(b.adapter, name="acme/conv", version="1.0.0")  # no base
        [m] = reg.resolve(b.base)  # listed by a plain resolve
        assert (m.name, m.verdict) == ("acme/conv", "structural"), (m.verdict, m.reasons)

        for other in (b.other, _same_out_other_in(row, tmp_path / "narrow")):
            assert reg.resolve(other) == []
            [bad] = reg.resolve(other, include_incompatible=True)
            assert bad.verdict == "incompatible" and any("kernel" in r for r in bad.reasons), bad.reasons

        pulled = reg.pull("acme/conv@1.0.0", tmp_path / "pulled")
    finally:
        reg.close()
    # what it resolved to loads and computes what PEFT computed when it was trained
    model = ah.load_adapter(_load_base(row.base, b.base), pulled)
    assert torch.equal(_out(model, row.base.input()), b.reference)


def test_the_cli_resolves_an_unpinned_loha_conv2d_structural(built, tmp_path):
    row = ROW["loha-conv2d"]
    assert row.base is CONV2
    b = built(row)
    args = ("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", str(tmp_path / "blobs"))
    run_cli(*args, "publish", str(b.adapter), "--name", "acme/conv", "--version", "1.0.0", check=True)
    proc = run_cli(*args, "resolve", "--base", str(b.base), "--json", check=True)
    assert [(m["name"], m["verdict"]) for m in json.loads(proc.stdout)] == [("acme/conv", "structural")]
    proc = run_cli(*args, "resolve", "--base", str(b.other), "--json", check=True)
    assert json.loads(proc.stdout) == []


# a kernel of (3, 1): PEFT's Tucker core is (r, r, 3, 1), as it is for a Conv1d of kernel 3
CONV2_3X1 = Base(lambda: ConvNet(2, k=(3, 1)), lambda: ConvNet(2, cin=5, cout=8, k=(3, 1)), lambda: _x(2, 4, 5, 5))
KERNEL_ROWS = [
    Row("loha-conv2d-effective-3x1", CONV2_3X1, cfg("LoHaConfig", r=2, alpha=4, target_modules=["kernel"],
                                                    use_effective_conv2d=True), "loha", "kernel"),
    # LoRA's lora_A is [r, in, k...]: the kernel's own shape, recorded as it is (a guard)
    Row("lora-conv2d", CONV2, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["kernel"]), "lora", "kernel"),
]


def _square_kernel(path):
    """The row's channels with a kernel of (3, 3), or (1, 9): the same channels, another kernel."""
    torch.manual_seed(2)
    return _save_base(ConvNet(2, k=3).eval(), path, False)


def _wide_kernel(path):
    torch.manual_seed(2)
    return _save_base(ConvNet(2, k=(1, 9)).eval(), path, False)


@pytest.mark.parametrize("row", KERNEL_ROWS, ids=[r.id for r in KERNEL_ROWS])
def test_an_unpinned_conv_adapter_with_its_kernel_in_its_files_is_refused_on_another_kernel(row, built, tmp_path):
    """The Tucker core of LoHa's ``use_effective_conv2d`` gives the kernel: (3, 1) is a
    Conv2d's (3, 1) or a Conv1d's 3, and the set records both; it recorded existence only
    (``structural`` on any base with a ``kernel.weight``). (LoKr's core is read the same way;
    the installed PEFT fails computing a LoKr (3, 1) kernel's delta, so it has no row.)"""
    b = built(row)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ah.UnpinnedPublishWarning)
            reg.publish(b.adapter, name="acme/conv", version="1.0.0")  # no base
        [m] = reg.resolve(b.base)
        assert (m.name, m.verdict) == ("acme/conv", "structural"), (m.verdict, m.reasons)
        square = [_square_kernel(tmp_path / "square")] if row.base is CONV2_3X1 else []  # CONV2's is (3, 3)
        for other in (b.other, _wide_kernel(tmp_path / "wide"), *square):
            assert reg.resolve(other) == []
            [bad] = reg.resolve(other, include_incompatible=True)
            assert bad.verdict == "incompatible", bad
            assert any(r.startswith("shape: kernel.weight is ") for r in bad.reasons), bad.reasons
        pulled = reg.pull("acme/conv@1.0.0", tmp_path / "pulled")
    finally:
        reg.close()
    model = ah.load_adapter(_load_base(row.base, b.base), pulled)
    assert torch.equal(_out(model, row.base.input()), b.reference)

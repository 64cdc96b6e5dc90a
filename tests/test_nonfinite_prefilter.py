"""The NaN/Inf scan's stdlib prefilter: a file whose elements' top bytes cannot encode NaN or
Inf is proven finite without numpy (pull and publish of a clean adapter never import it),
and one that might is counted exactly, across the prefilter's slice boundaries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapterhub_sdk import adapter_files
from adapterhub_sdk.adapter_files import nonfinite_tensors


def test_a_clean_file_is_scanned_without_importing_numpy(tmp_path):
    rng = np.random.default_rng(0)
    save_file({"a": rng.standard_normal((64, 64)).astype(np.float32),
               "b": rng.standard_normal(100).astype(np.float16),
               "big": np.full(8, 3.0e38, np.float32)},  # top byte 0x7F: a candidate, still finite
              str(tmp_path / "clean.safetensors"))
    save_file({"a": np.ones(16, np.float32)}, str(tmp_path / "ones.safetensors"))
    code = ("import sys; from adapterhub_sdk.adapter_files import nonfinite_tensors as n; "
            f"assert n({str(tmp_path / 'ones.safetensors')!r}) == []; print('numpy' in sys.modules); "
            f"assert n({str(tmp_path / 'clean.safetensors')!r}) == []")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_nonfinite_values_past_a_prefilter_slice_boundary_are_counted(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(adapter_files, "_PREFILTER_STEP", 64)  # many slices per tensor
    monkeypatch.setattr(adapter_files, "_PREFILTER", True)  # this process has numpy: force the prefilter
    clean = np.linspace(-2, 2, 1000).astype(dtype)
    late = clean.copy()
    late[[777, 999]] = [np.nan, -np.inf]
    save_file({"clean": clean, "late": late}, str(tmp_path / "w.safetensors"))
    found = nonfinite_tensors(tmp_path / "w.safetensors")
    assert [(f.tensor, f.count) for f in found] == [("late", 2)]

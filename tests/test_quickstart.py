"""The README's first command, `adapterhub quickstart`, end to end in a subprocess: it
trains two LoRA adapters (loss falling), publishes, resolves, pulls, loads with PEFT, runs
a mixed batch and reports disk use. Its speed is not asserted here (benchmarks only)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_cli


def test_quickstart_runs_end_to_end(tmp_path):
    """Run as the README runs it (no --workdir: a temp dir, here under TMPDIR=tmp_path).
    Its output is its own: nothing from transformers/huggingface_hub/tqdm on either stream
    (progress bars, log lines, FutureWarnings); the base-only row is labelled and explained;
    it says where its files went and how to keep them."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = run_cli("quickstart",
                   env={"ADAPTERHUB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for step in range(1, 8):
        assert f"[{step}/7]" in out, out
    for task in ("successor", "predecessor"):  # each trained for real: its loss falls
        losses = [float(x) for x in re.findall(rf"{task}\s+step\s+\d+/\d+\s+loss ([0-9.]+)", out)]
        assert len(losses) >= 2 and losses[-1] < losses[0] / 2, (task, losses)
    assert "structural" in out and "incompatible" in out
    assert re.search(r"2 adapters in the registry\s+[0-9.]+ KB", out)
    assert re.search(r"1 copy of the base\s+[0-9.]+ MB", out)

    assert proc.stderr == "", proc.stderr[-3000:]  # no third-party progress bars or warnings
    for noise in ("it/s]", "%|", "Warning", "Loading weights", "Writing model shards", "__base__"):
        assert noise not in out, noise
    base_row = re.search(r"^\s+3>\S\s+adapter none \(base only\)\s+untrained: no right answer$", out, re.M)
    assert base_row, out
    assert "Row 3 has no adapter" in out
    assert not list(scratch.glob("adapterhub-quickstart-*"))  # the temp dir is gone, and it says so and how to keep it
    assert "now deleted" in out and "    adapterhub quickstart --workdir ./quickstart" in out


def test_quickstart_with_a_workdir_keeps_its_files(tmp_path):
    work = tmp_path / "work"
    proc = run_cli("quickstart", "--workdir", str(work), "--steps", "10",
                   env={"ADAPTERHUB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"are in {work} (kept)" in " ".join(proc.stdout.split())
    assert (Path(work) / "pulled-successor" / "adapter_model.safetensors").is_file()

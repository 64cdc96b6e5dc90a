"""The README's first command, `adapterhub quickstart`, end to end in a subprocess: it
trains two LoRA adapters (loss falling), publishes, resolves, pulls, loads with PEFT, runs
a mixed batch and reports disk use. Its speed is not asserted here (benchmarks only)."""

from __future__ import annotations

import re

from conftest import run_cli


def test_quickstart_runs_end_to_end(tmp_path):
    proc = run_cli("quickstart", "--workdir", str(tmp_path / "work"),
                   env={"ADAPTERHUB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for step in range(1, 8):
        assert f"[{step}/7]" in out, out
    for task in ("successor", "predecessor"):  # each trained for real: its loss falls
        losses = [float(x) for x in re.findall(rf"{task}\s+step\s+\d+/\d+\s+loss ([0-9.]+)", out)]
        assert len(losses) >= 2 and losses[-1] < losses[0] / 2, (task, losses)
    assert "structural" in out and "incompatible" in out
    assert "Traceback" not in proc.stderr
    assert re.search(r"2 adapters in the registry\s+[0-9.]+ KB", out)
    assert re.search(r"1 copy of the base\s+[0-9.]+ MB", out)

"""The README's 5-minute tour runs as written: its bash block, then its Python block (and
the other way round), on a fresh ADAPTERHUB_HOME, in a directory holding what the README
says it expects there.

The inputs are real: a tiny Llama built from a config with a real tokenizer (a
``tokenizers`` WordLevel model saved by ``save_pretrained``) at ``./llama-base``, a Llama of
another width at ``./other-model``, and two adapters saved by PEFT at ``./my-lora`` and
``./my-summarizer``. ``./.venv`` links to this test's virtualenv, so the tour's
``export PATH=$PWD/.venv/bin:$PATH`` finds the installed ``adapterhub`` as it would in a clone.

Each tour line runs in ``bash`` as a separate process, except:

* ``adapterhub serve``: started in the background (the README says it runs until Ctrl-C);
  the lines after it run while it serves; it is stopped at the end. On port 8000 as written,
  unless that port is taken on this machine: then on a free one, in the serve and curl lines.
* ``adapterhub push``: the local Hub test server (olah, tests/hubserver.py) is read-only, so
  the push line runs in-process through the CLI (click's CliRunner) against the Hub write
  endpoints' test double of tests/test_hub.py (FakeHub); what it committed is then mirrored
  into olah under the same repo id, and the ``pull hf://...`` line runs as a real process
  against olah.

The install and test commands ("Two commands") are not run here; .ci/test is checked for
the flag that makes pytest say why tests were skipped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import repo_dir
from test_hub import FakeHub, fake_hub_installed, mirror_to_olah

from conftest import save_base, save_lora

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
WORDS = ["I", "loved", "it", "hated", "the", "film", "was", "long", "but", "good", "bad", "boring",
         "Summarize:", "...", "a", "and", "not", "very", "movie", "story"]


def tour_blocks() -> tuple[str, str]:
    """The bash and Python blocks of the README's "A 5-minute tour" section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## A 5-minute tour\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README has no '## A 5-minute tour' section"
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", section.group(1), re.M | re.S)
    bash = [body for lang, body in blocks if lang == "bash"]
    python = [body for lang, body in blocks if lang == "python"]
    assert len(bash) == 1 and len(python) == 1, blocks
    return bash[0], python[0]


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comment-only lines dropped."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    assert not pending, "a continuation line ends the block"
    return out


def _save_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def _make_inputs(work: Path) -> None:
    from transformers import AutoConfig

    base = work / "llama-base"
    tok = _save_tokenizer(work / "tokenizer")
    save_base(base, vocab=len(tok), seed=0)
    cfg = AutoConfig.from_pretrained(base)
    cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    cfg.save_pretrained(base)
    tok.save_pretrained(base)
    save_base(work / "other-model", vocab=len(tok), hidden=48, seed=0)
    save_lora(base, work / "my-lora", seed=1)
    save_lora(base, work / "my-summarizer", seed=2, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_served(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"serve did not come up:\n{log.read_text()[-3000:]}")


def _push_in_process(line: str, fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> str:
    from adapterhub_sdk.cli import cli

    args = shlex.split(line, comments=True)
    assert args[:2] == ["adapterhub", "push"], args
    with monkeypatch.context() as mp, fake_hub_installed(fake, mp):
        result = CliRunner().invoke(cli, args[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return args[args.index("--to") + 1].removeprefix("hf://")


def _run_tour(tour: str, work: Path, env: dict[str, str], hub_env, monkeypatch, log: Path) -> dict[str, str]:
    """Every tour line, in order (see the module docstring); each line's stdout."""
    port, exports = 8000, []
    served: subprocess.Popen | None = None
    outputs: dict[str, str] = {}
    fake = FakeHub()
    try:
        for line in commands(tour):
            if line.startswith("export "):
                exports.append(line)
            if line.startswith("adapterhub push "):
                repo = _push_in_process(line, fake, monkeypatch)
                shutil.rmtree(repo_dir(hub_env.mirrors, repo), ignore_errors=True)  # an earlier test's push
                mirror_to_olah(hub_env, fake, repo, repo_id=repo)
                continue
            if port != 8000:
                line = line.replace("localhost:8000", f"localhost:{port}")
            script = "\n".join(["set -eo pipefail", *exports, line])
            if line.startswith("adapterhub serve "):
                if not _port_free(8000):  # taken on this machine (not by the README): serve elsewhere
                    port = _free_port()
                    script += f" --port {port}"
                with log.open("w") as fh:
                    served = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=fh,
                                              stderr=subprocess.STDOUT, start_new_session=True)
                _wait_served(served, port, log)
                continue
            proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            outputs[line.replace(f"localhost:{port}", "localhost:8000")] = proc.stdout
    finally:
        if served is not None:
            os.killpg(served.pid, 15)
            served.wait(timeout=30)
    return outputs


def _check_tour(outputs: dict[str, str], work: Path) -> None:
    def out(prefix: str) -> str:
        return next(v for k, v in outputs.items() if k.startswith(prefix))

    assert re.search(r"[0-9a-f]{64}", out("adapterhub fingerprint ./llama-base"))
    assert "exact" in out("adapterhub resolve --base ./llama-base")
    other = json.loads(out("adapterhub resolve --base ./other-model"))
    assert other and all(h["verdict"] == "incompatible" and h["reasons"] for h in other), other
    assert (work / "sentiment" / "adapter_model.safetensors").is_file()
    assert any((work / "vllm-adapters").iterdir())
    assert "acme/sentiment" in out("ADAPTERHUB_HOME=./teammate adapterhub pull hf://")
    assert any((work / "teammate").iterdir())
    models = json.loads(out("curl -s localhost:8000/v1/models"))
    assert {"acme/sentiment", "acme/summarize"} <= {m["id"] for m in models["data"]}, models
    completion = json.loads(out("curl -s localhost:8000/v1/completions"))
    assert isinstance(completion["choices"][0]["text"], str), completion


def _run_python(block: str, work: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{64} [0-9a-f]{64}", lines[0]), lines
    assert "acme/sentiment 1.0.0 exact ()" in lines, lines[1:-1]
    texts = ast.literal_eval(lines[-1])  # the block prints a list of two strings
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts), texts
    assert (work / "sentiment-py" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("python_first", [False, True], ids=["tour-then-python", "python-then-tour"])
def test_readme_tour_and_python_block_run_as_written(tmp_path, hub_env, monkeypatch, python_first):
    """The README's order (the tour, then the Python block), and the other one: each block
    runs after the other has filled the registry (it failed either way before)."""
    tour, python_block = tour_blocks()
    work = tmp_path / "work"
    work.mkdir()
    _make_inputs(work)
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if python_first:
        _run_python(python_block, work, env)
    _check_tour(_run_tour(tour, work, env, hub_env, monkeypatch, tmp_path / "serve.log"), work)
    if not python_first:
        _run_python(python_block, work, env)


def test_tour_commands_are_what_the_test_runs():
    """The parser keeps every command of the tour (continuations joined) and drops comments,
    so no README line escapes the tour test."""
    tour, _ = tour_blocks()
    cmds = commands(tour)
    assert cmds[0] == "export PATH=$PWD/.venv/bin:$PATH"
    assert any(c.startswith("adapterhub publish ./my-lora ") and "--license apache-2.0" in c for c in cmds)
    assert sum(c.startswith("adapterhub serve ") for c in cmds) == 1
    assert sum(c.startswith("adapterhub push ") for c in cmds) == 1
    assert not any(c.startswith("#") for c in cmds)
    n_lines = sum(1 for line in tour.splitlines() if line.strip() and not line.lstrip().startswith("#")
                  and not line.startswith("    "))
    assert len(cmds) == n_lines


def test_test_command_says_why_tests_were_skipped():
    """`bash .ci/test` runs pytest with -rs, so every skip prints its reason."""
    ci = (ROOT / ".ci" / "test").read_text()
    pytest_line = next(line for line in ci.splitlines() if "-m pytest" in line)
    assert re.search(r"\s-r\w*s", pytest_line), pytest_line

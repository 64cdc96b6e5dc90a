"""The command line's first five minutes: help where it is looked for, examples that parse,
"did you mean" for adapter names, one exit code per kind of mistake (usage 2, failure 1),
and shell completion. The installed entry point in a subprocess, except the walk of the
click tree, which reads the commands' declarations."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.cli import cli
from adapterhub_sdk.errors import DeviceError, NotFoundError

from conftest import run_cli

USAGE, FAILURE = 2, 1


def _walk(group: click.Group, path: str = "adapterhub"):
    for name, cmd in group.commands.items():
        yield f"{path} {name}", cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, f"{path} {name}")


def _examples(cmd: click.Command) -> list[str]:
    epilog = cmd.epilog or ""
    head, sep, body = epilog.partition("Examples:\n")
    return [line.strip() for line in body.splitlines() if line.strip()] if sep else []


def _unknown_options(cmd: click.Command, words: list[str]) -> list[str]:
    """The options in ``words`` (an example, after the command's name) that the command
    (or the subcommand the words name) does not declare."""
    while isinstance(cmd, click.Group) and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    known = {"-h", "--help"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    return [w for w in words if w.startswith("-") and w.partition("=")[0] not in known]


def one_error_line(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("args", [(), ("db",)])
def test_a_group_without_a_command_prints_its_formatted_help(args):
    """Usage, the description, options and commands on lines of their own, on stderr with
    exit 2 as hf does (it was all of it squeezed into one 'error:' line)."""
    proc = run_cli(*args)
    assert proc.returncode == USAGE and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"Usage: {' '.join(('adapterhub', *args))} [OPTIONS] COMMAND [ARGS]..."
    assert "Options:" in lines and "Commands:" in lines
    assert not any(line.startswith("error:") for line in lines)
    assert lines[-1].strip().startswith("adapterhub ")  # ends with an example, as --help does
    assert run_cli(*args, "--help").stdout == proc.stderr


def test_every_command_and_option_has_help_and_every_command_ends_with_an_example():
    commands = [("adapterhub", cli), *_walk(cli)]
    assert len(commands) > 15
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"'{path}' has no help"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{param.opts[0]} of '{path}' has no help text"
        examples = _examples(cmd)
        assert examples, f"'{path}' --help has no Examples"
        with click.Context(cli, info_name="adapterhub") as root:
            ctx = root if cmd is cli else click.Context(cmd, info_name=path.split(" ")[-1], parent=root)
            shown = [line.strip() for line in cmd.get_help(ctx).splitlines() if line.strip()]
        assert shown[-len(examples):] == examples, f"'{path}' --help does not end with its examples"
        if cmd is cli:
            continue
        for example in examples:
            assert (example + " ").startswith(path + " "), f"'{example}' is not an example of '{path}'"
            assert _unknown_options(cmd, shlex.split(example)[len(path.split()):]) == [], example


def test_an_example_with_an_unknown_option_would_fail_the_walk():
    assert _unknown_options(cli.commands["list"], ["--tsak", "x", "--json"]) == ["--tsak"]
    assert _unknown_options(cli.commands["db"], ["current", "--jsn"]) == ["--jsn"]


# --------------------------------------------------------------------------- did you mean


@pytest.fixture
def sentiment(lora_dir, base_dir):
    with ah.Registry.open(f"sqlite:///{Path(os.environ['ADAPTERHUB_HOME']) / 'registry.db'}",
                          blobs=Path(os.environ["ADAPTERHUB_HOME"]) / "blobs") as reg:
        for name in ("acme/sentiment", "acme/ner", "other/summarize"):
            reg.publish(lora_dir, name=name, version="1.0.0", base=base_dir)


def test_an_adapter_name_typo_gets_did_you_mean(sentiment, tmp_path):
    one_error_line(run_cli("show", "acme/sentimnet"), FAILURE, "no adapter named 'acme/sentimnet'",
                   "did you mean acme/sentiment?")
    one_error_line(run_cli("pull", "ACME/Sentimnet@^1", "--out", str(tmp_path / "o")), FAILURE,
                   "did you mean acme/sentiment?")
    far = one_error_line(run_cli("show", "zzz/qqqqqq"), FAILURE, "'adapterhub list' shows what is published")
    assert "did you mean" not in far


def test_did_you_mean_reaches_python_callers_on_either_database(registry, lora_dir, base_dir):
    registry.publish(lora_dir, name="acme/sentiment", version="1.0.0", base=base_dir)
    registry.publish(lora_dir, name="acme/summarize-long-documents", version="1.0.0", base=base_dir)
    with pytest.raises(NotFoundError) as err:
        registry.show("acme/sentimnet@1.0.0")
    assert err.value.hint == "did you mean acme/sentiment?"
    with pytest.raises(NotFoundError) as err:
        registry.versions("acme/summarise-long-documents")
    assert err.value.hint == "did you mean acme/summarize-long-documents?"
    with pytest.raises(NotFoundError) as err:  # a typo in the first half: found by the last
        registry.show("acne/sentiment")
    assert err.value.hint == "did you mean acme/sentiment?"


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(("args", "code", "needle"), [
    (("lsit",), USAGE, "did you mean 'list'"),
    (("gc", "--dry-rn"), USAGE, "did you mean '--dry-run'"),
    (("export", "acme/sentiment@1.0.0", "--format", "gguf", "--out", "o"), USAGE, "'gguf' is not one of"),
    (("serve", "--base", ".", "--port", "http"), USAGE, "'http' is not a valid integer"),
    (("publish", "{lora}", "--version", "1.0.0"), USAGE, "missing option '--name'"),
    (("publish", "{missing}", "--name", "acme/x", "--version", "1.0.0"), USAGE, "does not exist"),
    (("publish", "{lora}", "--name", "acme/x", "--version", "1.0.0", "--base", "{missing}"), USAGE,
     "no such file or directory"),
    (("resolve", "--base", "{missing}"), USAGE, "no such file or directory"),
    (("publish", "{lora}", "--name", "acme/bad name", "--version", "1.0.0"), USAGE, "invalid part"),
    (("publish", "{lora}", "--name", "acme/x", "--version", "1.0"), USAGE, "semantic version"),
    (("publish", "{lora}", "--name", "acme/x", "--version", "1.0.0", "--task", "bad task!"), USAGE,
     "task 'bad task!' is not valid"),
    (("publish", "{lora}", "--name", "acme/x", "--version", "1.0.0", "--metric", "acc=nan"), USAGE,
     "finite numbers or text"),
    (("show", "acme/sentiment@^^1"), USAGE, "not a version"),
    (("alias", "acme/sentiment@^1", "prod"), USAGE, "exact version"),
    (("resolve", "--fingerprint", "xyz"), USAGE, "not a fingerprint"),
    (("pull", "acme/sentiment@1.0.0"), USAGE, "--out"),
    (("push", "acme/sentiment@1.0.0", "--to", "acme/sentiment"), USAGE, "not the URL of a remote registry"),
    (("push", "acme/sentiment@1.0.0", "--to", "hf://acme"), USAGE, "not a hub repo id"),
    (("pull", "hf://acme"), USAGE, "not a hub repo id"),
    (("serve", "--base", "{base}", "--device", "nodev", "--port", "0"), USAGE, "'nodev' is not a torch device"),
    (("serve", "--base", "{base}", "--device", "cuda:7", "--port", "0"), FAILURE, "'cuda:7' is not available"),
    (("--registry", "not a url", "list"), USAGE, "is not valid"),
    (("--registry", "mysql://u@localhost/db", "db", "current"), USAGE, "'mysql' is not supported"),
    (("--registry", "postgresql://postgres@127.0.0.1:1/nope", "list"), FAILURE, "database"),
    (("show", "acme/nope"), FAILURE, "no adapter named"),
    (("show", "acme/sentiment@9.9.9"), FAILURE, "no version of acme/sentiment matches"),
    (("publish", "{lora_b}", "--name", "acme/sentiment", "--version", "1.0.0"), FAILURE, "already exists"),
    (("fingerprint", "{empty}"), FAILURE, "no *.safetensors weights"),
])
def test_one_exit_code_per_kind_of_mistake(sentiment, base_dir, lora_dir, lora_dir_b, tmp_path, args, code,
                                           needle):
    (tmp_path / "empty").mkdir()
    where = {"base": str(base_dir), "lora": str(lora_dir), "lora_b": str(lora_dir_b),
             "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}
    one_error_line(run_cli(*(a.format(**where) for a in args)), code, needle)


@pytest.mark.parametrize(("device", "words"), [("nodev", "is not a torch device"), ("cuda:7", "is not available"),
                                               ("cuda:x", "is not a torch device")])
def test_deployment_refuses_a_device_it_cannot_use_before_loading(base_dir, device, words):
    """Was torch's own RuntimeError or AssertionError ('internal error' in the CLI)."""
    with pytest.raises(DeviceError, match=words) as err:
        ah.Deployment(base_dir, device=device)
    assert isinstance(err.value, ValueError) and "cpu, cuda" in err.value.hint


# --------------------------------------------------------------------------- completion


def test_shell_completion_script_and_answers():
    script = run_cli(env={"_ADAPTERHUB_COMPLETE": "bash_source"})
    assert script.returncode == 0, script.stderr
    assert "_adapterhub_completion()" in script.stdout
    assert "complete -o nosort -F _adapterhub_completion adapterhub" in script.stdout
    zsh = run_cli(env={"_ADAPTERHUB_COMPLETE": "zsh_source"})
    assert zsh.returncode == 0 and "#compdef adapterhub" in zsh.stdout
    words = run_cli(env={"_ADAPTERHUB_COMPLETE": "bash_complete", "COMP_WORDS": "adapterhub pu", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["plain,publish", "plain,pull", "plain,push"]


@pytest.mark.parametrize("module", ["adapterhub_sdk", "adapterhub_sdk.cli"])
def test_python_dash_m_runs_the_same_cli(module):
    """``python -m adapterhub_sdk`` and ``python -m adapterhub_sdk.cli`` (cli/__main__.py since
    the package split) are the entry point too: same help, same usage exit code."""
    import subprocess
    import sys

    bare = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
    assert bare.returncode == USAGE and bare.stderr == run_cli().stderr
    assert subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                          timeout=120).stdout.startswith("adapterhub, version ")

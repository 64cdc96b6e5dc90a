"""Docs stay honest: every CLI command and option appears in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub_sdk.cli import cli

DOC = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


def _walk(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        yield full, cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, full + " ")


def test_every_command_and_option_is_documented():
    for name, cmd in _walk(cli):
        assert f"adapterhub {name}" in DOC, f"docs/cli.md lacks 'adapterhub {name}'"
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert opt in DOC, f"docs/cli.md lacks {opt} of 'adapterhub {name}'"
    for param in cli.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in DOC, f"docs/cli.md lacks global option {opt}"


def test_readme_has_the_two_commands():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "adapterhub quickstart" in readme and "bash .ci/test" in readme

"""The ``adapterhub`` command line, a module per noun (as huggingface_hub's ``cli/`` is laid
out): the root group and error handling in ``_app``, the one output helper (text, or the
same result as ``--json``) in ``_output``, and a module for each family of commands. Known
errors print one line (what went wrong and what to do) and exit non-zero; ``--debug`` or
``ADAPTERHUB_DEBUG=1`` shows the traceback."""

from __future__ import annotations

from typing import Any

import click

from ..errors import AdapterHubError
from . import fingerprint, maintenance, plugins, publish, pull, remote, resolve, serve, versions  # noqa: F401
from ._app import EXIT_ERROR, cli, error_line

__all__ = ["EXIT_ERROR", "cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """The ``adapterhub`` entry point: plugin commands added, plugin warnings as one line."""
    import warnings

    from ..adapter_files import AdapterContentWarning
    from ..plugins import PluginWarning, call_hook

    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (PluginWarning, AdapterContentWarning)):  # one line, the command goes on
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        try:
            call_hook("register_commands", cli=cli)
        except AdapterHubError as exc:
            click.echo(f"warning: {error_line(exc)[7:]}", err=True)
        cli.main(args=argv, prog_name="adapterhub")
    finally:
        warnings.showwarning = shown

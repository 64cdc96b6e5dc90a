"""The ``adapterhub`` command line, a module per noun (as huggingface_hub's ``cli/`` is laid
out): the root group and error handling in ``_app``, the one output helper (text, or the
same result as ``--json``) in ``_output``, and a module for each family of commands. Known
errors print one line (what went wrong and what to do) and exit non-zero; ``--debug`` or
``ADAPTERHUB_DEBUG=1`` shows the traceback."""

from __future__ import annotations

from typing import Any

import click

from . import (  # noqa: F401
    fingerprint,
    keys,
    maintenance,
    plugins,
    publish,
    pull,
    remote,
    resolve,
    serve,
    sign,
    versions,
)
from ._app import EXIT_ERROR, cli

__all__ = ["EXIT_ERROR", "cli", "main"]

#: the warnings shown as one line (and their subclasses), named rather than imported: a
#: command that raises none of them does not pay for importing the modules that define them
_ONE_LINE = {("adapterhub_sdk.plugins", "PluginWarning"), ("adapterhub_sdk.adapter_files", "AdapterContentWarning"),
             ("adapterhub_sdk.errors", "UnpinnedPublishWarning"), ("adapterhub_sdk.errors", "ForeignStoreWarning")}


def _one_line(category: type[Warning]) -> bool:
    return any((c.__module__, c.__qualname__) in _ONE_LINE for c in getattr(category, "__mro__", ()))


def _exit_now(code: object) -> None:
    """End the process with ``code`` as ``sys.exit`` would, without the interpreter's teardown:
    freeing every module and object of a command that loaded SQLAlchemy, torch or boto3 costs
    a fresh process about 0.1 s after its work is done. What a normal exit does that matters is
    still done, in the same order: output flushed, ``atexit`` handlers run (logging's flush,
    ``weakref.finalize`` clean-ups such as temporary directories). Returns, for the normal
    exit, where a thread that Python would wait for still runs or the output cannot be flushed."""
    import atexit
    import os
    import sys
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:  # sys.exit("message"): printed on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed pipe: the normal exit reports it as it always has
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """The ``adapterhub`` entry point: plugin and content warnings as one line. Run as the
    command (``argv`` None) it ends the process as soon as the command is done (see
    :func:`_exit_now`); called with ``argv`` from Python it raises SystemExit as click does."""
    import warnings

    from ..errors import cli_wording

    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if _one_line(category):
            click.echo(f"warning: {cli_wording(str(message))}", err=True)  # one line, the command goes on
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        cli.main(args=argv, prog_name="adapterhub")  # plugin commands load when a name is not built in
    except SystemExit as exc:
        if argv is None:
            warnings.showwarning = shown
            _exit_now(exc.code)
        raise
    finally:
        warnings.showwarning = shown

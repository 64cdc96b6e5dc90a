"""The root ``adapterhub`` group: global options, the registry a command opens, and how
errors reach the user (one line on stderr, what went wrong and what to do; ``--debug`` or
``ADAPTERHUB_DEBUG=1`` shows the traceback)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import AdapterHubError

if TYPE_CHECKING:
    from ..registry import Registry

EXIT_ERROR = 1


def truthy(value: str | None) -> bool:
    """An environment flag: unset, empty, 0, false, no and off are off."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off", "")


def error_line(exc: BaseException) -> str:
    msg = str(exc.args[0]) if isinstance(exc, AdapterHubError) and exc.args else str(exc)
    msg = " ".join(msg.split())
    hint = getattr(exc, "hint", None)
    return f"error: {msg}" + (f"; {hint}" if hint else "")


def _click_error_line(exc: click.ClickException) -> str:
    line = "error: " + " ".join(exc.format_message().split()).rstrip(".")
    sub = getattr(exc, "ctx", None)
    return line + (f"; see '{sub.command_path} --help'" if isinstance(exc, click.UsageError) and sub else "")


class _Group(click.Group):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # the root's own options
            click.echo(_click_error_line(exc), err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        debug = truthy(os.environ.get("ADAPTERHUB_DEBUG")) or "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            if debug:
                raise
            click.echo(_click_error_line(exc), err=True)  # one line, like every other error
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            ctx.exit(EXIT_ERROR)
        except (AdapterHubError, OSError, ValueError, TypeError, LookupError) as exc:
            if debug:
                raise
            click.echo(error_line(exc), err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing half-written was kept", err=True)
            ctx.exit(130)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug "
                       "and report the traceback", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", "registry_url", envvar="ADAPTERHUB_REGISTRY_URL", metavar="URL",
              help="Registry database URL (sqlite:///PATH or postgresql://...). "
                   "Default: SQLite under ADAPTERHUB_HOME.")
@click.option("--blobs", envvar="ADAPTERHUB_BLOBS", metavar="DIR",
              help="Blob store directory (default: beside a SQLite registry, else ADAPTERHUB_HOME/blobs).")
@click.option("--debug", is_flag=True, envvar="ADAPTERHUB_DEBUG", help="Show tracebacks.")
@click.version_option(package_name="adapterhub_sdk", prog_name="adapterhub")
@click.pass_context
def cli(ctx: click.Context, registry_url: str | None, blobs: str | None, debug: bool) -> None:
    """Store, find and pull PEFT adapters pinned to a fingerprint of their base model."""
    ctx.ensure_object(dict)
    ctx.obj["registry_url"] = registry_url
    ctx.obj["blobs"] = blobs


def registry(ctx: click.Context) -> Registry:
    """The registry the global options name, opened once per command and closed after it."""
    from ..registry import Registry

    obj = ctx.find_root().obj
    reg = obj.get("registry")
    if reg is None:
        reg = Registry.open(obj.get("registry_url"), blobs=obj.get("blobs"))
        obj["registry"] = reg
        ctx.call_on_close(reg.close)
    return reg


def registry_url(ctx: click.Context) -> str:
    """The registry database URL, for commands that work on the schema rather than a registry."""
    from ..home import default_registry_url

    return ctx.find_root().obj.get("registry_url") or default_registry_url()


def base_arg(base: str | None, fingerprint: str | None) -> Any:
    """``--base`` or ``--fingerprint`` (a hex digest or a prefix of 8+), never both."""
    if base and fingerprint:
        raise click.UsageError("give --base or --fingerprint, not both")
    if fingerprint is not None and not (fingerprint.isascii() and len(fingerprint.strip()) >= 8
                                        and all(c in "0123456789abcdefABCDEF" for c in fingerprint.strip())):
        raise click.BadParameter(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)",
                                 param_hint="--fingerprint")
    return base or fingerprint

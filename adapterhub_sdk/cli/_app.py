"""The root ``adapterhub`` group: global options, the registry a command opens, and how
errors reach the user (one line on stderr, what went wrong and what to do; ``--debug`` or
``ADAPTERHUB_DEBUG=1`` shows the traceback)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import AdapterHubError, InvalidNameError, InvalidVersionError, cli_wording

if TYPE_CHECKING:
    from ..registry import Registry

#: the command ran and failed: not found, refused, corrupt, unreachable, I/O
EXIT_ERROR = 1
#: the command line is wrong whatever the registry holds: unknown command or option, a
#: missing or malformed value (name, version, spec, number, choice), conflicting options,
#: a path argument that does not exist (click numbers its own usage errors 2 as well)
EXIT_USAGE = 2
#: a malformed value that only the SDK can judge (a name, a version or a spec) is a usage error
USAGE_ERRORS = (InvalidNameError, InvalidVersionError)


def truthy(value: str | None) -> bool:
    """An environment flag: unset, empty, 0, false, no and off are off."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off", "")


def error_line(exc: BaseException) -> str:
    msg = str(exc.args[0]) if isinstance(exc, AdapterHubError) and exc.args else str(exc)
    msg = cli_wording(" ".join(msg.split()))  # errors name Python keywords; say the CLI's options
    hint = getattr(exc, "hint", None)
    return f"error: {msg}" + (f"; {cli_wording(hint)}" if hint else "")


def _click_error_line(exc: click.ClickException) -> str:
    line = "error: " + " ".join(exc.format_message().split()).rstrip(".")
    sub = getattr(exc, "ctx", None)
    return line + (f"; see '{sub.command_path} --help'" if isinstance(exc, click.UsageError) and sub else "")


def examples(*commands: str) -> str:
    """A command's epilog: the examples that end its ``--help``."""
    return "\b\nExamples:\n" + "\n".join(f"  {c}" for c in commands)


class HelpfulGroup(click.Group):
    """A group run without a command prints its formatted help, on stderr with exit 2 (a
    usage mistake: what ``hf`` does, and click itself since 8.2; ``git`` exits 1)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), err=True)
            ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)


class _Group(HelpfulGroup):
    group_class = HelpfulGroup  # subgroups (``db``, a plugin's) behave the same
    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        """Let plugins add their commands, once: only when a command name is not built in, or
        the commands are listed (help, completion, a typo's suggestions), so that a built-in
        command starts without loading any plugin."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from ..plugins import call_hook

        try:
            call_hook("register_commands", cli=self)
        except AdapterHubError as exc:
            click.echo(f"warning: {error_line(exc)[7:]}", err=True)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and not self._plugins_loaded:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

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
        except USAGE_ERRORS as exc:
            if debug:
                raise
            click.echo(error_line(exc), err=True)
            ctx.exit(EXIT_USAGE)
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=examples(
    "adapterhub publish ./my-lora --name acme/sentiment --version 1.0.0 --base ./base",
    "adapterhub resolve --base ./base --task sentiment",
    "adapterhub COMMAND --help"))
@click.option("--registry", "registry_url", envvar="ADAPTERHUB_REGISTRY_URL", metavar="URL",
              help="Registry database URL (sqlite:///PATH or postgresql://...). "
                   "Default: SQLite under ADAPTERHUB_HOME.")
@click.option("--blobs", envvar="ADAPTERHUB_BLOBS", metavar="DIR|URL",
              help="Blob store: a directory or s3://BUCKET/PREFIX (default: beside a SQLite registry, "
                   "else ADAPTERHUB_HOME/blobs).")
@click.option("--debug", is_flag=True, envvar="ADAPTERHUB_DEBUG", help="Show tracebacks.")
@click.version_option(package_name="adapterhub_sdk", prog_name="adapterhub")
@click.pass_context
def cli(ctx: click.Context, registry_url: str | None, blobs: str | None, debug: bool) -> None:
    """Store, find and pull PEFT adapters pinned to a fingerprint of their base model."""
    ctx.ensure_object(dict)
    ctx.obj["registry_url"] = registry_url
    ctx.obj["blobs"] = blobs


def _given_url(ctx: click.Context) -> str | None:
    """``--registry`` (or ADAPTERHUB_REGISTRY_URL), checked when a command first needs it:
    text that is no registry URL is a usage error, a database that cannot be reached is not."""
    url = ctx.find_root().obj.get("registry_url")
    if url is not None:
        from ..db import parse_url
        from ..errors import RegistryError

        try:
            parse_url(url)
        except RegistryError as exc:
            raise click.BadParameter(f"{exc.message}; {exc.hint}", ctx=ctx.find_root(),
                                     param_hint="'--registry' / ADAPTERHUB_REGISTRY_URL") from None
    return url


#: the commands that only read the registry: on a SQLite file given by --registry (or
#: ADAPTERHUB_REGISTRY_URL) that does not exist they say so and create nothing
READ_COMMANDS = frozenset({"list", "show", "resolve", "export", "verify", "keys list", "policy show",
                           "db current"})


def creates_registry(ctx: click.Context) -> bool:
    """Whether this command may create the registry it opens: any command on the default home;
    on a URL given, all but the :data:`READ_COMMANDS` (a mistyped path is not a new registry)."""
    names = []
    c: click.Context | None = ctx
    while c is not None and c.parent is not None:
        names.append(c.info_name or "")
        c = c.parent
    return _given_url(ctx) is None or " ".join(reversed(names)) not in READ_COMMANDS


def registry(ctx: click.Context, *, reads_only: bool = False) -> Registry:
    """The registry the global options name, opened once per command and closed after it.
    ``reads_only``: this use of the command only reads (a local pull), so a URL given that
    holds no registry is refused, as for the :data:`READ_COMMANDS`."""
    from ..registry import Registry

    obj = ctx.find_root().obj
    reg = obj.get("registry")
    if reg is None:
        create = creates_registry(ctx) and not (reads_only and _given_url(ctx) is not None)
        reg = Registry.open(_given_url(ctx), blobs=obj.get("blobs"), create=create)
        obj["registry"] = reg
        ctx.call_on_close(reg.close)
    return reg


def catalog_registry(ctx: click.Context, *, reads_only: bool = False) -> Any:
    """For a command that records, pulls or pushes through the registry's catalog statements
    alone (a pull from or a push to an OCI registry): the registry opened with sqlite3
    (:class:`~adapterhub_sdk.sqlite_registry.SqliteRegistry`, no SQLAlchemy import) when the
    global options name an existing SQLite file at the current schema; else :func:`registry`."""
    from ..home import default_registry_url
    from ..sqlite_registry import SqliteRegistry

    obj = ctx.find_root().obj
    reg = obj.get("registry")
    if reg is None:
        # the URL as given: a plain sqlite:///PATH is a valid one, anything else gets the full
        # path (which checks it with SQLAlchemy, the import this path exists to avoid)
        reg = SqliteRegistry.open(obj.get("registry_url") or default_registry_url(), blobs=obj.get("blobs"))
        if reg is None:
            return registry(ctx, reads_only=reads_only)
        obj["registry"] = reg
        ctx.call_on_close(reg.close)
    return reg


def registry_url(ctx: click.Context) -> str:
    """The registry database URL, for commands that work on the schema rather than a registry."""
    from ..home import default_registry_url

    return _given_url(ctx) or default_registry_url()


def _is_fingerprint(text: str) -> bool:
    """A hex digest, or a prefix of 8 or more of one."""
    text = text.strip()
    return text.isascii() and 8 <= len(text) <= 64 and all(c in "0123456789abcdefABCDEF" for c in text)


class BaseParam(click.ParamType):
    """``--base``: a local model directory or file, a remote URL (``hf://ORG/MODEL[@REV]``),
    or a fingerprint the registry has seen. A local path that does not exist is a usage
    error (exit 2), as click's own path arguments are."""

    name = "base"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or "://" in value or os.path.exists(value) or _is_fingerprint(value):
            return value
        self.fail(f"{value}: no such file or directory (give a model directory, hf://ORG/MODEL or a fingerprint)",
                  param, ctx)


BASE = BaseParam()


def base_arg(base: str | None, fingerprint: str | None) -> Any:
    """``--base`` or ``--fingerprint`` (a hex digest or a prefix of 8+), never both."""
    if base and fingerprint:
        raise click.UsageError("give --base or --fingerprint, not both")
    if fingerprint is not None and not _is_fingerprint(fingerprint):
        raise click.BadParameter(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)",
                                 param_hint="--fingerprint")
    return base or fingerprint

"""Running adapters: ``serve`` (an OpenAI-compatible HTTP API over one base) and the
``quickstart`` demo."""

from __future__ import annotations

from typing import Any

import click

from ._app import BASE, cli, examples, registry
from .remote import allow_insecure, hub_model_id, insecure_option, is_remote


def _listen(host: str, port: int) -> Any:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # listening already: a second server on the port fails here, not later
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Text that names no torch device is a usage error (exit 2); one this machine lacks is a
    failure (1), found by Deployment before the base loads."""
    from ..devices import parse_device
    from ..errors import DeviceError

    try:
        parse_device(value)
    except DeviceError as exc:
        raise click.BadParameter(f"{exc.message}; {exc.hint}", ctx, param) from None
    return value


def _split(item: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); ("", SPEC) without a name. NAME has no '@': a spec's own
    '=' (acme/a@>=1,<2, oci://h/r@>=1) is not a separator."""
    name, sep, spec = item.partition("=")
    return (name, spec) if sep and "@" not in name else ("", item)


def _pulled(reg: Any, spec: str, require_signed: str | None) -> str:
    """A remote adapter (``oci://HOST/REPO:TAG``, ``hf://ORG/REPO@SPEC``) pulled, verified, into
    this registry (its digest-addressed blob store), so that serve attaches it like any other;
    the exact version pulled, not whatever a range picks among the local ones."""
    from ..registry.transfer import takes_require_signed
    from .remote import checked_remote

    remote = checked_remote(spec, "'--adapter'")
    signed: dict[str, Any] = {"require_signed": require_signed} if require_signed and takes_require_signed(remote) else {}
    info = remote.pull(reg, spec, None, **signed)  # the signing policy is checked again on attach
    click.echo(f"pulled {spec} as {info.name}@{info.version} (verified, recorded in the local registry)")
    return f"{info.name}@{info.version}"


def _check_blobs(reg: Any, specs: list[str]) -> None:
    """Before the slow model load: each registry spec resolves and its blob store answers for
    it (a missing bucket, a wrong endpoint or no credentials is told now, not after the base
    loaded). Only the first file of each version is asked; attach verifies every byte."""
    for spec in specs:
        info = reg.show(spec)
        files = info.manifest.files
        if files:
            reg.blobs.size(files[0].sha256)


@cli.command(epilog=examples("adapterhub serve --base ./base --adapter acme/sentiment@^1 --port 8000",
                             "adapterhub serve --base ./base --adapter oci://registry.example.com/team/sentiment:1.2.0"))
@click.option("--base", type=BASE, required=True, metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model, loaded once.")
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]SPEC",
              help="Adapter to attach at start, e.g. acme/sentiment@^1 (repeatable); NAME= serves it as NAME. "
                   "An oci:// or hf:// URL is pulled (verified) into the local registry first.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--strict", is_flag=True, help="Refuse adapters trained on other base weights (structural fits).")
@click.option("--scheduler", type=click.Choice(["continuous", "static"]), default="continuous", show_default=True,
              help="continuous: requests join and leave the running batch at every decode step; static: each "
                   "batch runs to its end (the older scheduler).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most requests run together in one batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="static: how long to wait for more requests before running a batch.")
@click.option("--max-prefill-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="continuous: most prompt tokens prefilled between two decode steps (longer prompts in chunks).")
@click.option("--device", default="cpu", show_default=True, callback=_device,
              help="torch device: cpu, cuda, cuda:1, mps.")
@click.option("--api-key", envvar="ADAPTERHUB_API_KEY", metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on the API (all but /health, /metrics, the docs).")
@click.option("--allow-adapter-updates", is_flag=True, envvar="ADAPTERHUB_ALLOW_RUNTIME_LORA_UPDATING",
              help="Serve the adapter load/unload endpoints (off: 403); needs --admin-key.")
@click.option("--admin-key", envvar="ADAPTERHUB_ADMIN_KEY", metavar="KEY",
              help="The bearer key adapter load/unload needs (not the API key).")
@click.option("--metrics-auth", is_flag=True, help="Put /metrics behind the API key too.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=2 * 1024 * 1024, show_default=True,
              help="Largest request body accepted (larger: 413).")
@click.option("--require-signed", "require_signed", metavar="KEY[,KEY]",
              help="Refuse adapters not signed by one of these trusted keys (with ADAPTERHUB_REQUIRE_SIGNED and "
                   "the registry's policy).")
@click.option("--follow-interval", type=click.FloatRange(min=0), default=2.0, show_default=True, metavar="SECONDS",
              help="How often adapters given by alias (NS/NAME@prod) re-read where it points, switching to the "
                   "version it moved to; 0: serve the version it pointed at on start.")
@insecure_option
@click.pass_context
def serve(ctx: click.Context, base: str, adapters: tuple[str, ...], host: str, port: int, strict: bool,
          scheduler: str, max_batch: int, batch_wait_ms: float, max_prefill_tokens: int, device: str,
          api_key: str | None, allow_adapter_updates: bool,
          admin_key: str | None, metrics_auth: bool, max_body_bytes: int, require_signed: str | None,
          follow_interval: float, insecure: bool) -> None:
    """Serve a base and its adapters over an OpenAI-compatible HTTP API (/v1/models,
    /v1/completions, /v1/chat/completions, /v1/adapters, /health, /metrics)."""
    import warnings

    try:
        import uvicorn

        from ..server import create_app
    except ImportError as exc:
        raise click.ClickException(f"'adapterhub serve' needs {exc.name or 'the serve extra'}: "
                                   "pip install 'adapterhub_sdk[serve]'") from None
    from ..deploy import Deployment, StructuralMatchWarning
    from ..plugins import PluginWarning
    from ..server.follow import is_alias, slot_name
    from ..server.security import Access, ServerConfigError

    try:  # before the slow model load
        access = Access(api_key=api_key, admin_key=admin_key, allow_adapter_updates=allow_adapter_updates,
                        metrics_auth=metrics_auth)
    except ServerConfigError as exc:
        raise click.UsageError(f"{exc}; {exc.hint}" if exc.hint else str(exc), ctx) from None
    allow_insecure(insecure)
    sock = _listen(host, port)  # before the slow model load: a taken port fails at once
    try:
        pulled = {}  # remote URLs, pulled before the slow model load
        for item in adapters:
            spec = _split(item)[1]
            if is_remote(spec) and spec not in pulled:
                pulled[spec] = _pulled(registry(ctx), spec, require_signed)
        _check_blobs(registry(ctx), [pulled.get(_split(i)[1], _split(i)[1]) for i in adapters])
        dep = Deployment(base, registry=registry(ctx), device=device, strict=strict, require_signed=require_signed)
        followed: list[tuple[str, str, Any]] = []  # (public name, alias spec, attached under an internal slot)
        for item in adapters:
            name, spec = _split(item)
            spec = pulled.get(spec, spec)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StructuralMatchWarning)
                if follow_interval > 0 and is_alias(spec):  # served under a slot the alias can move
                    public = name or dep.registry.alias_target(spec)[0]
                    attached = dep.attach(spec, name=slot_name(public, 0))
                    if public in dep.adapters:  # a fixed version given before for this name: replaced
                        dep.detach(public)
                    followed = [f for f in followed if f[0] != public]
                    followed.append((public, spec, attached))
                else:
                    attached = dep.attach(spec, name=name or None)
                    for f in [f for f in followed if f[0] == attached.name]:  # an alias before it: replaced
                        followed.remove(f)
                        dep.detach(f[2].name)
            for w in caught:
                if issubclass(w.category, (StructuralMatchWarning, PluginWarning)):  # e.g. a failing after_pull
                    click.echo(f"warning: {w.message}", err=True)
            shown_name = followed[-1][0] if followed and followed[-1][2] is attached else attached.name
            click.echo(f"attached {shown_name} ({attached.ref}, {attached.verdict}"
                       + (f", following {spec} every {follow_interval:g} s" if shown_name != attached.name else "")
                       + ")")
        app = create_app(dep, base_id=hub_model_id(base), max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                         scheduler=scheduler, max_prefill_tokens=max_prefill_tokens,
                         max_body_bytes=max_body_bytes, api_key=access.api_key, admin_key=access.admin_key,
                         allow_adapter_updates=access.allow_adapter_updates, metrics_auth=access.metrics_auth,
                         follow_interval=follow_interval)
        for public, spec, attached in followed:
            app.state.server.follower.adopt(public, spec, attached)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"serving {app.state.server.base_id} with {len(dep.adapters)} adapter(s) on "
                   f"http://{shown}:{bound}/v1")
        _log_switches()
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    finally:
        sock.close()


def _log_switches() -> None:
    """The server's own log lines (alias switches, refusals, detaches) on stderr beside uvicorn's."""
    import logging

    log = logging.getLogger("adapterhub_sdk.server")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@cli.command(epilog=examples("adapterhub quickstart", "adapterhub quickstart --workdir ./demo --steps 50"))
@click.option("--workdir", type=click.Path(path_type=str), help="Where to build the demo (default: a temp dir).")
@click.option("--steps", type=click.IntRange(min=10), default=100, show_default=True, help="Training steps per adapter.")
def quickstart(workdir: str | None, steps: int) -> None:
    """Train two LoRA adapters on a tiny model, publish, resolve, pull and serve them."""
    from ..quickstart import run

    run(workdir=workdir, steps=steps)

"""The ``adapterhub`` command line. Known errors print one line (what went wrong and what
to do) and exit non-zero; ``--debug`` or ``ADAPTERHUB_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .errors import AdapterHubError

EXIT_ERROR = 1


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _error_line(exc: BaseException) -> str:
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
        debug = _truthy(os.environ.get("ADAPTERHUB_DEBUG")) or "--debug" in sys.argv[1:]
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
            click.echo(_error_line(exc), err=True)
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


def _registry(ctx: click.Context):
    from .registry import Registry

    obj = ctx.find_root().obj
    reg = obj.get("registry")
    if reg is None:
        reg = Registry.open(obj.get("registry_url"), blobs=obj.get("blobs"))
        obj["registry"] = reg
        ctx.call_on_close(reg.close)
    return reg


# --------------------------------------------------------------------------- fingerprint


@cli.command("fingerprint")
@click.argument("path", type=click.Path(exists=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--no-cache", is_flag=True, help="Re-hash even if the files are unchanged.")
@click.option("--register", is_flag=True,
              help="Also record the base in the registry, with the sha256 of its weight files, so that "
                   "its Hub id (hf://ORG/MODEL) resolves to this fingerprint without a download.")
@click.pass_context
def fingerprint_cmd(ctx: click.Context, path: str, as_json: bool, no_cache: bool, register: bool) -> None:
    """Fingerprint the weights of a base model (directory or .safetensors file)."""
    from .fingerprint import fingerprint

    fp = fingerprint(path, use_cache=not no_cache)
    if register:
        _registry(ctx).register_base(path, file_digests=True)
    if as_json:
        _emit_json(fp.to_dict())
        return
    click.echo(f"fingerprint     {fp.digest}")
    click.echo(f"arch_signature  {fp.arch_signature}")
    dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(fp.dtypes.items()))
    click.echo(f"tensors         {fp.n_tensors} ({dtypes}), {fp.n_params:,} parameters, "
               f"{_human_size(fp.total_bytes)}")


# --------------------------------------------------------------------------- publish


def _truthy(value: str | None) -> bool:
    """An environment flag: unset, empty, 0, false, no and off are off."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off", "")


def _parse_metrics(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metric")
        try:
            out[key] = float(value) if value.strip() else value
        except ValueError:
            out[key] = value
    return out


@cli.command()
@click.argument("directory", type=click.Path(exists=True, path_type=str))
@click.option("--name", required=True, metavar="NS/NAME", help="Adapter name, e.g. acme/sentiment.")
@click.option("--version", "version", required=True, metavar="VER", help="Semantic version, e.g. 1.0.0.")
@click.option("--base", metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model to check against and pin to.")
@click.option("--task", "tasks", multiple=True, metavar="TASK", help="Task tag (repeatable).")
@click.option("--license", "license_", metavar="L", help="License identifier, e.g. apache-2.0.")
@click.option("--description", metavar="D")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="Evaluation metric (repeatable).")
@click.option("--subfolder", metavar="NAME", help="Adapter subfolder (PEFT's layout for non-default adapters).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Publish weights holding NaN or Inf (research use; refused otherwise, and on attach).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def publish(ctx: click.Context, directory: str, name: str, version: str, base: str | None,
            tasks: tuple[str, ...], license_: str | None, description: str | None,
            metrics: tuple[str, ...], subfolder: str | None, allow_nonfinite: bool, as_json: bool) -> None:
    """Publish the PEFT adapter in DIRECTORY as NS/NAME@VERSION."""
    reg = _registry(ctx)
    res = reg.publish(directory, name=name, version=version, base=base, tasks=list(tasks), license=license_,
                      description=description, metrics=_parse_metrics(metrics), subfolder=subfolder,
                      allow_nonfinite=allow_nonfinite)
    if as_json:
        _emit_json(res.to_dict())
        return
    if res.created:
        what = "published"
    elif res.bytes_written:
        what = "already published (identical content); damaged or missing blobs written again"
    else:
        what = "already published (identical content, nothing written)"
    click.echo(f"{res.name}@{res.version} {what}")
    click.echo(f"  digest  {res.digest}")
    fp = res.manifest.base.fingerprint
    click.echo(f"  base    {fp[:12] if fp else 'not pinned (pass --base to pin a fingerprint)'}")
    click.echo(f"  files   {res.files}, {_human_size(res.bytes_written)} of new blob data")


# --------------------------------------------------------------------------- list / show


def _base_arg(base: str | None, fingerprint: str | None) -> Any:
    if base and fingerprint:
        raise click.UsageError("give --base or --fingerprint, not both")
    if fingerprint is not None and not (fingerprint.isascii() and len(fingerprint.strip()) >= 8
                                        and all(c in "0123456789abcdefABCDEF" for c in fingerprint.strip())):
        raise click.BadParameter(f"{fingerprint!r} is not a fingerprint (64 hex digits, or a prefix of 8 or more)",
                                 param_hint="--fingerprint")
    return base or fingerprint


@cli.command("list")
@click.option("--task", metavar="T")
@click.option("--method", metavar="M", help="lora, dora, rslora, ia3, ...")
@click.option("--base", metavar="PATH|hf://ORG/MODEL[@REV]", help="Only adapters pinned to this base.")
@click.option("--fingerprint", metavar="FP", help="Only adapters pinned to this fingerprint.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, task: str | None, method: str | None, base: str | None,
             fingerprint: str | None, as_json: bool) -> None:
    """List published versions."""
    infos = _registry(ctx).list(task=task, method=method, base=_base_arg(base, fingerprint))
    if as_json:
        _emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        click.echo("no adapters match" if (task or method or base or fingerprint) else
                   "the registry is empty; publish one with 'adapterhub publish DIR --name NS/NAME --version 1.0.0'")
        return
    rows = [(f"{i.name}@{i.version}", i.variant or i.method, ",".join(i.tasks) or "-",
             (i.base_fingerprint or "-")[:12], _human_size(i.size),
             ("yanked " if i.yanked else "") + ",".join(i.aliases)) for i in infos]
    _table(("ADAPTER", "METHOD", "TASKS", "BASE", "SIZE", ""), rows)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


@cli.command()
@click.argument("ref", metavar="NS/NAME[@SPEC]")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show a version's manifest (NS/NAME alone: the latest, and every version)."""
    from .names import parse_ref

    reg = _registry(ctx)
    r = parse_ref(ref)
    info = reg.show(ref)
    versions = reg.versions(r.name) if r.spec is None else None
    if as_json:
        d = info.to_dict(with_manifest=True)
        if versions is not None:
            d["versions"] = [v.to_dict() for v in versions]
        _emit_json(d)
        return
    m = info.manifest
    assert m is not None
    click.echo(f"{info.name}@{info.version}" + ("  (yanked)" if info.yanked else ""))
    click.echo(f"  digest       {info.digest}")
    click.echo(f"  method       {m.method['type']} ({m.method.get('variant')})")
    summary = m.method.get("summary", {})
    if summary.get("rank") is not None:
        click.echo(f"  rank/alpha   {summary.get('rank')}/{summary.get('alpha')}, targets {summary.get('targets')}")
    share = f" ({info.base_fraction * 100:.3g}% of the base)" if info.base_fraction is not None else ""
    click.echo(f"  trainable    {summary.get('trainable_params', 0):,} parameters{share}")
    # The fingerprint is what the adapter is pinned to; PEFT's base_model_name_or_path is only
    # a label the trainer wrote, and may name another model entirely: never show them as one.
    if m.base.fingerprint:
        seen = info.base_seen_as or ()
        where = f"  (weights seen at {'; '.join(seen[:3])}{' ...' if len(seen) > 3 else ''})" if seen else \
            "  (weights not seen by this registry)"
        click.echo(f"  base         fingerprint sha256:{m.base.fingerprint}{where}")
    else:
        click.echo("  base         not pinned to base weights (published without --base)")
    if m.base.name:
        click.echo(f"  peft base    {m.base.name}  (the name PEFT recorded in adapter_config.json; not checked)")
    click.echo(f"  tasks        {', '.join(m.tasks) or '-'}")
    if m.license or m.description:
        click.echo(f"  license      {m.license or '-'}")
        click.echo(f"  description  {m.description or '-'}")
    if m.metrics:
        click.echo("  metrics      " + ", ".join(f"{k}={v}" for k, v in sorted(m.metrics.items())))
    for f in m.files:
        click.echo(f"  file         {f.path}  {_human_size(f.size)}  sha256:{f.sha256[:12]}")
    if info.aliases:
        click.echo(f"  aliases      {', '.join(info.aliases)}")
    if versions:
        click.echo("  versions     " + ", ".join(
            v.version + (" (yanked)" if v.yanked else "") + (f" [{','.join(v.aliases)}]" if v.aliases else "")
            for v in versions))


# --------------------------------------------------------------------------- resolve


@cli.command()
@click.option("--base", metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model directory, or a Hub model.")
@click.option("--fingerprint", metavar="FP", help="Base fingerprint (or a unique prefix).")
@click.option("--task", metavar="T")
@click.option("--method", metavar="M")
@click.option("--name", metavar="NS/NAME[@SPEC]", help="Only this adapter, optionally a version range.")
@click.option("--runtime", metavar="NAME", help="Only adapters this runtime backend can run (see 'adapterhub plugins').")
@click.option("--hub", "on_hub", is_flag=True, help="Search the Hugging Face Hub instead of the local registry.")
@click.option("--author", metavar="ORG", help="With --hub: only repos of this user or organisation.")
@click.option("--all", "show_all", is_flag=True, help="Also list incompatible versions, with the reason.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many results.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resolve(ctx: click.Context, base: str | None, fingerprint: str | None, task: str | None,
            method: str | None, name: str | None, runtime: str | None, on_hub: bool, author: str | None,
            show_all: bool, limit: int | None, as_json: bool) -> None:
    """Which adapters fit a base: exact (same weights), structural (shapes fit), best first."""
    if not base and not fingerprint:
        raise click.UsageError("give --base PATH or --fingerprint FP")
    if on_hub:
        from .hub import HubClient

        reg = _registry(ctx)
        b = reg._as_base(_base_arg(base, fingerprint))
        found = HubClient().resolve(b, task=task, author=author, limit=limit or 50)
        if as_json:
            _emit_json(found)
            return
        if not found:
            click.echo("no adapters on the Hub are tagged for this base")
        for h in found:
            click.echo(f"{h['verdict']:<13} {h['name']}")
        return
    hits = _registry(ctx).resolve(_base_arg(base, fingerprint), task=task, method=method, name=name,
                                  runtime=runtime, include_incompatible=show_all, limit=limit)
    if as_json:
        _emit_json([h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no compatible adapters" + ("" if show_all else " (use --all to see incompatible ones)"))
        return
    for h in hits:
        click.echo(f"{h.verdict:<13} {h.ref:<40} {h.variant or h.method:<8} {','.join(h.tasks) or '-'}")
        if h.verdict != "exact":
            for reason in h.reasons:
                click.echo(f"{'':14}- {reason}")


# --------------------------------------------------------------------------- pull, alias, yank


@cli.command()
@click.argument("ref", metavar="NS/NAME@SPEC | hf://ORG/REPO[@SPEC]")
@click.option("--out", "out", type=click.Path(path_type=str),
              help="Directory to write (required for local refs; optional for hf://).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--base", metavar="PATH|hf://ORG/MODEL",
              help="For a Hub repo pushed by PEFT without a manifest: the base to pin it to.")
@click.option("--name", "accept_name", metavar="NS/NAME",
              help="For a Hub repo whose manifest names another adapter: accept that name even though "
                   "it already has versions from elsewhere here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pull(ctx: click.Context, ref: str, out: str | None, force: bool, base: str | None, accept_name: str | None,
         as_json: bool) -> None:
    """Write an adapter version to OUT as a directory PEFT loads (digests verified).

    With hf://ORG/REPO[@SPEC] the version is downloaded from the Hub, verified against its
    manifest and recorded in the local registry, so it resolves offline afterwards."""
    reg = _registry(ctx)
    if ref.startswith("hf://"):
        from .hub import HubClient

        info = HubClient().pull(reg, ref, base=base, dest=out, overwrite=force, name=accept_name)
        if as_json:
            _emit_json({"name": info.name, "version": info.version, "digest": info.digest,
                        "path": out, "source": ref, "origin": info.source})
            return
        click.echo(f"pulled {ref} as {info.name}@{info.version} (verified, recorded in the local registry)"
                   + (f" to {out}" if out else ""))
        return
    if accept_name is not None:
        raise click.UsageError("--name applies to hf://ORG/REPO pulls only")
    if out is None:
        raise click.UsageError("give --out DIR: where to write the adapter")
    info = reg.show(ref)
    path = reg.pull(f"{info.name}@{info.version}", out, overwrite=force)
    if as_json:
        _emit_json({"name": info.name, "version": info.version, "digest": info.digest, "path": str(path)})
        return
    click.echo(f"pulled {info.name}@{info.version} to {path} (verified)")


@cli.command("export")
@click.argument("spec", metavar="NS/NAME[@SPEC]")
@click.option("--format", "fmt", required=True, type=click.Choice(("peft", "vllm", "lorax", "tgi", "ollama"),
              case_sensitive=False), help="What the directory is for: PEFT, vLLM, LoRAX, TGI or Ollama.")
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--base-path", metavar="PATH|NAME",
              help="The base to name in the generated files; a local directory is fingerprinted and must "
                   "match the adapter's pin (default: the base name in the manifest).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def export_cmd(ctx: click.Context, spec: str, fmt: str, out: str, force: bool, base_path: str | None,
               as_json: bool) -> None:
    """Write a version to OUT as the files a serving tool loads (digests verified), with the
    base fingerprint in its README and manifest."""
    from .export import TARGETS, export

    res = export(_registry(ctx), spec, fmt, out, overwrite=force, base_path=base_path)
    if as_json:
        _emit_json(res.to_dict())
        return
    click.echo(f"exported {res.ref} for {TARGETS[res.format]} to {res.path} (verified)")
    click.echo(f"  adapter  {res.adapter_path}  (served as {res.served_name})")
    click.echo(f"  base     {res.base_name or '-'}  fingerprint {res.base_fingerprint or 'not pinned'}"
               + ("  (checked)" if res.base_checked else ""))
    click.echo(f"  see      {res.path / res.readme}")
    for w in res.warnings:
        click.echo(f"  note     {w}")


@cli.command()
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--to", "to", required=True, metavar="hf://ORG/REPO", help="Hub repo to push to.")
@click.option("--private", is_flag=True, default=None, help="Create the repo private if it does not exist.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def push(ctx: click.Context, ref: str, to: str, private: bool | None, as_json: bool) -> None:
    """Push a version to the Hugging Face Hub: PEFT files, manifest and model card in one
    commit (which fails cleanly if someone else pushed meanwhile), tagged with the version."""
    res = _registry(ctx).push(ref, to=to, private=private)
    if as_json:
        _emit_json(res.to_dict())
        return
    click.echo(f"pushed {ref} to hf://{res.repo}@{res.version} (commit {res.commit[:12]})")


@cli.command()
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alias(ctx: click.Context, ref: str, alias_name: str, as_json: bool) -> None:
    """Point ALIAS (e.g. prod) at a version; an existing alias moves."""
    info = _registry(ctx).alias(ref, alias_name)
    if as_json:
        _emit_json({"name": info.name, "alias": alias_name, "version": info.version, "digest": info.digest})
        return
    click.echo(f"{info.name}@{alias_name} -> {info.version}")


@cli.command()
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--undo", is_flag=True, help="Un-yank.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def yank(ctx: click.Context, ref: str, undo: bool, as_json: bool) -> None:
    """Hide a version from ranges, latest and resolve (exact pins still work)."""
    info = _registry(ctx).yank(ref, undo=undo)
    if as_json:
        _emit_json({"name": info.name, "version": info.version, "digest": info.digest, "yanked": info.yanked})
        return
    click.echo(f"{info.name}@{info.version} {'restored' if undo else 'yanked'}")


# --------------------------------------------------------------------------- maintenance


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob and manifest; exit 1 if anything is corrupt or missing."""
    report = _registry(ctx).verify()
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(f"checked {report.versions} versions, {report.blobs} blobs ({_human_size(report.bytes)})")
        for p in report.problems:
            what = p.get("sha256", p.get("version"))
            users = f" (used by {', '.join(p['versions'])})" if p.get("versions") else ""
            click.echo(f"  {p['kind']} {what}: {p['problem']}{users}")
        click.echo("ok" if report.ok else f"{len(report.problems)} problem(s) found")
    if not report.ok:
        ctx.exit(EXIT_ERROR)


@cli.command()
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Keep unreferenced blobs younger than this many seconds (a publish may be in flight).")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, grace: float, dry_run: bool, as_json: bool) -> None:
    """Remove blobs no version references and abandoned temp files."""
    report = _registry(ctx).gc(grace_seconds=grace, dry_run=dry_run)
    if as_json:
        _emit_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {report.blobs_removed} blobs ({_human_size(report.bytes_freed)}) and "
               f"{report.temp_removed} temp files; kept {report.kept_recent} recent unreferenced blobs")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json: bool) -> None:
    """List loaded plugins, where they come from, and the methods they provide."""
    from .plugins import methods, plugin_infos
    from .runtime import runtimes
    from .storage import storage_factories

    meths = methods()
    backends = runtimes()
    schemes = storage_factories()
    infos = plugin_infos()  # after the hooks ran: a plugin that failed in one shows its error
    if as_json:
        _emit_json({"plugins": [i.to_dict() for i in infos],
                    "methods": [{"name": m.name, "class": f"{type(m).__module__}.{type(m).__qualname__}"}
                                for m in meths],
                    "runtimes": [{"name": n, "limits": b.limits.to_dict()} for n, b in backends.items()],
                    "storage": sorted(schemes)})
        return
    for i in infos:
        state = ", ".join(i.hooks)
        if i.error:
            state = (f"{state}; " if state else "") + f"FAILED: {i.error}"
        click.echo(f"{i.name:<36} {i.source:<28} {state}")
    click.echo("methods:  " + ", ".join(m.name for m in meths))
    click.echo("runtimes: " + ", ".join(backends))
    click.echo("storage:  " + ", ".join(f"{s}://" for s in sorted(schemes)))


@cli.group()
def db() -> None:
    """Registry database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply schema migrations to the registry database."""
    from . import db as dbmod

    obj = ctx.find_root().obj
    from .home import default_registry_url

    engine = dbmod.make_engine(obj.get("registry_url") or default_registry_url())
    try:
        with dbmod.operational_errors():
            before, after = dbmod.upgrade(engine)
    finally:
        engine.dispose()
    click.echo(f"registry schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("current")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def db_current(ctx: click.Context, as_json: bool) -> None:
    """Print the registry's schema revision and the one this SDK needs."""
    from . import db as dbmod
    from .home import default_registry_url

    obj = ctx.find_root().obj
    engine = dbmod.make_engine(obj.get("registry_url") or default_registry_url())
    try:
        with dbmod.operational_errors(), engine.connect() as conn:
            current = dbmod.current_revision(conn)
        if as_json:
            _emit_json({"current": current, "head": dbmod.head_revision(),
                        "up_to_date": current == dbmod.head_revision()})
        else:
            click.echo(f"current {current or 'empty'}, head {dbmod.head_revision()}")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- serve


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


@cli.command()
@click.option("--base", required=True, metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model, loaded once.")
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]SPEC",
              help="Adapter to attach at start, e.g. acme/sentiment@^1 (repeatable); NAME= serves it as NAME.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--strict", is_flag=True, help="Refuse adapters trained on other base weights (structural fits).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most requests run together in one batch.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long to wait for more requests before running a batch.")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, mps.")
@click.pass_context
def serve(ctx: click.Context, base: str, adapters: tuple[str, ...], host: str, port: int, strict: bool,
          max_batch: int, batch_wait_ms: float, device: str) -> None:
    """Serve a base and its adapters over an OpenAI-compatible HTTP API (/v1/models,
    /v1/completions, /v1/chat/completions, /v1/adapters, /health, /metrics)."""
    import warnings

    try:
        import uvicorn

        from .server import create_app
    except ImportError as exc:
        raise click.ClickException(f"'adapterhub serve' needs {exc.name or 'the serve extra'}: "
                                   "pip install 'adapterhub_sdk[serve]'") from None
    from .deploy import Deployment, StructuralMatchWarning
    from .plugins import PluginWarning

    sock = _listen(host, port)  # before the slow model load: a taken port fails at once
    try:
        dep = Deployment(base, registry=_registry(ctx), device=device, strict=strict)
        for item in adapters:
            # NAME=SPEC, where NAME has no '@': a spec's own '=' (acme/a@>=1,<2) is not a separator
            name, sep, spec = item.partition("=")
            if not sep or "@" in name:
                name, spec = "", item
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StructuralMatchWarning)
                attached = dep.attach(spec, name=name if sep and name != "" else None)
            for w in caught:
                if issubclass(w.category, (StructuralMatchWarning, PluginWarning)):  # e.g. a failing after_pull
                    click.echo(f"warning: {w.message}", err=True)
            click.echo(f"attached {attached.name} ({attached.ref}, {attached.verdict})")
        base_id = base[5:].partition("@")[0] if base.startswith("hf://") else None
        app = create_app(dep, base_id=base_id, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"serving {app.state.server.base_id} with {len(dep.adapters)} adapter(s) on "
                   f"http://{shown}:{bound}/v1")
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    finally:
        sock.close()


@cli.command()
@click.option("--workdir", type=click.Path(path_type=str), help="Where to build the demo (default: a temp dir).")
@click.option("--steps", type=click.IntRange(min=10), default=100, show_default=True, help="Training steps per adapter.")
def quickstart(workdir: str | None, steps: int) -> None:
    """Train two LoRA adapters on a tiny model, publish, resolve, pull and serve them."""
    from .quickstart import run

    run(workdir=workdir, steps=steps)


def main(argv: list[str] | None = None) -> None:
    import warnings

    from .adapter_files import AdapterContentWarning
    from .plugins import PluginWarning, call_hook

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
            click.echo(f"warning: {_error_line(exc)[7:]}", err=True)
        cli.main(args=argv, prog_name="adapterhub")
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    main()

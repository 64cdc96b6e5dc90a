"""Keeping a registry healthy: ``verify``, ``gc`` and the ``db`` schema commands."""

from __future__ import annotations

from collections.abc import Iterator

import click

from ._app import EXIT_ERROR, cli, creates_registry, examples, registry, registry_url
from ._output import Result, count, emits, human_size


@cli.command(epilog=examples("adapterhub verify", "adapterhub verify --json"))
@emits
@click.pass_context
def verify(ctx: click.Context) -> Result:
    """Re-hash every blob and manifest and check every signature; exit 1 if anything is
    corrupt or missing, a signature is bad or a signed version was tampered with."""
    reg = registry(ctx)
    report = reg.verify()
    signed = reg.verify_signatures()
    bad = [s for s in signed if not s.ok]

    def text() -> Iterator[str]:
        yield f"checked {count(report.versions, 'version')}, {count(report.blobs, 'blob')} ({human_size(report.bytes)})"
        for p in report.problems:
            what = p.get("sha256", p.get("version"))
            users = f" (used by {', '.join(p['versions'])})" if p.get("versions") else ""
            yield f"  {p['kind']} {what}: {p['problem']}{users}"
        for s in signed:
            yield f"  {s.ref}: {s.describe()}"
        n = len(report.problems) + len(bad)
        yield "ok" if not n else f"{count(n, 'problem')} found"

    def data() -> dict:
        return {**report.to_dict(), "ok": report.ok and not bad, "signatures": [s.to_dict() for s in signed]}

    return Result(data, text, exit_code=0 if report.ok and not bad else EXIT_ERROR)


@cli.command(epilog=examples("adapterhub gc --dry-run", "adapterhub gc --json"))
@emits
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Keep unreferenced blobs younger than this many seconds (a publish may be in flight).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--claim-store", is_flag=True,
              help="Make this registry the blob store's owner first (gc refuses a store another registry "
                   "owns, or one no registry has claimed that this one references nothing of).")
@click.pass_context
def gc(ctx: click.Context, grace: float, dry_run: bool, claim_store: bool) -> Result:
    """Remove blobs no version references and abandoned temp files (only from this registry's
    own blob store)."""
    report = registry(ctx).gc(grace_seconds=grace, dry_run=dry_run, claim_store=claim_store)
    verb = "would remove" if dry_run else "removed"
    return Result(report.to_dict,
                  f"{verb} {count(report.blobs_removed, 'blob')} ({human_size(report.bytes_freed)}) and "
                  f"{count(report.temp_removed, 'temp file')}; kept {report.kept_recent} recent unreferenced "
                  f"{'blob' if report.kept_recent == 1 else 'blobs'}"
                  + (f" and {report.kept_leased} leased by publishes in progress" if report.kept_leased else ""))


@cli.group(epilog=examples("adapterhub db current", "adapterhub db upgrade"))
def db() -> None:
    """Registry database schema."""


@db.command("upgrade", epilog=examples("adapterhub db upgrade"))
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply schema migrations to the registry database."""
    from .. import db as dbmod

    engine = dbmod.make_engine(registry_url(ctx))
    try:
        with dbmod.operational_errors():
            before, after = dbmod.upgrade(engine)
    finally:
        engine.dispose()
    click.echo(f"registry schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("current", epilog=examples("adapterhub db current --json"))
@emits
@click.pass_context
def db_current(ctx: click.Context) -> Result:
    """Print the registry's schema revision and the one this SDK needs."""
    from .. import db as dbmod

    engine = dbmod.make_engine(registry_url(ctx), create=creates_registry(ctx))
    try:
        with dbmod.operational_errors(), engine.connect() as conn:
            current = dbmod.current_revision(conn)
    finally:
        engine.dispose()
    head = dbmod.head_revision()
    return Result({"current": current, "head": head, "up_to_date": current == head},
                  f"current {current or 'empty'}, head {head}")

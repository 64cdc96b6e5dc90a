"""Published versions: ``list``, ``show``, ``alias`` and ``yank``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ._app import BASE, base_arg, cli, examples, registry
from ._output import Result, emits, human_size, table

if TYPE_CHECKING:
    from ..version_info import VersionInfo


@cli.command("list", epilog=examples("adapterhub list --task sentiment",
                                         "adapterhub list --base ./base --json",
                                         "adapterhub list --limit 50 --offset 100",
                                         "adapterhub list --jsonl > versions.jsonl"))
@emits
@click.option("--task", metavar="T", help="Only versions tagged with this task.")
@click.option("--method", metavar="M", help="lora, dora, rslora, ia3, ...")
@click.option("--base", type=BASE, metavar="PATH|hf://ORG/MODEL[@REV]", help="Only adapters pinned to this base.")
@click.option("--fingerprint", metavar="FP", help="Only adapters pinned to this fingerprint.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="At most N versions.")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N", help="Skip the first N versions.")
@click.option("--jsonl", "as_jsonl", is_flag=True,
              help="Print one JSON object per line, as each page is read (a large registry in flat memory).")
@click.pass_context
def list_cmd(ctx: click.Context, task: str | None, method: str | None, base: str | None,
             fingerprint: str | None, limit: int | None, offset: int) -> Result:
    """List published versions: by name, newest version first."""
    infos = _fast_list(ctx, task=task, method=method, offset=offset, limit=limit) if not (base or fingerprint) \
        else None
    if infos is None:
        infos = registry(ctx).iter_list(task=task, method=method, base=base_arg(base, fingerprint),
                                        offset=offset, limit=limit)

    def text() -> Iterator[str]:
        rows = list(infos)
        if not rows:
            yield ("no adapters match" if (task or method or base or fingerprint or offset) else
                   "the registry is empty; publish one with 'adapterhub publish DIR --name NS/NAME --version 1.0.0'")
            return
        yield from table(("ADAPTER", "METHOD", "TASKS", "BASE", "SIZE", ""), [
            (f"{i.name}@{i.version}", i.variant or i.method, ",".join(i.tasks) or "-",
             (i.base_fingerprint or "-")[:12], human_size(i.size),
             ("yanked " if i.yanked else "") + ",".join(i.aliases)) for i in rows])

    return Result(lambda: (i.to_dict() for i in infos), text)


def _fast_list(ctx: click.Context, **filters: Any) -> Iterator[VersionInfo] | None:
    """The listing read straight from a SQLite registry file that is at the current schema,
    with the standard library's sqlite3: the same query and rows as Registry.iter_list, without
    loading SQLAlchemy or the registry (None: anything else, which the full path handles)."""
    from ..dbinfo import sqlite_fetch, sqlite_reader
    from ..home import default_registry_url
    from ..listing import iter_versions

    # the URL as given: a plain sqlite:///PATH is a valid one, anything else gets the full
    # path (which checks it with SQLAlchemy, the import this path exists to avoid)
    conn = sqlite_reader(ctx.find_root().obj.get("registry_url") or default_registry_url())
    if conn is None:
        return None
    ctx.call_on_close(conn.close)
    conn.execute("BEGIN")  # one snapshot for every page, as the full path reads it
    return iter_versions(sqlite_fetch(conn), postgres=False, **filters)


@cli.command(epilog=examples("adapterhub show acme/sentiment", "adapterhub show acme/sentiment@^1 --json"))
@emits
@click.argument("ref", metavar="NS/NAME[@SPEC]")
@click.pass_context
def show(ctx: click.Context, ref: str) -> Result:
    """Show a version's manifest (NS/NAME alone: the latest, and every version)."""
    from ..names import parse_ref

    reg = registry(ctx)
    r = parse_ref(ref)
    info = reg.show(ref)
    versions = reg.versions(r.name) if r.spec is None else None

    def data() -> dict[str, Any]:
        d = info.to_dict(with_manifest=True)
        if versions is not None:
            d["versions"] = [v.to_dict() for v in versions]
        return d

    def text() -> Iterator[str]:
        m = info.manifest
        assert m is not None
        yield f"{info.name}@{info.version}" + ("  (yanked)" if info.yanked else "")
        yield f"  digest       {info.digest}"
        yield f"  source       {info.source or 'published in this registry'}"
        yield f"  method       {m.method['type']} ({m.method.get('variant')})"
        summary = m.method.get("summary", {})
        if summary.get("rank") is not None:
            yield f"  rank/alpha   {summary.get('rank')}/{summary.get('alpha')}, targets {summary.get('targets')}"
        share = f" ({info.base_fraction * 100:.3g}% of the base)" if info.base_fraction is not None else ""
        yield f"  trainable    {summary.get('trainable_params', 0):,} parameters{share}"
        # The fingerprint is what the adapter is pinned to; PEFT's base_model_name_or_path is only
        # a label the trainer wrote, and may name another model entirely: never show them as one.
        if m.base.fingerprint:
            seen = info.base_seen_as or ()
            where = f"  (weights seen at {'; '.join(seen[:3])}{' ...' if len(seen) > 3 else ''})" if seen else \
                "  (weights not seen by this registry)"
            yield f"  base         fingerprint sha256:{m.base.fingerprint}{where}"
        else:
            yield "  base         not pinned to base weights (published without --base)"
        if m.base.name:
            yield f"  peft base    {m.base.name}  (the name PEFT recorded in adapter_config.json; not checked)"
        yield f"  tasks        {', '.join(m.tasks) or '-'}"
        if m.license or m.description:
            yield f"  license      {m.license or '-'}"
            yield f"  description  {m.description or '-'}"
        if m.metrics:
            yield "  metrics      " + ", ".join(f"{k}={v}" for k, v in sorted(m.metrics.items()))
        for f in m.files:
            yield f"  file         {f.path}  {human_size(f.size)}  sha256:{f.sha256[:12]}"
        if info.aliases:
            yield f"  aliases      {', '.join(info.aliases)}"
        if versions:
            yield "  versions     " + ", ".join(
                v.version + (" (yanked)" if v.yanked else "") + (f" [{','.join(v.aliases)}]" if v.aliases else "")
                for v in versions)

    return Result(data, text)


@cli.command(epilog=examples("adapterhub alias acme/sentiment@1.1.0 prod"))
@emits
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.argument("alias_name", metavar="ALIAS")
@click.pass_context
def alias(ctx: click.Context, ref: str, alias_name: str) -> Result:
    """Point ALIAS (e.g. prod) at a version; an existing alias moves."""
    info = registry(ctx).alias(ref, alias_name)
    return Result({"name": info.name, "alias": alias_name, "version": info.version, "digest": info.digest},
                  f"{info.name}@{alias_name} -> {info.version}")


@cli.command(epilog=examples("adapterhub yank acme/sentiment@1.1.0", "adapterhub yank acme/sentiment@1.1.0 --undo"))
@emits
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--undo", is_flag=True, help="Un-yank.")
@click.pass_context
def yank(ctx: click.Context, ref: str, undo: bool) -> Result:
    """Hide a version from ranges, latest and resolve (exact pins still work)."""
    info = registry(ctx).yank(ref, undo=undo)
    return Result({"name": info.name, "version": info.version, "digest": info.digest, "yanked": info.yanked},
                  f"{info.name}@{info.version} {'restored' if undo else 'yanked'}")

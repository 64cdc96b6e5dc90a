"""``adapterhub resolve``: which published versions fit a base, best first."""

from __future__ import annotations

from collections.abc import Iterator

import click

from ._app import BASE, base_arg, cli, examples, registry
from ._output import Result, emits
from .remote import HUB, allow_insecure, insecure_option, resolve_remote


@cli.command(epilog=examples("adapterhub resolve --base ./base --task sentiment",
                             "adapterhub resolve --base hf://Qwen/Qwen2.5-0.5B --hub --json",
                             "adapterhub resolve --base ./base --remote oci://registry.example.com/team/sentiment"))
@emits
@click.option("--base", type=BASE, metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model directory, or a Hub model.")
@click.option("--fingerprint", metavar="FP", help="Base fingerprint (or a unique prefix).")
@click.option("--task", metavar="T", help="Only versions tagged with this task.")
@click.option("--method", metavar="M", help="Only this method or variant: lora, dora, rslora, ia3, ...")
@click.option("--name", metavar="NS/NAME[@SPEC]", help="Only this adapter, optionally a version range.")
@click.option("--runtime", metavar="NAME", help="Only adapters this runtime backend can run (see 'adapterhub plugins').")
@click.option("--hub", "on_hub", is_flag=True, help="Search the Hugging Face Hub instead of the local registry.")
@click.option("--remote", "remote_url", metavar="oci://HOST/REPO",
              help="Search this remote repository's versions instead of the local registry.")
@insecure_option
@click.option("--author", metavar="ORG", help="With --hub: only repos of this user or organisation.")
@click.option("--all", "show_all", is_flag=True, help="Also list incompatible versions, with the reason.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many results.")
@click.pass_context
def resolve(ctx: click.Context, base: str | None, fingerprint: str | None, task: str | None,
            method: str | None, name: str | None, runtime: str | None, on_hub: bool, remote_url: str | None,
            insecure: bool, author: str | None, show_all: bool, limit: int | None) -> Result:
    """Which adapters fit a base: exact (same weights), structural (shapes fit), best first."""
    if not base and not fingerprint:
        raise click.UsageError("give --base PATH or --fingerprint FP")
    if on_hub and remote_url:
        raise click.UsageError("give --hub or --remote URL, not both")
    allow_insecure(insecure)
    if on_hub or remote_url:
        local_only = [opt for opt, given in (("--method", method), ("--name", name), ("--runtime", runtime),
                                              ("--all", show_all)) if given]
        if local_only:  # a remote search lists every version with its verdict: none of these is applied there
            raise click.UsageError(f"{', '.join(local_only)} apply to the local registry only; "
                                   f"{'--hub' if on_hub else '--remote'} lists every version with its verdict "
                                   "(incompatible ones too); pull one and resolve locally to filter further")
        return resolve_remote(registry(ctx), base, fingerprint, task=task, author=author, limit=limit,
                              url=remote_url or HUB)
    if author is not None:
        raise click.UsageError("--author applies to --hub (and --remote) searches only")
    given = base_arg(base, fingerprint)
    hits = None
    if fingerprint is not None and runtime is None and not show_all:  # read straight from SQLite
        from ..home import default_registry_url
        from ..resolving import resolve_sqlite_file

        hits = resolve_sqlite_file(ctx.find_root().obj.get("registry_url") or default_registry_url(),
                                   fingerprint, task=task, method=method, name=name, limit=limit)
    if hits is None:
        hits = registry(ctx).resolve(given, task=task, method=method, name=name,
                                     runtime=runtime, include_incompatible=show_all, limit=limit)

    def text() -> Iterator[str]:
        if not hits:
            yield "no compatible adapters" + ("" if show_all else " (use --all to see incompatible ones)")
        for h in hits:
            yield f"{h.verdict:<13} {h.ref:<40} {h.variant or h.method:<8} {','.join(h.tasks) or '-'}"
            if h.verdict != "exact":
                for reason in h.reasons:
                    yield f"{'':14}- {reason}"

    return Result(lambda: [h.to_dict() for h in hits], text)

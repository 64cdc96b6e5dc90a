"""Everything the CLI does with a remote registry (today the Hugging Face Hub, ``hf://``):
``push``, and the remote halves of ``pull hf://...`` and ``resolve --hub``. The other
command modules call these and hold no ``hf://`` case of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ._app import base_arg, cli, examples, registry
from ._output import Result, emits

if TYPE_CHECKING:
    from ..registry import Registry

HUB_SCHEME = "hf://"


def is_remote(ref: str) -> bool:
    """Whether a ref names a version on a remote registry rather than in this one."""
    return ref.startswith(HUB_SCHEME)


def hub_model_id(base: str) -> str | None:
    """The Hub repo id of a base given as ``hf://ORG/MODEL[@REV]``; None for a local one."""
    return base[len(HUB_SCHEME):].partition("@")[0] if base.startswith(HUB_SCHEME) else None


def pull_remote(reg: Registry, ref: str, out: str | None, force: bool, base: str | None,
                accept_name: str | None) -> Result:
    """Download a version, verify it against its manifest and record it in ``reg``."""
    from ..hub import HubClient

    info = HubClient().pull(reg, ref, base=base, dest=out, overwrite=force, name=accept_name)
    return Result({"name": info.name, "version": info.version, "digest": info.digest,
                   "path": out, "source": ref, "origin": info.source},
                  f"pulled {ref} as {info.name}@{info.version} (verified, recorded in the local registry)"
                  + (f" to {out}" if out else ""))


def resolve_remote(reg: Registry, base: str | None, fingerprint: str | None, task: str | None,
                   author: str | None, limit: int | None) -> Result:
    """Adapters on the Hub tagged for this base (the tags ``push`` writes)."""
    from ..hub import HubClient

    b = reg._as_base(base_arg(base, fingerprint))
    found: list[dict[str, Any]] = HubClient().resolve(b, task=task, author=author, limit=limit or 50)
    lines = [f"{h['verdict']:<13} {h['name']}" for h in found] or ["no adapters on the Hub are tagged for this base"]
    return Result(found, lines)


@cli.command(epilog=examples("adapterhub push acme/sentiment@1.0.0 --to hf://acme/sentiment"))
@emits
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--to", "to", required=True, metavar="hf://ORG/REPO", help="Hub repo to push to.")
@click.option("--private", is_flag=True, default=None, help="Create the repo private if it does not exist.")
@click.pass_context
def push(ctx: click.Context, ref: str, to: str, private: bool | None) -> Result:
    """Push a version to the Hugging Face Hub: PEFT files, manifest and model card in one
    commit (which fails cleanly if someone else pushed meanwhile), tagged with the version."""
    res = registry(ctx).push(ref, to=to, private=private)
    return Result(res.to_dict, f"pushed {ref} to hf://{res.repo}@{res.version} (commit {res.commit[:12]})")

"""Everything the CLI does with a remote registry (the Hugging Face Hub, ``hf://``; OCI
registries, ``oci://``): ``push``, and the remote halves of ``pull URL`` and ``resolve --hub``
/ ``resolve --remote URL``, each through
the remote that the URL's scheme selects (:mod:`adapterhub_sdk.remotes`). The other
command modules call these and hold no ``hf://`` case of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ._app import base_arg, catalog_registry, cli, examples, registry
from ._output import Result, emits

if TYPE_CHECKING:
    from ..interfaces import Remote
    from ..registry import Registry

HUB = "hf://"  # the remote that ``resolve --hub`` searches


insecure_option = click.option(
    "--insecure", is_flag=True, help="Talk plain HTTP to an OCI registry (one on loopback); default HTTPS.")


def allow_insecure(insecure: bool) -> None:
    """``--insecure``: plain HTTP for the OCI registries this command talks to."""
    if insecure:
        import os

        os.environ["ADAPTERHUB_OCI_INSECURE"] = "1"


def is_remote(ref: str) -> bool:
    """Whether a ref names a version on a remote registry rather than in this one."""
    from ..remotes import is_remote_ref

    return is_remote_ref(ref)


def hub_model_id(base: str) -> str | None:
    """The remote's id of a base given as a URL (``hf://ORG/MODEL[@REV]`` -> ``ORG/MODEL``);
    None for a local one."""
    from ..remotes import remote_for

    remote = remote_for(base)
    return remote.model_id(base) if remote is not None else None


def on_catalog(remote: Remote) -> bool:
    """Whether ``remote`` pulls and pushes through the registry's catalog statements alone (the
    built-in OCI remote), so that a SQLite home opened with sqlite3 serves it."""
    from ..oci.remote import OciRemote

    return type(remote) is OciRemote


def checked_remote(url: str, param_hint: str) -> Remote:
    """The remote for ``url``; a URL of no installed scheme, or not of the form its remote
    takes (``hf://bad``), is a usage error (exit 2) found before anything is sent."""
    from ..errors import NotFoundError
    from ..remotes import get_remote

    try:
        remote = get_remote(url)
        remote.model_id(url)  # parses the URL, offline
    except NotFoundError as exc:
        raise click.BadParameter(exc.message + (f"; {exc.hint}" if exc.hint else ""),
                                 param_hint=param_hint) from None
    return remote


def pull_remote(reg: Registry, ref: str, out: str | None, force: bool, base: str | None,
                accept_name: str | None, require_signed: str | None = None, remote: Remote | None = None) -> Result:
    """Download a version, verify it against its manifest and record it in ``reg``
    (``require_signed``: for a remote that checks it before recording; ``remote``: the one
    :func:`checked_remote` found for ``ref`` already)."""
    info = (remote or checked_remote(ref, "'REF'")).pull(reg, ref, out, base=base, overwrite=force, name=accept_name,
                                             **({"require_signed": require_signed} if require_signed else {}))
    return Result({"name": info.name, "version": info.version, "digest": info.digest,
                   "path": out, "source": ref, "origin": info.source},
                  f"pulled {ref} as {info.name}@{info.version} (verified, recorded in the local registry)"
                  + (f" to {out}" if out else ""))


def resolve_remote(reg: Registry, base: str | None, fingerprint: str | None, task: str | None,
                   author: str | None, limit: int | None, url: str = HUB) -> Result:
    """Adapters on a remote for this base: on the Hub, repos tagged for it (the tags ``push``
    writes); in an OCI repository, its versions with their verdicts."""
    from ..remotes import get_remote

    remote = get_remote(HUB) if url == HUB else checked_remote(url, "'--remote'")
    b = reg._as_base(base_arg(base, fingerprint))
    found: list[dict[str, Any]] = remote.resolve(b, task=task, author=author, limit=limit or 50)
    lines = []
    for h in found:
        lines.append(f"{h['verdict']:<13} {h['name']}")
        if h["verdict"] != "exact" and url != HUB:
            lines += [f"{'':14}- {r}" for r in h.get("reasons") or ()]
    if not lines:
        filters = ", ".join(f"{k} {v}" for k, v in (("task", task), ("author", author)) if v)
        lines = ["no adapters on the Hub are tagged for this base" if url == HUB else
                 f"no adapters in {url}" + (f" match {filters}" if filters else "")]
    return Result(found, lines)


@cli.command(epilog=examples("adapterhub push acme/sentiment@1.0.0 --to hf://acme/sentiment",
                             "adapterhub push acme/sentiment@1.0.0 --to oci://registry.example.com/team/sentiment"))
@emits
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--to", "to", required=True, metavar="hf://ORG/REPO | oci://HOST/REPO",
              help="Hub repo or OCI repository to push to.")
@click.option("--private", is_flag=True, default=None, help="Create the repo private if it does not exist.")
@insecure_option
@click.pass_context
def push(ctx: click.Context, ref: str, to: str, private: bool | None, insecure: bool) -> Result:
    """Push a version to a remote registry. To the Hugging Face Hub: PEFT files, manifest
    and model card in one commit (which fails cleanly if someone else pushed meanwhile),
    tagged with the version. To an OCI registry: an artifact tagged with the version (the
    manifest as its config, one layer per file), its signatures beside it."""
    allow_insecure(insecure)
    remote = checked_remote(to, "'--to'")
    res = (catalog_registry(ctx) if on_catalog(remote) else registry(ctx)).push(ref, to=to, private=private)
    summary = getattr(res, "summary", None)
    return Result(res.to_dict, summary or f"pushed {ref} to hf://{res.repo}@{res.version} (commit {res.commit[:12]})")

"""``adapterhub publish``: a PEFT adapter directory into the registry, pinned to its base."""

from __future__ import annotations

import math
from typing import Any

import click

from ._app import BASE, catalog_registry, cli, examples
from ._output import Result, emits, human_size


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
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise click.BadParameter(f"{item!r}: metrics are finite numbers or text", param_hint="--metric")
    return out


@cli.command(epilog=examples(
    "adapterhub publish ./my-lora --name acme/sentiment --version 1.0.0 --base ./base --task sentiment"))
@emits
@click.argument("directory", type=click.Path(exists=True, path_type=str))
@click.option("--name", required=True, metavar="NS/NAME", help="Adapter name, e.g. acme/sentiment.")
@click.option("--version", "version", required=True, metavar="VER", help="Semantic version, e.g. 1.0.0.")
@click.option("--base", type=BASE, metavar="PATH|hf://ORG/MODEL[@REV]", help="Base model to check against and pin to.")
@click.option("--task", "tasks", multiple=True, metavar="TASK", help="Task tag (repeatable).")
@click.option("--license", "license_", metavar="L", help="License identifier, e.g. apache-2.0.")
@click.option("--description", metavar="D", help="One line on what the adapter does.")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="Evaluation metric (repeatable).")
@click.option("--subfolder", metavar="NAME", help="Adapter subfolder (PEFT's layout for non-default adapters).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Publish weights holding NaN or Inf (research use; refused otherwise, and on attach).")
@click.option("--sign", "sign_key", metavar="KEY", help="Sign the version with your key (a name or a PEM path).")
@click.pass_context
def publish(ctx: click.Context, directory: str, name: str, version: str, base: str | None,
            tasks: tuple[str, ...], license_: str | None, description: str | None,
            metrics: tuple[str, ...], subfolder: str | None, allow_nonfinite: bool, sign_key: str | None) -> Result:
    """Publish the PEFT adapter in DIRECTORY as NS/NAME@VERSION."""
    if sign_key is not None:  # a key that cannot sign is found before anything is written
        from ..signing.keys import load_private_key

        key = load_private_key(sign_key)
    reg = catalog_registry(ctx)  # on an existing SQLite home: the registry's publish and bases parts on sqlite3
    res = reg.publish(directory, name=name, version=version, base=base, tasks=list(tasks),
                                license=license_, description=description, metrics=_parse_metrics(metrics),
                                subfolder=subfolder, allow_nonfinite=allow_nonfinite)
    if res.created:
        what = "published"
    elif res.bytes_written:
        what = "already published (identical content); damaged or missing blobs written again"
    else:
        what = "already published (identical content, nothing written)"
    fp = res.manifest.base.fingerprint
    lines = [
        f"{res.name}@{res.version} {what}",
        f"  digest  {res.digest}",
        f"  base    {fp[:12] if fp else 'not pinned (pass --base to pin a fingerprint)'}",
        f"  files   {res.files}, {human_size(res.bytes_written)} of new blob data",
    ]
    if sign_key is None:
        return Result(res.to_dict, lines)
    vs = reg.sign(f"{res.name}@{res.version}", key=key)
    return Result(lambda: {**res.to_dict(), "signatures": vs.to_dict()},
                  [*lines, f"  signed  {vs.describe()}"])

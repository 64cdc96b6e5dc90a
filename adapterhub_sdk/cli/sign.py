"""``adapterhub sign``: add a signature (a publisher's, a reviewer's) beside a version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from ._app import cli, examples, registry
from ._output import Result, emits


def signature_lines(vs: Any) -> Iterator[str]:
    yield f"  signatures  {vs.describe()}"
    for c in vs.checks:
        yield f"    {c.file}  {c.signer}  {c.status}" + (f" ({c.reason})" if c.reason else "")


@cli.command(epilog=examples("adapterhub sign acme/sentiment@1.0.0 --key alice",
                             "adapterhub sign acme/sentiment@1.0.0 --key ./reviewer.pem"))
@emits
@click.argument("ref", metavar="NS/NAME@VERSION")
@click.option("--key", "key", required=True, metavar="NAME|PATH",
              help="Your private key: a name in your key directory or a PEM file's path.")
@click.pass_context
def sign(ctx: click.Context, ref: str, key: str) -> Result:
    """Sign version NS/NAME@VERSION with your key. Its digest and manifest do not change; a
    pulled directory carries the signature as model.sig (the first) or model.NAME.sig."""
    vs = registry(ctx).sign(ref, key=key)
    return Result(vs.to_dict, [f"signed {vs.ref}", *signature_lines(vs)])

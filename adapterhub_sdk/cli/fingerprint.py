"""``adapterhub fingerprint``: the digest of a base model's weights."""

from __future__ import annotations

import click

from ._app import cli, examples, registry
from ._output import Result, emits, human_size


@cli.command("fingerprint", epilog=examples(
    "adapterhub fingerprint ./base", "adapterhub fingerprint ./base --register --json"))
@emits
@click.argument("path", type=click.Path(exists=True, path_type=str))
@click.option("--no-cache", is_flag=True, help="Re-hash even if the files are unchanged.")
@click.option("--register", is_flag=True,
              help="Also record the base in the registry, with the sha256 of its weight files, so that "
                   "its Hub id (hf://ORG/MODEL) resolves to this fingerprint without a download.")
@click.pass_context
def fingerprint_cmd(ctx: click.Context, path: str, no_cache: bool, register: bool) -> Result:
    """Fingerprint the weights of a base model (directory or .safetensors file)."""
    from ..fingerprint import fingerprint

    fp = fingerprint(path, use_cache=not no_cache)
    if register:
        registry(ctx).register_base(path, file_digests=True)
    dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(fp.dtypes.items()))
    return Result(fp.to_dict, [
        f"fingerprint     {fp.digest}",
        f"arch_signature  {fp.arch_signature}",
        f"tensors         {fp.n_tensors} ({dtypes}), {fp.n_params:,} parameters, {human_size(fp.total_bytes)}",
    ])

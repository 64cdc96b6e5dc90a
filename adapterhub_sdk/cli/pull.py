"""Getting a version out of the registry: ``pull`` (a directory PEFT loads) and ``export``
(the files a serving tool loads)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from ._app import BASE, catalog_registry, cli, examples, registry
from ._output import Result, emits
from .remote import (
    allow_insecure,
    checked_remote,
    insecure_option,
    is_remote,
    on_catalog,
    pull_remote,
)


@cli.command(epilog=examples("adapterhub pull acme/sentiment@^1 --out ./sentiment",
                             "adapterhub pull hf://acme/sentiment@1.0.0",
                             "adapterhub pull oci://registry.example.com/team/sentiment@^1 --out ./sentiment"))
@emits
@click.argument("ref", metavar="NS/NAME@SPEC | hf://ORG/REPO[@SPEC] | oci://HOST/REPO[:TAG|@SPEC]")
@click.option("--out", "out", type=click.Path(path_type=str),
              help="Directory to write (required for local refs; optional for hf:// and oci://).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--base", type=BASE, metavar="PATH|hf://ORG/MODEL",
              help="For a Hub repo pushed by PEFT without a manifest: the base to pin it to.")
@click.option("--name", "accept_name", metavar="NS/NAME",
              help="For a Hub repo whose manifest names another adapter: accept that name even though "
                   "it already has versions from elsewhere here.")
@click.option("--require-signed", "require_signed", metavar="KEY[,KEY]",
              help="Refuse a version not signed by one of these trusted keys (adds to "
                   "ADAPTERHUB_REQUIRE_SIGNED and the registry's policy).")
@insecure_option
@click.pass_context
def pull(ctx: click.Context, ref: str, out: str | None, force: bool, base: str | None,
         accept_name: str | None, require_signed: str | None, insecure: bool) -> Result:
    """Write an adapter version to OUT as a directory PEFT loads (digests verified).

    With hf://ORG/REPO[@SPEC] the version is downloaded from the Hub, verified against its
    manifest and recorded in the local registry, so it resolves offline afterwards; the same
    with oci://HOST/REPO from an OCI registry (a tag, @sha256:DIGEST, @latest or a range)."""
    allow_insecure(insecure)
    if is_remote(ref):
        from ..registry.transfer import takes_require_signed

        remote = checked_remote(ref, "'REF'")
        reg = catalog_registry(ctx) if on_catalog(remote) else registry(ctx)
        if require_signed is None or takes_require_signed(remote):
            return pull_remote(reg, ref, out, force=force, base=base, accept_name=accept_name,
                               require_signed=require_signed, remote=remote)
        res = pull_remote(reg, ref, None, force=force, base=base, accept_name=accept_name,
                          remote=remote)  # recorded, not written
        got = f"{res.data['name']}@{res.data['version']}"
        if out is None:
            reg.check_signed(got, require_signed)
        else:
            reg.pull(got, out, overwrite=force, require_signed=require_signed)
            res.data["path"], res.text = out, f"{res.text} to {out}"
        return res
    if accept_name is not None:
        raise click.UsageError("--name applies to hf://ORG/REPO pulls only")
    reg = catalog_registry(ctx, reads_only=True)  # a mistyped --registry is no new, empty registry
    if out is None:
        raise click.UsageError("give --out DIR: where to write the adapter")
    info = reg.show(ref)
    path = reg.pull(f"{info.name}@{info.version}", out, overwrite=force, require_signed=require_signed)
    return Result({"name": info.name, "version": info.version, "digest": info.digest, "path": str(path)},
                  f"pulled {info.name}@{info.version} to {path} (verified)")


@cli.command("export", epilog=examples("adapterhub export acme/sentiment@1.0.0 --format vllm --out ./for-vllm"))
@emits
@click.argument("spec", metavar="NS/NAME[@SPEC]")
@click.option("--format", "fmt", required=True, type=click.Choice(("peft", "vllm", "lorax", "tgi", "ollama"),
              case_sensitive=False), help="What the directory is for: PEFT, vLLM, LoRAX, TGI or Ollama.")
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Directory to write.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--base-path", metavar="PATH|NAME",
              help="The base to name in the generated files; a local directory is fingerprinted and must "
                   "match the adapter's pin (default: the base name in the manifest).")
@click.pass_context
def export_cmd(ctx: click.Context, spec: str, fmt: str, out: str, force: bool, base_path: str | None) -> Result:
    """Write a version to OUT as the files a serving tool loads (digests verified), with the
    base fingerprint in its README and manifest."""
    from ..export import TARGETS, export

    res = export(registry(ctx), spec, fmt, out, overwrite=force, base_path=base_path)

    def text() -> Iterator[str]:
        yield f"exported {res.ref} for {TARGETS[res.format]} to {res.path} (verified)"
        yield f"  adapter  {res.adapter_path}  (served as {res.served_name})"
        yield (f"  base     {res.base_name or '-'}  fingerprint {res.base_fingerprint or 'not pinned'}"
               + ("  (checked)" if res.base_checked else ""))
        yield f"  see      {res.path / res.readme}"
        for w in res.warnings:
            yield f"  note     {w}"

    return Result(res.to_dict, text)

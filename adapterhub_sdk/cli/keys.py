"""``adapterhub keys``: signing keys. ``generate`` writes a private key to this user's key
directory (owner-only) and trusts its public key in the registry; ``trust`` adds another
signer's public key; ``revoke`` stops trusting one; ``list`` shows them."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import cli, examples, registry
from ._output import Result, emits, table


@cli.group(epilog=examples("adapterhub keys generate alice", "adapterhub keys trust bob.pub --name bob",
                           "adapterhub keys list --json", "adapterhub keys revoke bob"))
def keys() -> None:
    """Signing keys: private ones stay in your key directory, trusted public ones in the registry."""


@keys.command("generate", epilog=examples("adapterhub keys generate alice"))
@emits
@click.argument("name")
@click.pass_context
def keys_generate(ctx: click.Context, name: str) -> Result:
    """Make an ECDSA P-256 key NAME (private key 0600 in the key directory, never in the
    registry) and trust its public key in the registry."""
    from ..signing.keys import check_key_name, generate_key

    check_key_name(name)
    reg = registry(ctx)
    pk = generate_key(name)
    info = reg.trust_key(name, pk.public_pem)
    pub = pk.path.with_suffix(".pub")
    return Result({**info.to_dict(), "private_key": str(pk.path), "public_key": str(pub)}, [
        f"generated key {name} ({info.key_id[:16]})",
        f"  private key  {pk.path} (owner-only; never leaves this machine)",
        f"  public key   {pub} (trusted in this registry; give it to others: adapterhub keys trust)",
    ])


@keys.command("trust", epilog=examples("adapterhub keys trust ./bob.pub --name bob"))
@emits
@click.argument("public_key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, metavar="NAME", help="The signer's name in this registry.")
@click.pass_context
def keys_trust(ctx: click.Context, public_key_file: Path, name: str) -> Result:
    """Trust the PEM public key in PUBLIC_KEY_FILE as signer NAME, for every user of the registry."""
    info = registry(ctx).trust_key(name, public_key_file.read_bytes())
    return Result(info.to_dict, f"trusted {name} ({info.key_id[:16]})")


@keys.command("revoke", epilog=examples("adapterhub keys revoke bob"))
@emits
@click.argument("name")
@click.pass_context
def keys_revoke(ctx: click.Context, name: str) -> Result:
    """Stop trusting key NAME: its signatures count as revoked from now on."""
    info = registry(ctx).revoke_key(name)
    return Result(info.to_dict, f"revoked {name} ({info.key_id[:16]})")


@keys.command("list", epilog=examples("adapterhub keys list", "adapterhub keys list --json"))
@emits
@click.pass_context
def keys_list(ctx: click.Context) -> Result:
    """The signers' keys this registry knows, and whether you hold the private key."""
    infos = registry(ctx).keys()
    rows = [(k.name, k.key_id[:16], "revoked" if k.revoked else "trusted", "yes" if k.local else "")
            for k in infos]
    return Result([k.to_dict() for k in infos],
                  table(("NAME", "KEY ID", "STATUS", "PRIVATE KEY HERE"), rows) if rows else "no keys")


@cli.group(epilog=examples("adapterhub policy require-signed alice,bob", "adapterhub policy show"))
def policy() -> None:
    """Registry-wide policy, for every user of this registry."""


@policy.command("require-signed", epilog=examples("adapterhub policy require-signed alice bob",
                                                  "adapterhub policy require-signed --none"))
@emits
@click.argument("names", nargs=-1, metavar="NAME[,NAME]...")
@click.option("--none", "clear", is_flag=True, help="Require no signature (clear the policy).")
@click.pass_context
def policy_require_signed(ctx: click.Context, names: tuple[str, ...], clear: bool) -> Result:
    """Refuse to pull, attach or serve any version not signed by one of the keys NAME."""
    if bool(names) == clear:
        raise click.UsageError("give key names, or --none to clear the policy")
    got = registry(ctx).set_signing_policy([] if clear else names)
    return Result({"require_signed": got},
                  f"every version must be signed by {' or '.join(got)}" if got else "no signature required")


@policy.command("show", epilog=examples("adapterhub policy show --json"))
@emits
@click.pass_context
def policy_show(ctx: click.Context) -> Result:
    """The registry's policy and the one in force for this command (with ADAPTERHUB_REQUIRE_SIGNED)."""
    reg = registry(ctx)
    here, now = reg.signing_policy(), reg.required_signers()
    return Result({"require_signed": here, "in_force": now},
                  [f"registry: {'signed by ' + ' or '.join(here) if here else 'no signature required'}",
                   *(f"in force: signed by {' or '.join(n)}" for n in now)])

"""Which names a remote's pull may add versions to: one rule for every remote (``hf://``,
``oci://``, a plugin's)."""

from __future__ import annotations

from typing import Any

from .errors import AdapterHubError, NotFoundError
from .names import name_key


def check_pull_name(registry: Any, what: str, source: str, manifest: Any, name: str | None, *,
                    own: bool) -> None:
    """The rule every remote's pull follows: a remote at ``source`` (shown as ``what``) adds
    versions to a name held here from elsewhere only when told (``name``). ``own``: the
    remote may add to ``manifest.name`` without being told (it is the repo's own name, or
    the same version is here already)."""
    held = f"{manifest.name}@{manifest.version}"
    if name is not None:
        if name_key(name) != name_key(manifest.name):
            raise NotFoundError(f"{what} holds {held}, not {name}",
                                hint=f"pull with name='{manifest.name}' (--name {manifest.name}), or without a name")
        return
    if own:
        return
    origins = registry.origins(manifest.name) - {source}
    if origins:
        whence = ", ".join(sorted("publishes in this registry" if o is None else o for o in origins))
        raise AdapterHubError(
            f"{what} holds {held}, but {manifest.name} here already has versions from {whence}; "
            "a remote adds to a name held from elsewhere only when you say so",
            hint=f"if {source} is trusted to publish {manifest.name}, pull with name='{manifest.name}'")

"""``adapterhub plugins``: what is loaded, from where, and what it provides."""

from __future__ import annotations

from collections.abc import Iterator

from ._app import cli, examples
from ._output import Result, emits


@cli.command(epilog=examples("adapterhub plugins", "adapterhub plugins --json"))
@emits
def plugins() -> Result:
    """List loaded plugins, where they come from, and the methods they provide."""
    from ..plugins import methods, plugin_infos, runtimes
    from ..remotes import remote_factories
    from ..storage import storage_factories

    meths = methods()
    backends = runtimes()
    schemes = storage_factories()
    remotes = remote_factories()
    infos = plugin_infos()  # after the hooks ran: a plugin that failed in one shows its error

    def text() -> Iterator[str]:
        for i in infos:
            state = ", ".join(i.hooks)
            if i.error:
                state = (f"{state}; " if state else "") + f"FAILED: {i.error}"
            yield f"{i.name:<36} {i.source:<28} {state}"
        yield "methods:  " + ", ".join(m.name for m in meths)
        yield "runtimes: " + ", ".join(backends)
        yield "storage:  " + ", ".join(f"{s}://" for s in sorted(schemes))
        yield "remotes:  " + ", ".join(f"{s}://" for s in sorted(remotes))

    return Result(lambda: {
        "plugins": [i.to_dict() for i in infos],
        "methods": [{"name": m.name, "class": f"{type(m).__module__}.{type(m).__qualname__}"} for m in meths],
        "runtimes": [{"name": n, "limits": b.limits.to_dict()} for n, b in backends.items()],
        "storage": sorted(schemes), "remotes": sorted(remotes)}, text)

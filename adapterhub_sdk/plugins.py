"""The plugin manager: built-in plugins first, then entry points of group ``adapterhub``.

Loading is lazy and happens once. ``ADAPTERHUB_LOAD_PLUGINS`` (comma-separated
distribution or entry-point names; empty means none) limits which entry points load.
A plugin that fails to import is recorded with its error and skipped, so unrelated
commands keep working; ``adapterhub plugins`` shows it.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "adapterhub"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "adapterhub_sdk.storage",
    "adapterhub_sdk.runtime",
    "adapterhub_sdk.methods.generic",
    "adapterhub_sdk.methods.prompt",
    "adapterhub_sdk.methods.orthogonal",
    "adapterhub_sdk.methods.scaling",
    "adapterhub_sdk.methods.lycoris",
    "adapterhub_sdk.methods.lora",
)


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin" or "entry point <dist>==<version>"
    module: str
    hooks: list[str]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "module": self.module,
                "hooks": self.hooks, "error": self.error}


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_infos: list[PluginInfo] = []
_methods: list[Any] | None = None


def _allowlist() -> set[str] | None:
    raw = os.environ.get("ADAPTERHUB_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(h.name for h in pm.get_hookcallers(plugin) or [])


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    global _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []
        for modname in DEFAULT_PLUGINS:
            mod = importlib.import_module(modname)
            pm.register(mod, name=modname)
            infos.append(PluginInfo(modname, "builtin", modname, _hooks_of(pm, mod)))
        allow = _allowlist()
        for ep in entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            if allow is not None and ep.name not in allow and dist not in allow:
                continue
            source = f"entry point of {dist}" + (f"=={ep.dist.version}" if ep.dist else "")
            try:
                plugin = ep.load()
                if pm.is_registered(plugin):
                    continue
                pm.register(plugin, name=ep.name)
                try:
                    pm.check_pending()
                except pluggy.PluginValidationError as exc:
                    pm.unregister(plugin)
                    raise PluginError(f"plugin {ep.name!r}: {exc}") from exc
                infos.append(PluginInfo(ep.name, source, ep.value, _hooks_of(pm, plugin)))
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
                infos.append(PluginInfo(ep.name, source, ep.value, [], f"{type(exc).__name__}: {exc}"))
        pm.check_pending()
        _infos[:] = infos
        _pm = pm
        return pm


def plugin_infos() -> list[PluginInfo]:
    get_plugin_manager()
    return list(_infos)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object in this process (tests, notebooks). Validates hook names."""
    pm = get_plugin_manager()
    global _methods
    with _lock:
        pm.register(plugin, name=name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            raise PluginError(str(exc)) from exc
        _infos.append(PluginInfo(pm.get_name(plugin) or repr(plugin), "runtime",
                                 getattr(plugin, "__module__", "?") or "?", _hooks_of(pm, plugin)))
        _methods = None


def unregister_plugin(plugin: object) -> None:
    pm = get_plugin_manager()
    global _methods
    with _lock:
        name = pm.get_name(plugin)
        pm.unregister(plugin)
        _infos[:] = [i for i in _infos if i.name != name]
        _methods = None


def methods() -> list[Any]:
    """Registered AdapterMethod objects, in the order they are asked to detect."""
    global _methods
    with _lock:
        if _methods is None:
            found: list[Any] = []
            # pluggy calls later-registered plugins first: third-party before built-ins
            get_plugin_manager().hook.register_methods(register=found.append)
            _methods = found
        return list(_methods)


def call_hook(name: str, **kwargs: Any) -> list[Any]:
    """Call a hook; an exception inside a plugin becomes a PluginError naming the plugin."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, name)
    results = []
    for impl in reversed(caller.get_hookimpls()):
        try:
            fn = impl.function
            args = {k: kwargs[k] for k in impl.argnames}
            results.append((impl.plugin_name, fn(**args)))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {name}: {type(exc).__name__}: {exc}") from exc
    return results

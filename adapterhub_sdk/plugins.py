"""The plugin manager: built-in plugins first, then entry points of group ``adapterhub``.

Loading is lazy and happens once. ``ADAPTERHUB_LOAD_PLUGINS`` (comma-separated
distribution or entry-point names; empty means none) limits which entry points load; a
name that matches no installed plugin is warned about once.

A broken plugin must not break unrelated commands:

- a plugin that fails to import is recorded with its error and skipped;
- a plugin that raises in a *collection* hook (``register_methods``, ``register_runtimes``,
  ``register_storage``, ``register_commands``) contributes nothing from that hook; the
  error is recorded and warned about once (:class:`PluginWarning`), and other plugins'
  contributions are kept (:func:`collect` calls them plugin by plugin in pluggy's order,
  through pluggy's public API only);
- a registered method whose ``detect`` raises is skipped for that detection, with a warning;
- a plugin that raises in an *event* hook (``after_publish``, ``after_pull``) is warned
  about; the operation already happened and succeeds;
- a plugin that raises in a *policy* hook (``validate_publish``) stops the operation with
  a :class:`~adapterhub_sdk.errors.PluginError` naming the plugin.

``adapterhub plugins`` lists every plugin with its recorded error.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy
from pluggy import HookImpl

from . import hookspecs
from .errors import PluginError

GROUP = "adapterhub"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "adapterhub_sdk.blobs",
    "adapterhub_sdk.s3_blobs",
    "adapterhub_sdk.hub_remote",
    "adapterhub_sdk.oci.remote",
    "adapterhub_sdk.runtime",
    "adapterhub_sdk.methods.generic",
    "adapterhub_sdk.methods.prompt",
    "adapterhub_sdk.methods.orthogonal",
    "adapterhub_sdk.methods.scaling",
    "adapterhub_sdk.methods.lycoris",
    "adapterhub_sdk.methods.lora",
)
#: hooks that gather contributions: a failing plugin's contribution is skipped, with a warning
COLLECTION_HOOKS = frozenset({"register_methods", "register_runtimes", "register_storage", "register_remotes",
                              "register_commands"})
#: notifications after the fact: a failure is a warning, the operation succeeds
EVENT_HOOKS = frozenset({"after_publish", "after_pull"})
# every other hook (validate_publish) is a policy: a failure raises PluginError


class PluginWarning(UserWarning):
    """A plugin failed in a hook whose failure does not stop the operation."""


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
_failed: set[tuple[str, str]] = set()  # (plugin, where) already recorded and warned about


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}")


def _warn(message: str) -> None:
    warnings.warn(_one_line(message), PluginWarning, stacklevel=4)


def _record_failure(plugin: str, where: str, exc: BaseException, consequence: str) -> None:
    """Record ``plugin``'s failure in ``where`` on its PluginInfo and warn, once per process."""
    with _lock:
        if (plugin, where) in _failed:
            return
        _failed.add((plugin, where))
        text = f"{where}: {_describe(exc)}"
        for info in _infos:
            if info.name == plugin:
                info.error = f"{info.error}; {text}" if info.error else text
    _warn(f"plugin {plugin!r} failed in {where} ({_describe(exc)}); {consequence}")


def _readable_name(plugin: object) -> str:
    """A name for a plugin registered without one: a module's, class's or function's
    ``__name__``, else ``<module>.<class>`` of the object."""
    name = getattr(plugin, "__name__", None)
    if isinstance(name, str) and name:
        return name
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}".replace("<locals>.", "")


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, with readable default names for plugins registered without one."""

    def get_canonical_name(self, plugin: object) -> str:
        return _readable_name(plugin)


def collect(hook_name: str, **kwargs: Any) -> None:
    """Call the collection hook ``hook_name`` plugin by plugin, in pluggy's order (later-
    registered first, ``tryfirst``/``trylast`` honoured), so that a plugin that raises
    contributes nothing from it and the others' contributions are kept.

    Every collection hook is called through here (``methods()``, ``storage_factories()``,
    ``runtimes()``, the CLI's commands); ``pm.hook.<name>(...)`` called directly is pluggy's
    own call, where one failing plugin stops the rest. A hook with a wrapper implementation
    is pluggy's call too: the wrapper sees the whole call, so it cannot be split per plugin."""
    if hook_name not in COLLECTION_HOOKS:
        raise ValueError(f"{hook_name!r} is not a collection hook ({', '.join(sorted(COLLECTION_HOOKS))})")
    caller = getattr(get_plugin_manager().hook, hook_name)
    impls = caller.get_hookimpls()  # call order reversed: trylast .. tryfirst, wrappers last
    if any(i.wrapper or i.hookwrapper for i in impls):
        caller(**kwargs)
        return
    for impl in reversed(impls):
        _collect(impl, hook_name, kwargs)


def by_scheme(hook_name: str) -> dict[str, Any]:
    """What a ``register(scheme, factory)`` collection hook gathers (``register_storage``,
    ``register_remotes``): factories by lowercase URL scheme, the first registered for a
    scheme (third-party plugins before built-ins) winning."""
    found: dict[str, Any] = {}

    def register(scheme: str, factory: Any) -> None:
        found.setdefault(scheme.lower(), factory)

    collect(hook_name, register=register)
    return found


def _collect(impl: HookImpl, hook_name: str, kwargs: Mapping[str, Any]) -> None:
    """Call one plugin's collection hook; keep what it registered only if it returns."""
    args = {k: kwargs[k] for k in impl.argnames}
    pending: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real_register: Callable[..., Any] | None = args.get("register")
    if real_register is not None:
        args["register"] = lambda *a, **kw: pending.append((a, kw))
    group = args.get("cli")
    commands_before = dict(group.commands) if hook_name == "register_commands" and group is not None else None
    try:
        impl.function(**args)
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not break unrelated commands
        if commands_before is not None and group is not None:
            group.commands.clear()
            group.commands.update(commands_before)
        _record_failure(impl.plugin_name, hook_name, exc, "its contribution is skipped")
        return
    if real_register is None:
        return
    for a, kw in pending:
        if hook_name == "register_methods" and a:
            a = (_guard_method(a[0], impl.plugin_name), *a[1:])
        try:
            real_register(*a, **kw)
        except Exception as exc:  # noqa: BLE001 - e.g. a scheme that is not a string
            _record_failure(impl.plugin_name, hook_name, exc, "that registration is skipped")


_GUARD_MARK = "_adapterhub_guarded"


class _GuardedMethod:
    """Stands in for a method object whose ``detect`` cannot be replaced on the instance."""

    def __init__(self, method: Any, detect: Callable[..., Any]) -> None:
        self.__dict__["_method"] = method
        self.__dict__["detect"] = detect

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_method"], name)


def _guard_method(method: Any, plugin: str) -> Any:
    """Make ``method.detect`` return None (and warn, naming ``plugin``) instead of raising,
    so one broken method cannot stop every other method from being asked."""
    detect = getattr(method, "detect", None)
    if not callable(detect) or getattr(detect, _GUARD_MARK, False):
        return method
    where = f"method {getattr(method, 'name', '?')!r} detect"

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return detect(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - detect must not raise; skip this method
            _record_failure(plugin, where, exc, "the method is skipped for detection")
            return None

    setattr(guarded, _GUARD_MARK, True)
    try:
        method.detect = guarded  # shadows the class's detect on this instance only
    except (AttributeError, TypeError):
        try:
            object.__setattr__(method, "detect", guarded)  # frozen dataclasses
        except (AttributeError, TypeError):
            return _GuardedMethod(method, guarded)  # __slots__ without __dict__
    return method


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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
        pm = _PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []
        for modname in DEFAULT_PLUGINS:
            mod = importlib.import_module(modname)
            pm.register(mod, name=modname)
            infos.append(PluginInfo(modname, "builtin", modname, _hooks_of(pm, mod)))
        allow = _allowlist()
        wanted = {_normalize(a) for a in allow} if allow is not None else None
        available: set[str] = set()
        for ep in entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            available.update({ep.name, dist} - {"?"})
            if wanted is not None and _normalize(ep.name) not in wanted and _normalize(dist) not in wanted:
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
        for info in infos:  # said once per process: a policy that did not load does not apply
            if info.error and info.source != "builtin":
                _warn(f"plugin {info.name!r} did not load ({info.error}); what it provides is not active "
                      "('adapterhub plugins' lists every plugin)")
        if allow:
            known = {_normalize(n) for n in available} | {_normalize(m) for m in DEFAULT_PLUGINS}
            unknown = sorted(a for a in allow if _normalize(a) not in known)
            if unknown:
                _warn(f"ADAPTERHUB_LOAD_PLUGINS names no installed plugin: {', '.join(unknown)} "
                      f"(installed: {', '.join(sorted(available)) or 'none'})")
        return pm


def plugin_infos() -> list[PluginInfo]:
    """Loaded plugins; ``error`` is an import error or the hooks the plugin failed in so far."""
    get_plugin_manager()
    with _lock:
        return [PluginInfo(i.name, i.source, i.module, list(i.hooks), i.error) for i in _infos]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in this process (tests, notebooks). Validates hook names.
    Without ``name`` the plugin is named after its module, class or ``<module>.<class>``.
    Returns the name it was registered under."""
    pm = get_plugin_manager()
    global _methods
    with _lock:
        if name is None:
            base = _readable_name(plugin)
            name, n = base, 1
            while pm.has_plugin(name) or pm.is_blocked(name):
                n += 1
                name = f"{base}#{n}"
        pm.register(plugin, name=name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            raise PluginError(str(exc)) from exc
        _infos.append(PluginInfo(name, "runtime", getattr(plugin, "__module__", "?") or "?",
                                 _hooks_of(pm, plugin)))
        _methods = None
        return name


def unregister_plugin(plugin: object) -> None:
    pm = get_plugin_manager()
    global _methods
    with _lock:
        name = pm.get_name(plugin)
        pm.unregister(plugin)
        _infos[:] = [i for i in _infos if i.name != name]
        _failed.difference_update({k for k in _failed if k[0] == name})
        _methods = None


def methods() -> list[Any]:
    """Registered AdapterMethod objects, in the order they are asked to detect."""
    global _methods
    with _lock:
        if _methods is None:
            found: list[Any] = []
            # later-registered plugins first: third-party before built-ins
            collect("register_methods", register=found.append)
            _methods = found
        return list(_methods)


def detect_method(config: Mapping[str, Any]) -> tuple[Any, str]:
    """The method plugin that recognises an adapter config, and the variant it names."""
    from .errors import AdapterFormatError

    for method in methods():
        variant = method.detect(config)
        if variant:
            return method, variant
    raise AdapterFormatError(
        f"no installed method plugin recognises peft_type {config.get('peft_type')!r}",
        hint="install a plugin for this method ('adapterhub plugins' lists what is loaded)",
    )


def runtimes() -> dict[str, Any]:
    """Registered runtime backends by name (the first registered under a name wins)."""
    found: dict[str, Any] = {}

    def register(backend: Any) -> None:
        found.setdefault(backend.name, backend)

    collect("register_runtimes", register=register)
    return found


def get_runtime(name: str) -> Any:
    """The runtime backend called ``name``; NotFoundError naming the installed ones."""
    from .errors import NotFoundError

    available = runtimes()
    if name not in available:
        raise NotFoundError(f"no runtime named {name!r} (installed: {', '.join(sorted(available))})",
                            hint="install the runtime's plugin; 'adapterhub plugins' lists what is loaded")
    return available[name]


def call_hook(name: str, **kwargs: Any) -> list[Any]:
    """Call a hook, plugin by plugin, and return ``(plugin name, result)`` pairs.

    A failure in a collection hook skips that plugin's contribution and in an event hook
    (``after_publish``, ``after_pull``) is a :class:`PluginWarning` naming the plugin;
    either way the other plugins are still called. In any other hook (a policy such as
    ``validate_publish``) it raises a PluginError naming the plugin."""
    if name in COLLECTION_HOOKS:
        collect(name, **kwargs)
        return []
    caller = getattr(get_plugin_manager().hook, name)
    results = []
    for impl in reversed(caller.get_hookimpls()):
        try:
            args = {k: kwargs[k] for k in impl.argnames}
            results.append((impl.plugin_name, impl.function(**args)))
        except Exception as exc:
            if name in EVENT_HOOKS:
                _warn(f"plugin {impl.plugin_name!r} failed in {name} ({_describe(exc)}); "
                      "the operation itself succeeded")
                continue
            if isinstance(exc, PluginError):
                raise
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {name}: {type(exc).__name__}: {exc}") from exc
    return results

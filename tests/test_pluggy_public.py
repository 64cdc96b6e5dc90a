"""The SDK uses pluggy through its public API only: no private attribute of a pluggy object
read, called or overridden (``_hookexec``, ``_inner_hookexec``, ``_plugin2hookcallers``, ...),
so any pluggy 1.x keeps working. Failing plugins are isolated on our own calling path, in
pluggy's order."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pluggy
import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.plugins import PluginWarning, register_plugin, unregister_plugin

ROOT = Path(__file__).resolve().parents[1]
# names older or newer pluggy releases kept privately, beside what the installed one has
KNOWN_PRIVATE = {"_hookexec", "_inner_hookexec", "_plugin2hookcallers", "_nonwrappers", "_wrappers",
                 "_multicall", "_hookimpls", "_call_history", "_name2plugin", "_plugin_distinfo",
                 "_add_hookimpl", "_remove_plugin", "_verify_hook", "_implprefix", "_tracer"}
PLUGGY_CLASSES = tuple(n for n in pluggy.__all__ if isinstance(getattr(pluggy, n), type))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def pluggy_private_names() -> set[str]:
    """Every single-underscore attribute of pluggy's public classes and of live instances."""
    names = set(KNOWN_PRIVATE)
    pm = pluggy.PluginManager("probe")
    objs: list[object] = [getattr(pluggy, n) for n in PLUGGY_CLASSES] + [pm, pm.hook]
    for obj in objs:
        cls = obj if isinstance(obj, type) else type(obj)
        for c in inspect.getmro(cls):
            names.update(n for n in vars(c) if _private(n))
            names.update(n for n in getattr(c, "__slots__", ()) if _private(n))
        names.update(n for n in getattr(obj, "__dict__", {}) if _private(n))
    return names


def private_uses(source: str, filename: str, private: set[str]) -> list[str]:
    """Where ``source`` touches pluggy privately: a private pluggy attribute read or called
    (``getattr`` with its name included), a private method defined on a subclass of a pluggy
    class, or an import from a private pluggy module."""
    tree = ast.parse(source, filename)
    found: list[str] = []

    def at(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    def pluggy_base(cls: ast.ClassDef) -> bool:
        return any(ast.unparse(b).rsplit(".", 1)[-1] in PLUGGY_CLASSES for b in cls.bases)

    def visit(node: ast.AST, own_class: bool) -> None:
        if isinstance(node, ast.ClassDef):
            sub = pluggy_base(node)
            for item in node.body:
                if sub and isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                    at(item, f"overrides pluggy's private {item.name}")
            for child in ast.iter_child_nodes(node):
                visit(child, own_class=not sub)
            return
        if isinstance(node, ast.Attribute) and node.attr in private:
            mine = own_class and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not mine:
                at(node, f"uses pluggy's private {node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in private):
            at(node, f"{node.func.id}(..., {node.args[1].value!r})")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pluggy" and (
                any(_private(p) for p in node.module.split(".")[1:]) or any(_private(a.name) for a in node.names)):
            at(node, f"imports from pluggy privately ({node.module})")
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "pluggy" and any(_private(p) for p in a.name.split(".")[1:]):
                    at(node, f"imports {a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child, own_class)

    visit(tree, own_class=False)
    return found


def _sources() -> list[Path]:
    files = sorted((ROOT / "adapterhub_sdk").rglob("*.py"))
    files += sorted(p for p in (ROOT / "plugins").glob("*/adapterhub_*/**/*.py"))
    return files


def test_no_private_pluggy_api_in_the_sdk_or_its_plugins():
    private = pluggy_private_names()
    files = _sources()
    assert len(files) > 30 and any(f.name == "plugins.py" for f in files)
    found = [hit for f in files for hit in private_uses(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)),
                                                       private)]
    assert found == [], "pluggy's private API is used:\n" + "\n".join(found)


def test_the_check_sees_what_the_old_plugin_manager_did():
    """The override this SDK used to have, and the other forms, are caught."""
    private = pluggy_private_names()
    assert {"_hookexec", "_inner_hookexec", "_plugin2hookcallers"} <= private
    old = '''
import pluggy
from pluggy._hooks import HookImpl

class _PluginManager(pluggy.PluginManager):
    def _hookexec(self, hook_name, methods, kwargs, firstresult):
        return super()._hookexec(hook_name, methods, kwargs, firstresult)

def calls(pm):
    pm._inner_hookexec = None
    return getattr(pm, "_plugin2hookcallers")

class Mine:
    def __init__(self):
        self._result = 1  # our own attribute, not pluggy's
'''
    hits = private_uses(old, "old.py", private)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "imports from pluggy privately (pluggy._hooks)",
        "overrides pluggy's private _hookexec",
        "uses pluggy's private _hookexec",
        "uses pluggy's private _inner_hookexec",
        "getattr(..., '_plugin2hookcallers')",
    ]


# ------------------------------------------------- isolation in pluggy's order, on our path


class _Store:
    def __init__(self, url: str) -> None:
        self.url = url


def _factory(tag: str):
    def make(url: str) -> _Store:
        s = _Store(url)
        s.tag = tag  # type: ignore[attr-defined]
        return s

    return make


class _First:
    @ah.hookimpl(tryfirst=True)
    def register_storage(self, register):
        register("ordered", _factory("tryfirst"))


class _Plain:
    @ah.hookimpl
    def register_storage(self, register):
        register("ordered", _factory("plain"))
        register("plain-only", _factory("plain"))


class _LastAndBroken:
    @ah.hookimpl(trylast=True)
    def register_storage(self, register):
        register("last-only", _factory("broken"))
        raise RuntimeError("storage boom")


class _Last:
    @ah.hookimpl(trylast=True)
    def register_storage(self, register):
        register("file", _factory("trylast"))  # after the built-in: the built-in's file:// wins
        register("last-only", _factory("trylast"))


def test_collection_hooks_follow_tryfirst_and_trylast_and_isolate_failures():
    """The first registration of a scheme wins: a tryfirst plugin registered before a plain
    one is still asked first, a trylast one after the built-ins; a failing plugin is skipped."""
    from adapterhub_sdk.storage import open_blob_store, storage_factories

    first, plain, last, broken = _First(), _Plain(), _Last(), _LastAndBroken()
    for p in (first, plain, last, broken):  # registration order: later is asked earlier
        register_plugin(p)
    try:
        with pytest.warns(PluginWarning, match="storage boom"):
            found = storage_factories()
        assert open_blob_store("ordered://x").tag == "tryfirst"
        assert open_blob_store("plain-only://x").tag == "plain"
        # _LastAndBroken (registered later, so asked before _Last) raised: its half is dropped
        assert found["last-only"]("x").tag == "trylast"
        assert type(open_blob_store("file:///tmp/x")).__name__ == "BlobStore"
    finally:
        for p in (first, plain, last, broken):
            unregister_plugin(p)

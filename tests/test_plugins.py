"""The plugin core: every hook is exercised here, built-ins load through the manager,
entry points are discovered from real distribution metadata in a subprocess."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import click
import pytest

import adapterhub_sdk as ah
from adapterhub_sdk import hookspecs
from adapterhub_sdk.plugins import methods, register_plugin, unregister_plugin

from conftest import run_cli

HOOKS = sorted(n for n in dir(hookspecs) if not n.startswith("_") and hasattr(getattr(hookspecs, n), "adapterhub_spec"))
TESTED_HOOKS = {"register_methods", "register_commands", "validate_publish", "after_publish", "after_pull",
                "register_runtimes", "register_storage", "register_remotes"}  # remotes: test_extension_interfaces.py


def test_every_hook_has_a_test():
    assert set(HOOKS) == TESTED_HOOKS, "add a test for each new hook and list it in TESTED_HOOKS"


def test_every_hook_is_in_the_reference():
    doc = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for hook in HOOKS:
        assert f"### `{hook}(" in doc, f"docs/plugins.md lacks a reference entry for {hook}"


def test_builtin_lora_method_is_registered_through_the_manager():
    names = [m.name for m in methods()]
    assert names[0] == "lora" and names[-1] == "generic"


class _Policy:
    seen: list = []

    @ah.hookimpl
    def validate_publish(self, manifest, package):
        if manifest.license != "apache-2.0":
            return f"license {manifest.license!r} is not allowed"
        return None

    @ah.hookimpl
    def after_publish(self, manifest, created):
        self.seen.append(("publish", manifest.name, created))

    @ah.hookimpl
    def after_pull(self, manifest, path):
        self.seen.append(("pull", manifest.name, Path(path).is_dir()))


def test_policy_and_event_hooks(tmp_path, lora_dir, base_dir):
    plugin = _Policy()
    plugin.seen = []
    register_plugin(plugin, name="test-policy")
    try:
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        with pytest.raises(ah.AdapterHubError, match="test-policy.*license 'mit' is not allowed"):
            reg.publish(lora_dir, name="acme/x", version="1.0.0", license="mit")
        assert reg.list() == []
        reg.publish(lora_dir, name="acme/x", version="1.0.0", license="apache-2.0")
        reg.publish(lora_dir, name="acme/x", version="1.0.0", license="apache-2.0")
        reg.pull("acme/x@1.0.0", tmp_path / "out")
        assert plugin.seen == [("publish", "acme/x", True), ("publish", "acme/x", False),
                               ("pull", "acme/x", True)]
        reg.close()
    finally:
        unregister_plugin(plugin)


class _Tagged(ah.AdapterMethod):
    name = "tagged"

    def detect(self, config):
        return "tagged" if config.get("peft_type") == "LORA" and config.get("r") == 4 else None

    def requirements(self, config, tensors, base=None):
        return {"model.norm.weight": [None]}

    def describe(self, config, tensors):
        return {"trainable_params": 1, "note": "from a test plugin"}


class _MethodPlugin:
    @ah.hookimpl
    def register_methods(self, register):
        register(_Tagged())


def test_third_party_method_is_asked_before_builtins(lora_dir, base_dir):
    plugin = _MethodPlugin()
    register_plugin(plugin, name="test-method")
    try:
        pkg = ah.pack(lora_dir)
        assert pkg.method.name == "tagged" and pkg.requirements == {"model.norm.weight": [None]}
        assert pkg.check_base(ah.fingerprint(base_dir)) == []
    finally:
        unregister_plugin(plugin)
    assert ah.pack(lora_dir).method.name == "lora"


def test_misspelled_hook_is_refused_with_the_plugin_name():
    class Bad:
        @ah.hookimpl
        def validate_publsh(self, manifest, package):  # typo on purpose
            return None

    with pytest.raises(ah.PluginError, match="validate_publsh"):
        register_plugin(Bad(), name="bad-plugin")


def test_exception_in_hook_names_the_plugin(tmp_path, lora_dir):
    class Boom:
        @ah.hookimpl
        def validate_publish(self, manifest, package):
            raise RuntimeError("kaboom")

    plugin = Boom()
    register_plugin(plugin, name="boom-plugin")
    try:
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        with pytest.raises(ah.PluginError, match="boom-plugin.*validate_publish.*kaboom"):
            reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.close()
    finally:
        unregister_plugin(plugin)


def test_register_commands_hook():
    from adapterhub_sdk.cli import cli
    from adapterhub_sdk.plugins import call_hook

    class Cmd:
        @ah.hookimpl
        def register_commands(self, cli):
            @cli.command("hello-test")
            def hello():
                click.echo("hi")

    plugin = Cmd()
    register_plugin(plugin, name="cmd-plugin")
    try:
        call_hook("register_commands", cli=cli)
        assert "hello-test" in cli.commands
        from click.testing import CliRunner

        assert CliRunner().invoke(cli, ["hello-test"]).output == "hi\n"
    finally:
        cli.commands.pop("hello-test", None)
        unregister_plugin(plugin)


def _fake_dist(root: Path, dist: str, module: str, body: str) -> None:
    """A real installed-distribution layout: importlib.metadata finds its entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # wheel-normalised folder name
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[adapterhub]\n{dist} = {module}\n")


def test_entry_point_plugins_allowlist_and_broken_plugin(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _fake_dist(site, "ah-good", "ah_good_plugin", """
        import click
        import adapterhub_sdk as ah

        @ah.hookimpl
        def register_commands(cli):
            @cli.command("good-hello")
            def hello():
                click.echo("hello from a plugin")
    """)
    _fake_dist(site, "ah-broken", "ah_broken_plugin", "raise ImportError('this plugin is broken')\n")
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    env_all = {**env}
    env_all.pop("ADAPTERHUB_LOAD_PLUGINS", None)
    proc = run_cli("plugins", "--json", env={**env_all, "ADAPTERHUB_LOAD_PLUGINS": "ah-good,ah-broken"})
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert listed["ah-good"]["error"] is None and "register_commands" in listed["ah-good"]["hooks"]
    assert "this plugin is broken" in listed["ah-broken"]["error"]
    assert "ah-good" in listed["ah-good"]["source"] or "entry point" in listed["ah-good"]["source"]

    ok = run_cli("good-hello", env={**env, "ADAPTERHUB_LOAD_PLUGINS": "ah-good,ah-broken"})
    assert ok.returncode == 0 and ok.stdout == "hello from a plugin\n", ok.stderr
    # the broken one is named on stderr, once, in one line (a policy that did not load is not active)
    said = [line for line in ok.stderr.splitlines() if "ah-broken" in line]
    assert len(said) == 1 and said[0].startswith("warning: ") and "did not load" in said[0], ok.stderr
    assert "this plugin is broken" in said[0]

    none = run_cli("plugins", "--json", env={**env, "ADAPTERHUB_LOAD_PLUGINS": ""})
    names = {p["name"] for p in json.loads(none.stdout)["plugins"]}
    assert "ah-good" not in names and "ah-broken" not in names
    assert "adapterhub_sdk.methods.lora" in names

    only_good = run_cli("plugins", "--json", env={**env, "ADAPTERHUB_LOAD_PLUGINS": "ah-good"})
    names = {p["name"] for p in json.loads(only_good.stdout)["plugins"]}
    assert "ah-good" in names and "ah-broken" not in names


def test_python_executable_is_the_venv():
    assert Path(sys.executable).with_name("adapterhub").exists()


class _TinyRuntime:
    @ah.hookimpl
    def register_runtimes(self, register):
        from adapterhub_sdk.runtime import RuntimeBackend, RuntimeLimits

        register(RuntimeBackend("tiny", RuntimeLimits(methods=frozenset({"lora"}), max_rank=2,
                                                       unsupported_variants=frozenset({"dora"}))))


def test_runtime_limits_decide_before_loading(tmp_path, lora_dir, base_dir):
    plugin = _TinyRuntime()
    register_plugin(plugin, name="tiny-runtime")
    try:
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        reg.publish(lora_dir, name="acme/r4", version="1.0.0", base=base_dir)  # rank 4
        assert [h.verdict for h in reg.resolve(base_dir, runtime="transformers")] == ["exact"]
        assert reg.resolve(base_dir, runtime="tiny") == []
        (hit,) = reg.resolve(base_dir, runtime="tiny", include_incompatible=True)
        assert hit.verdict == "incompatible" and "rank <= 2" in hit.reasons[0] and "rank 4" in hit.reasons[0]
        with pytest.raises(ah.NotFoundError, match="no runtime named 'nope'"):
            reg.resolve(base_dir, runtime="nope")
        reg.close()
    finally:
        unregister_plugin(plugin)


class _MemoryStore:
    """A storage plugin's store kept in a dict: enough to prove the core only uses the API."""

    def __init__(self, url):
        self.url = url
        self.data: dict[str, bytes] = {}

    def __str__(self):
        return self.url

    def put_file(self, source, digest):
        import hashlib

        if digest in self.data:
            return 0
        raw = Path(source).read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ah.IntegrityError("changed while stored")
        self.data[digest] = raw
        return len(raw)

    def copy_verified(self, digest, out):
        import hashlib

        raw = self.data[digest]
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ah.IntegrityError(f"blob {digest[:12]} is corrupt")
        out.write(raw)
        return len(raw)

    def verify(self, digest):
        import hashlib

        if digest not in self.data:
            return "missing"
        return None if hashlib.sha256(self.data[digest]).hexdigest() == digest else "corrupt"

    def size(self, digest):
        return len(self.data.get(digest, b""))

    def iter_digests(self):
        return iter(sorted(self.data))

    def age(self, digest):
        return 1e9

    def delete(self, digest):
        return len(self.data.pop(digest, b""))

    def clean_temp(self, older_than, dry_run=False):
        return 0


def test_storage_plugin_by_url_scheme(tmp_path, lora_dir, base_dir):
    stores = {}

    class Plugin:
        @ah.hookimpl
        def register_storage(self, register):
            register("mem", lambda url: stores.setdefault(url, _MemoryStore(url)))

    plugin = Plugin()
    register_plugin(plugin, name="mem-storage")
    try:
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs="mem://team")
        reg.publish(lora_dir, name="acme/m", version="1.0.0", base=base_dir)
        store = stores["mem://team"]
        assert len(store.data) == len(list(Path(lora_dir).glob("*.*")))
        assert not (tmp_path / "blobs").exists()
        out = reg.pull("acme/m@1.0.0", tmp_path / "out")
        assert (out / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
        assert reg.verify().ok
        victim = next(iter(store.data))
        store.data[victim] = b"tampered"
        assert not reg.verify().ok
        with pytest.raises(ah.IntegrityError):
            reg.pull("acme/m@1.0.0", tmp_path / "out2")
        assert not (tmp_path / "out2").exists()
        reg.close()
        with pytest.raises(ah.NotFoundError, match="no blob storage for nosuch://"):
            ah.Registry.open(f"sqlite:///{tmp_path / 'r2.db'}", blobs="nosuch://bucket")
    finally:
        unregister_plugin(plugin)


# ------------------------------------------------- a broken plugin does not break the rest


class _Crashy(ah.AdapterMethod):
    name = "crashy"

    def detect(self, config):
        raise RuntimeError("detect crashed")


class _CrashyCollections:
    """Registers something, then raises, in every collection hook."""

    @ah.hookimpl
    def register_methods(self, register):
        register(_Tagged())  # half done: must not be kept
        raise RuntimeError("methods boom")

    @ah.hookimpl
    def register_runtimes(self, register):
        from adapterhub_sdk.runtime import RuntimeBackend, RuntimeLimits

        register(RuntimeBackend("half", RuntimeLimits()))
        raise RuntimeError("runtimes boom")

    @ah.hookimpl
    def register_storage(self, register):
        register("half", _MemoryStore)
        raise RuntimeError("storage boom")

    @ah.hookimpl
    def register_commands(self, cli):
        @cli.command("half-command")
        def half():
            pass

        raise RuntimeError("commands boom")


def _plugin_warnings(fn, *args, **kwargs):
    import warnings

    from adapterhub_sdk.plugins import PluginWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_failing_collection_hooks_skip_that_plugin_only(tmp_path, lora_dir, base_dir):
    from adapterhub_sdk.cli import cli
    from adapterhub_sdk.plugins import call_hook, plugin_infos
    from adapterhub_sdk.runtime import runtimes
    from adapterhub_sdk.storage import storage_factories

    good, bad = _TinyRuntime(), _CrashyCollections()
    register_plugin(good, name="tiny-runtime")
    register_plugin(bad, name="crashy-plugin")
    try:
        meths, warned = _plugin_warnings(methods)
        assert [m.name for m in meths][0] == "lora" and "tagged" not in [m.name for m in meths]
        assert len(warned) == 1 and "'crashy-plugin' failed in register_methods" in warned[0]
        assert "methods boom" in warned[0] and "\n" not in warned[0]

        backends, warned = _plugin_warnings(runtimes)
        assert {"transformers", "tiny"} <= set(backends) and "half" not in backends
        assert len(warned) == 1 and "'crashy-plugin' failed in register_runtimes" in warned[0]
        assert _plugin_warnings(runtimes)[1] == []  # recorded and warned once per process

        schemes, warned = _plugin_warnings(storage_factories)
        assert "file" in schemes and "half" not in schemes
        assert len(warned) == 1 and "register_storage" in warned[0]

        _, warned = _plugin_warnings(call_hook, "register_commands", cli=cli)
        assert "half-command" not in cli.commands and "publish" in cli.commands
        assert len(warned) == 1 and "register_commands" in warned[0]

        (info,) = [i for i in plugin_infos() if i.name == "crashy-plugin"]
        for hook in ("register_methods", "register_runtimes", "register_storage", "register_commands"):
            assert hook in info.hooks and f"{hook}: RuntimeError" in info.error

        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        man = reg.publish(lora_dir, name="acme/x", version="1.0.0", base=base_dir)
        assert man.created and man.manifest.method["type"] == "lora"
        assert [h.verdict for h in reg.resolve(base_dir, runtime="tiny", include_incompatible=True)] == ["incompatible"]
        reg.close()
    finally:
        cli.commands.pop("half-command", None)
        unregister_plugin(bad)
        unregister_plugin(good)


class _CrashyMethodPlugin:
    @ah.hookimpl
    def register_methods(self, register):
        register(_Crashy())


def test_method_whose_detect_raises_is_skipped_with_its_plugin_named(tmp_path, lora_dir):
    from adapterhub_sdk.plugins import plugin_infos

    plugin = _CrashyMethodPlugin()
    register_plugin(plugin, name="crashy-method")
    try:
        pkg, warned = _plugin_warnings(ah.pack, lora_dir)
        assert pkg.method.name == "lora"
        assert len(warned) == 1
        assert "'crashy-method' failed in method 'crashy' detect (RuntimeError: detect crashed)" in warned[0]
        assert "skipped for detection" in warned[0]
        assert "crashy" in [m.name for m in methods()] and isinstance(methods()[0], _Crashy)
        (info,) = [i for i in plugin_infos() if i.name == "crashy-method"]
        assert "detect" in info.error and "detect crashed" in info.error
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
        assert [v.name for v in reg.list()] == ["acme/x"]
        reg.close()
    finally:
        unregister_plugin(plugin)


class _NoisyEvents:
    @ah.hookimpl
    def after_publish(self, manifest, created):
        raise ConnectionError("webhook down")

    @ah.hookimpl
    def after_pull(self, manifest, path):
        raise ConnectionError("webhook down")


def test_failing_event_hooks_warn_and_the_operation_succeeds(tmp_path, lora_dir):
    plugin, recorder = _NoisyEvents(), _Policy()
    recorder.seen = []
    register_plugin(recorder, name="test-policy")
    register_plugin(plugin, name="noisy-events")
    try:
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        _, warned = _plugin_warnings(reg.publish, lora_dir, name="acme/x", version="1.0.0", license="apache-2.0")
        assert warned == ["plugin 'noisy-events' failed in after_publish (ConnectionError: webhook down); "
                          "the operation itself succeeded"]
        assert [v.version for v in reg.versions("acme/x")] == ["1.0.0"]
        out, warned = _plugin_warnings(reg.pull, "acme/x@1.0.0", tmp_path / "out")
        assert len(warned) == 1 and "'noisy-events' failed in after_pull" in warned[0]
        assert (out / "adapter_model.safetensors").exists()
        assert recorder.seen == [("publish", "acme/x", True), ("pull", "acme/x", True)]  # others still called
        with pytest.raises(ah.AdapterHubError, match="test-policy.*license 'mit'"):  # a policy still blocks
            reg.publish(lora_dir, name="acme/y", version="1.0.0", license="mit")
        reg.close()
    finally:
        unregister_plugin(plugin)
        unregister_plugin(recorder)


def test_plugin_registered_without_a_name_gets_a_readable_one(tmp_path, lora_dir):
    from adapterhub_sdk.plugins import plugin_infos

    class Boom:
        @ah.hookimpl
        def validate_publish(self, manifest, package):
            raise RuntimeError("kaboom")

    first, second = Boom(), Boom()
    name = register_plugin(first)
    try:
        assert name == "test_plugins.test_plugin_registered_without_a_name_gets_a_readable_one.Boom"
        assert register_plugin(second) == name + "#2"
        assert {name, name + "#2"} <= {i.name for i in plugin_infos()}
        reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
        with pytest.raises(ah.PluginError, match=r"plugin 'test_plugins\..*Boom(#2)?' failed in validate_publish"):
            reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.close()
    finally:
        unregister_plugin(second)
        unregister_plugin(first)


def test_broken_plugins_in_the_cli(tmp_path, lora_dir):
    """Real entry-point plugins failing in a collection hook, in detect and in after_publish:
    publish and 'adapterhub plugins' still work, with one warning line per failure."""
    site = tmp_path / "site"
    site.mkdir()
    _fake_dist(site, "ah-crashy", "ah_crashy_plugin", """
        import adapterhub_sdk as ah

        @ah.hookimpl
        def register_methods(register):
            raise RuntimeError("methods boom")

        @ah.hookimpl
        def register_runtimes(register):
            raise RuntimeError("runtimes boom")
    """)
    _fake_dist(site, "ah-detect", "ah_detect_plugin", """
        import adapterhub_sdk as ah

        class Crashy(ah.AdapterMethod):
            name = "crashy"

            def detect(self, config):
                raise KeyError("detect crashed")

        @ah.hookimpl
        def register_methods(register):
            register(Crashy())

        @ah.hookimpl
        def after_publish(manifest, created):
            raise ConnectionError("webhook down")
    """)
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "ADAPTERHUB_LOAD_PLUGINS": "ah-crashy,ah-detect"}

    pub = run_cli("publish", str(lora_dir), "--name", "acme/x", "--version", "1.0.0", env=env)
    assert pub.returncode == 0, pub.stderr
    lines = [line for line in pub.stderr.splitlines() if "is published unpinned" not in line]  # no --base: ours
    assert lines == [
        "warning: plugin 'ah-crashy' failed in register_methods (RuntimeError: methods boom); "
        "its contribution is skipped",
        "warning: plugin 'ah-detect' failed in method 'crashy' detect (KeyError: 'detect crashed'); "
        "the method is skipped for detection",
        "warning: plugin 'ah-detect' failed in after_publish (ConnectionError: webhook down); "
        "the operation itself succeeded",
    ], pub.stderr
    assert run_cli("list", "--json", env=env).stdout.count("acme/x") >= 1

    text = run_cli("plugins", env=env)
    assert text.returncode == 0, text.stderr
    (row,) = [r for r in text.stdout.splitlines() if r.startswith("ah-crashy ")]
    assert "register_methods, register_runtimes; FAILED: register_methods: RuntimeError: methods boom" in row
    assert "register_runtimes: RuntimeError: runtimes boom" in row
    assert "warning: plugin 'ah-crashy' failed in register_runtimes" in text.stderr

    js = run_cli("plugins", "--json", env=env)
    assert js.returncode == 0, js.stderr
    listed = {p["name"]: p for p in json.loads(js.stdout)["plugins"]}
    assert "register_methods: RuntimeError: methods boom" in listed["ah-crashy"]["error"]
    assert listed["ah-detect"]["error"] is None  # nothing asked it to detect in this process
    assert "crashy" in [m["name"] for m in json.loads(js.stdout)["methods"]]


def test_unknown_names_in_load_plugins_are_warned_about(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _fake_dist(site, "ah-good", "ah_good_plugin", """
        import click
        import adapterhub_sdk as ah

        @ah.hookimpl
        def register_commands(cli):
            @cli.command("good-hello")
            def hello():
                click.echo("hello from a plugin")
    """)
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    typo = run_cli("good-hello", env={**env, "ADAPTERHUB_LOAD_PLUGINS": "ah-goood, nope"})
    assert typo.returncode != 0  # nothing loaded: the command does not exist
    warned = [ln for ln in typo.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1, typo.stderr
    assert "ADAPTERHUB_LOAD_PLUGINS names no installed plugin: ah-goood, nope" in warned[0]
    assert "(installed: " in warned[0] and "ah-good" in warned[0].split("installed: ")[1]

    ok = run_cli("good-hello", env={**env, "ADAPTERHUB_LOAD_PLUGINS": "ah_good,adapterhub_sdk.methods.lora"})
    assert ok.returncode == 0 and ok.stdout == "hello from a plugin\n" and ok.stderr == "", ok.stderr

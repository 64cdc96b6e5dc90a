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
                "register_runtimes", "register_storage"}


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
        with pytest.raises(ah.NotFoundError, match="no blob storage for s3://"):
            ah.Registry.open(f"sqlite:///{tmp_path / 'r2.db'}", blobs="s3://bucket")
    finally:
        unregister_plugin(plugin)

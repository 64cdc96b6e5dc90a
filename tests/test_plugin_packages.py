"""Two third-party plugin distributions under plugins/ (bitfit, policy) change what ``adapterhub`` does
only by being installed: each is really built and installed by pip (``pip install
--no-deps --target DIR plugins/<dist>``) and the real CLI runs in a subprocess with
``PYTHONPATH=DIR`` and ``ADAPTERHUB_LOAD_PLUGINS`` unset, so entry points are discovered
from the installed metadata exactly as for a user.

"Uninstalled" is shown twice: the same CLI without DIR on ``PYTHONPATH``, and, after
``shutil.rmtree(DIR)`` (what ``pip uninstall`` does to a ``--target`` install: remove the
files), with the same ``PYTHONPATH`` as before.

The CLI runs in a scratch virtual environment that links every entry of this venv's
site-packages except the two plugin distributions: CI also installs them into the venv
(``pip install -e``), and that copy must not be what the test sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import adapterhub_sdk as ah

ROOT = Path(__file__).resolve().parents[1]
DISTS = {"adapterhub-bitfit": "adapterhub_bitfit", "adapterhub-policy": "adapterhub_policy"}
pytestmark = pytest.mark.slow


def _is_plugin_entry(name: str) -> bool:
    """A site-packages entry that belongs to one of the plugin distributions (package, dist-info,
    editable .pth / finder)."""
    norm = name.lower().replace("-", "_")
    return any(module in norm for module in DISTS.values())


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A Python with adapterhub_sdk and its dependencies but neither plugin distribution."""
    root = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not _is_plugin_entry(entry.name) and not (purelib / entry.name).exists():
            (purelib / entry.name).symlink_to(entry)
    probe = subprocess.run(
        [python, "-c", "import adapterhub_sdk, importlib.metadata as m; "
                       "print(sorted(e.name for e in m.entry_points(group='adapterhub')))"],
        capture_output=True, text=True, cwd=root)
    assert probe.returncode == 0, probe.stderr
    assert not any(d in probe.stdout for d in DISTS), f"plugins still visible: {probe.stdout}"
    return python


def _setuptools_here() -> bool:
    try:
        return int(version("setuptools").split(".")[0]) >= 77
    except (PackageNotFoundError, ValueError):
        return False


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """dist -> a directory it was installed into by pip (built from a copy of plugins/<dist>,
    so the build leaves nothing in the source tree)."""
    out: dict[str, Path] = {}
    for dist in DISTS:
        work = tmp_path_factory.mktemp(f"install-{dist}")
        src = shutil.copytree(ROOT / "plugins" / dist, work / "src",
                              ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
               "--no-input", "--quiet", "--target", str(work / "site")]
        if _setuptools_here():  # build offline with this venv's setuptools
            cmd += ["--no-build-isolation", "--no-index"]
        proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"pip install {dist} failed:\n{proc.stdout}\n{proc.stderr}"
        assert (work / "site" / DISTS[dist] / "__init__.py").is_file()
        out[dist] = work / "site"
    return out


def _cli(python: Path, *args: object, pythonpath: tuple[Path, ...] = (), policy: Path | None = None,
         cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI (``python -m adapterhub_sdk``), entry points not filtered."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONPATH", "ADAPTERHUB_POLICY")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    if policy is not None:
        env["ADAPTERHUB_POLICY"] = str(policy)
    return subprocess.run([str(python), "-m", "adapterhub_sdk", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)


def _listed(python: Path, cwd: Path, *pythonpath: Path) -> tuple[dict[str, dict], list[str]]:
    proc = _cli(python, "plugins", "--json", pythonpath=pythonpath, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return {p["name"]: p for p in data["plugins"]}, [m["name"] for m in data["methods"]]


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.strip()


def _bitfit_adapter(base_dir: Path, out: Path) -> Path:
    """A BitFit adapter in the plugin's documented format, written without the plugin."""
    shapes = ah.fingerprint(base_dir).shapes
    g = torch.Generator().manual_seed(0)
    tensors = {f"base_model.model.{name[: -len('.weight')]}.bias": torch.randn(shape[0], generator=g)
               for name, shape in shapes.items() if name.endswith(("q_proj.weight", "v_proj.weight"))}
    assert len(tensors) == 4
    out.mkdir()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "BITFIT", "base_model_name_or_path": str(base_dir), "target_modules": ["q_proj", "v_proj"]}))
    return out


def _refused_for_bitfit(line: str) -> bool:
    """Without a BitFit method the core refuses a BITFIT adapter pinned to a base. Today the
    generic PEFT fallback claims every peft_type and fails in PEFT; were it to decline
    unknown types, detect_method's own message would come instead."""
    return "'BITFIT'" in line and ("no installed method plugin recognises peft_type 'BITFIT'" in line
                                   or "PEFT cannot apply this adapter" in line)


def test_bitfit_distribution_install_and_uninstall(tmp_path, base_dir, clean_python, installed):
    site = Path(shutil.copytree(installed["adapterhub-bitfit"], tmp_path / "site-bitfit"))
    adapter = _bitfit_adapter(base_dir, tmp_path / "bitfit")
    reg = ("--registry", f"sqlite:///{tmp_path / 'r.db'}")

    def publish(ver: str, *pythonpath: Path) -> subprocess.CompletedProcess:
        return _cli(clean_python, *reg, "publish", adapter, "--name", "acme/bitfit", "--version", ver,
                    "--base", base_dir, pythonpath=pythonpath, cwd=tmp_path)

    # not installed
    plugins, methods = _listed(clean_python, tmp_path)
    assert "adapterhub-bitfit" not in plugins and "bitfit" not in methods
    assert _refused_for_bitfit(_one_line_error(publish("1.0.0")))

    # installed
    plugins, methods = _listed(clean_python, tmp_path, site)
    entry = plugins["adapterhub-bitfit"]
    assert entry["error"] is None and entry["hooks"] == ["register_methods"]
    assert entry["source"] == "entry point of adapterhub-bitfit==0.1.0"
    assert entry["module"] == "adapterhub_bitfit"
    assert methods.index("bitfit") < methods.index("generic")  # asked before the generic fallback
    ok = publish("1.0.0", site)
    assert ok.returncode == 0, ok.stderr
    hits = _cli(clean_python, *reg, "resolve", "--base", base_dir, "--json", pythonpath=(site,), cwd=tmp_path)
    assert [(h["name"], h["version"], h["verdict"], h["method"]) for h in json.loads(hits.stdout)] == \
        [("acme/bitfit", "1.0.0", "exact", "bitfit")]

    # uninstalled: the same PYTHONPATH, the installed files removed
    shutil.rmtree(site)
    plugins, methods = _listed(clean_python, tmp_path, site)
    assert "adapterhub-bitfit" not in plugins and "bitfit" not in methods
    assert _refused_for_bitfit(_one_line_error(publish("1.0.1", site)))


def test_policy_distribution_install_and_uninstall(tmp_path, lora_dir, clean_python, installed):
    site = Path(shutil.copytree(installed["adapterhub-policy"], tmp_path / "site-policy"))
    policy = tmp_path / "team-policy.toml"
    policy.write_text('allowed_licenses = ["apache-2.0"]\n')
    reg = ("--registry", f"sqlite:///{tmp_path / 'r.db'}")

    def publish(ver: str, lic: str, *pythonpath: Path) -> subprocess.CompletedProcess:
        return _cli(clean_python, *reg, "publish", lora_dir, "--name", "acme/x", "--version", ver,
                    "--license", lic, pythonpath=pythonpath, policy=policy, cwd=tmp_path)

    # not installed: ADAPTERHUB_POLICY alone does nothing
    plugins, _ = _listed(clean_python, tmp_path)
    assert "adapterhub-policy" not in plugins
    assert publish("1.0.0", "mit").returncode == 0

    # installed
    plugins, _ = _listed(clean_python, tmp_path, site)
    entry = plugins["adapterhub-policy"]
    assert entry["error"] is None and entry["hooks"] == ["validate_publish"]
    assert entry["source"] == "entry point of adapterhub-policy==0.1.0"
    assert _one_line_error(publish("1.0.1", "mit", site)) == (
        "error: publish rejected by policy 'adapterhub-policy': "
        "rule allowed_licenses: license 'mit' is not in [apache-2.0]")
    ok = publish("1.0.1", "apache-2.0", site)
    assert ok.returncode == 0, ok.stderr

    # not on PYTHONPATH: accepted again; then the installed files removed: still accepted
    assert publish("1.0.2", "mit").returncode == 0
    shutil.rmtree(site)
    assert "adapterhub-policy" not in _listed(clean_python, tmp_path, site)[0]
    assert publish("1.0.3", "mit", site).returncode == 0


def test_both_distributions_together(tmp_path, base_dir, clean_python, installed):
    sites = (installed["adapterhub-bitfit"], installed["adapterhub-policy"])
    plugins, methods = _listed(clean_python, tmp_path, *sites)
    assert {"adapterhub-bitfit", "adapterhub-policy"} <= set(plugins) and "bitfit" in methods
    adapter = _bitfit_adapter(base_dir, tmp_path / "bitfit")
    policy = tmp_path / "team-policy.toml"
    policy.write_text('allowed_licenses = ["apache-2.0"]\nrequire_description = true\n')
    reg = ("--registry", f"sqlite:///{tmp_path / 'r.db'}")
    base = ("publish", adapter, "--name", "acme/bitfit", "--version", "1.0.0", "--base", base_dir)
    bad = _cli(clean_python, *reg, *base, "--license", "apache-2.0", pythonpath=sites, policy=policy,
               cwd=tmp_path)
    assert "rule require_description: a description is required" in _one_line_error(bad)
    good = _cli(clean_python, *reg, *base, "--license", "apache-2.0", "--description", "bias-only",
                pythonpath=sites, policy=policy, cwd=tmp_path)
    assert good.returncode == 0, good.stderr

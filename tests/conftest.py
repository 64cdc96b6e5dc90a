"""Shared fixtures: small real models saved by transformers, real adapters saved by PEFT,
registries on real SQLite and (when ADAPTERHUB_TEST_POSTGRES_URL is set) a real PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("ADAPTERHUB_TEST_POSTGRES_URL")
ADAPTERHUB = str(Path(sys.executable).with_name("adapterhub"))


def _llama(hidden: int = 32, layers: int = 2, vocab: int = 64, seed: int = 0, tie: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


def save_base(path: Path, **kw) -> Path:
    _llama(**kw).save_pretrained(path)
    return path


def save_lora(base_dir: Path, out: Path, *, seed: int = 0, r: int = 4, targets=("q_proj", "v_proj"),
              **lora_kw) -> Path:
    """A real LoRA adapter: PEFT wraps the saved base, weights perturbed so it is not a no-op."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # a string is PEFT's regex (or "all-linear") form and stays as it is
    config = {"r": r, "lora_alpha": 2 * r,  # lora_kw may override lora_alpha too
              "target_modules": targets if isinstance(targets, str) else list(targets), **lora_kw}
    peft_model = get_peft_model(model, LoraConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(out)
    return out


def save_perturbed(model: Any, config: Any, out: Path, *, seed: int, scale: float = 0.3) -> Path:
    """``model`` wrapped by PEFT with ``config``, every trainable tensor moved off its init by
    ``randn * scale`` (seeded: many inits are a no-op, lora_B is zero), saved by PEFT."""
    import torch
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    peft_model.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: Any = None, what: str = "the server", timeout: float = 30) -> None:
    """Until something accepts connections on loopback ``port``; fails the test if ``proc``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start (exit {None if proc is None else proc.poll()})")
            time.sleep(0.1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own ADAPTERHUB_HOME; entry-point plugins are not autoloaded."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "")
    monkeypatch.delenv("ADAPTERHUB_REGISTRY_URL", raising=False)
    monkeypatch.delenv("ADAPTERHUB_BLOBS", raising=False)
    monkeypatch.delenv("ADAPTERHUB_REQUIRE_SIGNED", raising=False)  # a signing policy of the user's own
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def base_dir(models_dir) -> Path:
    """A small Llama base saved by transformers (seed 0)."""
    return save_base(models_dir / "base", seed=0)


@pytest.fixture(scope="session")
def base_other_weights(models_dir) -> Path:
    """Same architecture as ``base_dir``, other weights: adapters fit it structurally."""
    return save_base(models_dir / "base_other_weights", seed=1)


@pytest.fixture(scope="session")
def base_other_shape(models_dir) -> Path:
    """A Llama of another width: LoRA adapters of ``base_dir`` must be refused."""
    return save_base(models_dir / "base_other_shape", hidden=48, seed=0)


@pytest.fixture(scope="session")
def lora_dir(models_dir, base_dir) -> Path:
    return save_lora(base_dir, models_dir / "lora_a", seed=1)


@pytest.fixture(scope="session")
def lora_dir_b(models_dir, base_dir) -> Path:
    return save_lora(base_dir, models_dir / "lora_b", seed=2, targets=("k_proj", "o_proj"))


def _pg_database() -> str:
    """A fresh database on the PostgreSQL server for one test."""
    import sqlalchemy as sa

    assert POSTGRES_URL
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    name = "ah_test_" + uuid.uuid4().hex[:12]
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    head, _, _ = POSTGRES_URL.rpartition("/")
    return f"{head}/{name}"


def _pg_drop(url: str) -> None:
    import sqlalchemy as sa

    name = url.rpartition("/")[2]
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request, tmp_path):
    """A new, empty registry database: SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need ADAPTERHUB_TEST_POSTGRES_URL (CI sets it)")
    url = _pg_database()
    try:
        yield url
    finally:
        _pg_drop(url)


@pytest.fixture
def registry(registry_url, tmp_path):
    import adapterhub_sdk as ah

    reg = ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    try:
        yield reg
    finally:
        reg.close()


def run_cli(*args: str, env: dict | None = None, check: bool = False, timeout: float = 300,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``adapterhub`` entry point as a user would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([ADAPTERHUB, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"adapterhub {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# One local Hub server (olah) per test session, shared by every module that uses it.
from hubserver import hub_env, hub_server  # noqa: E402, F401


# One CNCF distribution registry per test module that pushes or pulls ``oci://`` (Debian's
# docker-registry on loopback, tests/ociserver.py), and the two machines' registries those
# tests move artifacts between.
@pytest.fixture(scope="module")
def oci(tmp_path_factory):
    from ociserver import REGISTRY, SKIP_REASON, start_registry

    if REGISTRY is None:
        pytest.skip(SKIP_REASON)
    srv = start_registry(tmp_path_factory.mktemp("oci"))
    yield srv
    srv.stop()


@pytest.fixture
def reg(tmp_path):
    """A publisher's registry: its own catalog and blobs."""
    import adapterhub_sdk as ah

    r = ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pub-blobs")
    yield r
    r.close()


@pytest.fixture
def other(tmp_path):
    """A second machine's registry: its own catalog and blobs, nothing shared."""
    import adapterhub_sdk as ah

    r = ah.Registry.open(f"sqlite:///{tmp_path / 'other.db'}", blobs=tmp_path / "other-blobs")
    yield r
    r.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a busy machine. A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

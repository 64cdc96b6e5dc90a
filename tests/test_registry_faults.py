"""The registry under faults: racing first opens of new databases, a database server that
accepts connections but never answers, and homes that cannot be written."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ADAPTERHUB, POSTGRES_URL, _pg_database, _pg_drop, run_cli

# Opens (and closes) one registry per round, all processes of a round at the same moment:
# each waits for the round's barrier file, then opens; it prints one line per round.
OPENER = r"""
import os, sys, time
import adapterhub_sdk.registry as r
try:
    import psycopg  # noqa: F401
except ImportError:
    pass
barrier, blobs, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
open(barrier + ".ready." + str(os.getpid()), "w").close()
for i, url in enumerate(urls):
    deadline = time.monotonic() + 120
    while not os.path.exists(f"{barrier}.{i}"):
        if time.monotonic() > deadline:
            sys.exit("barrier never opened")
        time.sleep(0.0005)
    try:
        r.Registry.open(url, blobs=blobs).close()
        print("ok", flush=True)
    except Exception as exc:
        print("FAIL", type(exc).__name__, str(exc).splitlines()[0], flush=True)
"""


def _race_first_opens(urls: list[str], procs_n: int, tmp_path: Path) -> list[str]:
    barrier = str(tmp_path / "barrier")
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, barrier, str(tmp_path / "blobs"), *urls],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(procs_n)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("barrier.ready.*"))) < procs_n:
            assert time.monotonic() < deadline, "openers never got ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        for i in range(len(urls)):
            Path(f"{barrier}.{i}").touch()
            time.sleep(0.5 if "postgresql" in urls[i] else 0.3)  # let the round finish
        lines: list[str] = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            lines += out.splitlines()
        return lines
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _fresh_urls(kind: str, rounds: int, tmp_path: Path, made: list[str]) -> list[str]:
    if kind == "sqlite":
        return [f"sqlite:///{tmp_path / f'fresh{i}' / 'registry.db'}" for i in range(rounds)]
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need ADAPTERHUB_TEST_POSTGRES_URL")
    urls = [_pg_database() for _ in range(rounds)]
    made += urls
    return urls


def _check_racing_opens(kind: str, rounds: int, tmp_path: Path) -> None:
    made: list[str] = []
    try:
        urls = _fresh_urls(kind, rounds, tmp_path, made)
        lines = _race_first_opens(urls, 8, tmp_path)
        assert len(lines) == 8 * rounds
        assert [x for x in lines if x != "ok"] == []
    finally:
        for url in made:
            _pg_drop(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_simultaneous_first_opens_of_fresh_registries(kind, tmp_path):
    """8 processes open each new database at the same moment: none sees a half-created
    schema ("database has tables but no adapterhub schema version" before the fix)."""
    _check_racing_opens(kind, 2, tmp_path)


@pytest.mark.extended
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_simultaneous_first_opens_of_fresh_registries_long(kind, tmp_path):
    """The issue's figure: 8 processes x 20 rounds, 0 failures."""
    _check_racing_opens(kind, 20, tmp_path)


# --------------------------------------------------------------------------- a server that never answers

# Accepts every connection and never sends a byte (a stalled server, a half-open proxy).
SILENT_SERVER = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""


@pytest.fixture
def silent_server():
    """The URL of a PostgreSQL registry on a real listening socket that never answers."""
    proc = subprocess.Popen([sys.executable, "-c", SILENT_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"postgresql://postgres@127.0.0.1:{port}/registry"
    finally:
        proc.kill()
        proc.wait()


def test_unresponsive_database_server_is_one_line_within_15s(silent_server, tmp_path):
    """The CLI hung for more than 90 s before; now the connect timeout ends it in one line."""
    t0 = time.monotonic()
    proc = run_cli("--registry", silent_server, "--blobs", str(tmp_path / "blobs"), "list", timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the database server did not answer"), proc.stderr
    assert took < 15, took
    assert not (tmp_path / "blobs").exists()


# --------------------------------------------------------------------------- a read-only home

_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def read_only_command(home: Path, args: list[str]) -> list[str]:
    """``args`` run with ``home`` read-only as a shared, mounted copy is. Root ignores file
    permissions, so as root the home is bind-mounted read-only in a private mount namespace
    (``unshare -m``); other users get ``chmod -R a-w`` (see :func:`read_only_home`)."""
    if os.geteuid() != 0:
        return args
    probe = subprocess.run(["unshare", "-m", "sh", "-c", _RO_MOUNT, str(home), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"root without a private read-only mount here: {probe.stderr.decode().strip()}")
    return ["unshare", "-m", "sh", "-c", _RO_MOUNT, str(home), *args]


@contextlib.contextmanager
def read_only_home(home: Path) -> Iterator[None]:
    """For a user other than root: every file and folder under ``home`` without write bits."""
    if os.geteuid() == 0:
        yield
        return
    modes = {p: p.stat().st_mode for p in [home, *home.rglob("*")]}
    for p, m in modes.items():
        p.chmod(m & ~0o222)
    try:
        yield
    finally:
        for p, m in modes.items():
            p.chmod(m)


def run_read_only(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTERHUB_HOME": str(home)}
    with read_only_home(home):
        return subprocess.run(read_only_command(home, [ADAPTERHUB, *args]), capture_output=True, text=True,
                              env=env, timeout=120)


def home_state(home: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(home)), p.read_bytes()) for p in home.rglob("*") if p.is_file())


@pytest.fixture
def seeded_home(tmp_path, base_dir, lora_dir) -> Path:
    import adapterhub_sdk as ah

    home = Path(os.environ["ADAPTERHUB_HOME"])
    with ah.Registry.open() as reg:
        reg.publish(lora_dir, name="ns/shared", version="1.0.0", base=base_dir)
    return home


def test_read_commands_work_on_a_read_only_home(seeded_home, base_dir, tmp_path):
    """list, show, resolve (its fits and base caches skipped), verify and pull from the
    registry; before the fix each failed with 'unable to open database file' (or 'attempt to
    write a readonly database')."""
    before = home_state(seeded_home)
    listed = run_read_only(seeded_home, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [v["name"] for v in json.loads(listed.stdout)] == ["ns/shared"]
    for args in (["show", "ns/shared"], ["resolve", "--base", str(base_dir)], ["verify"],
                 ["pull", "ns/shared@1.0.0", "--out", str(tmp_path / "out")]):
        proc = run_read_only(seeded_home, *args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert "ns/shared@1.0.0" in run_read_only(seeded_home, "resolve", "--base", str(base_dir)).stdout
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert home_state(seeded_home) == before


def test_publish_to_a_read_only_home_is_refused_in_one_line(seeded_home, base_dir, lora_dir_b):
    before = home_state(seeded_home)
    proc = run_read_only(seeded_home, "publish", str(lora_dir_b), "--name", "ns/other", "--version", "1.0.0",
                         "--base", str(base_dir))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: the registry is read-only here; publishing ns/other@1.0.0"), lines
    assert home_state(seeded_home) == before

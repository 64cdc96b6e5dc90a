"""The registry under faults: racing first opens of new databases, a database server that
accepts connections but never answers, and homes that cannot be written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import POSTGRES_URL, _pg_database, _pg_drop, run_cli

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

"""Faults with real processes: damaged blobs, racing publishers, and publishers or pulls
killed with SIGKILL at arbitrary points. Storage rule under test: a version is visible
completely or not at all, whatever process dies when; gc cleans up what is left."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adapterhub_sdk as ah

from conftest import ADAPTERHUB, POSTGRES_URL, _pg_database, _pg_drop, run_cli, save_base, save_lora

# Runs the real CLI entry point after the heavy imports, once a barrier file appears, so
# that racing processes reach the registry at the same moment.
BARRIER_MAIN = r"""
import os, sys, time
barrier = sys.argv[1]
import adapterhub_sdk.cli, adapterhub_sdk.registry, adapterhub_sdk.package, adapterhub_sdk.plugins  # noqa: E401
try:
    import psycopg  # noqa: F401
except ImportError:
    pass
adapterhub_sdk.plugins.get_plugin_manager()
open(barrier + "." + str(os.getpid()), "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(barrier):
    if time.monotonic() > deadline:
        sys.exit("barrier never opened")
    time.sleep(0.001)
sys.argv = ["adapterhub", *sys.argv[2:]]
adapterhub_sdk.cli.main()
"""


# --------------------------------------------------------------------------- helpers


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def blob_digests(root: Path) -> set[str]:
    base = root / "sha256"
    return {p.parent.name + p.name for p in base.rglob("*") if p.is_file()} if base.is_dir() else set()


def temp_files(root: Path) -> list[Path]:
    t = root / "tmp"
    return list(t.iterdir()) if t.is_dir() else []


def assert_same_files(pulled: Path, source: Path) -> None:
    for p in source.iterdir():
        if p.is_file():
            assert sha(pulled / p.name) == sha(p), p.name


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request, tmp_path):
    """A fresh registry database URL (a factory, so a test can make several)."""
    made: list[str] = []
    counter = iter(range(1000))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / f'reg{next(counter)}' / 'registry.db'}"
        url = _pg_database()
        made.append(url)
        return url

    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("PostgreSQL fault tests need ADAPTERHUB_TEST_POSTGRES_URL")
    make.kind = request.param  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for url in made:
            _pg_drop(url)


@pytest.fixture(scope="module")
def big_lora(tmp_path_factory) -> Path:
    """A real LoRA of about 40 MiB (r=256 on every projection of a 5-layer, 512-wide Llama),
    so a publish or pull takes long enough to be killed half-way."""
    d = tmp_path_factory.mktemp("big")
    base = save_base(d / "base", hidden=512, layers=5, seed=3)
    out = save_lora(base, d / "lora", seed=7, r=256,
                    targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert (out / "adapter_model.safetensors").stat().st_size > 30 * 2**20
    return out


# --------------------------------------------------------------------------- damaged blobs


def test_tampered_and_deleted_blobs(lora_dir, lora_dir_b, tmp_path):
    home = Path(os.environ["ADAPTERHUB_HOME"])
    url = f"sqlite:///{home / 'registry.db'}"
    blobs = home / "blobs"
    with ah.Registry.open(url, blobs=blobs) as reg:  # the registry the CLI below uses
        reg.publish(lora_dir, name="acme/x", version="1.0.0")
        reg.publish(lora_dir_b, name="acme/y", version="1.0.0")
        assert reg.verify().ok

    tampered = blobs / "sha256" / sha(lora_dir / "adapter_model.safetensors")[:2] / \
        sha(lora_dir / "adapter_model.safetensors")[2:]
    assert not os.access(tampered, os.W_OK) or os.geteuid() == 0  # stored read-only
    assert tampered.stat().st_mode & 0o222 == 0
    os.chmod(tampered, 0o644)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    deleted = blobs / "sha256" / sha(lora_dir_b / "adapter_model.safetensors")[:2] / \
        sha(lora_dir_b / "adapter_model.safetensors")[2:]
    deleted.unlink()

    v = run_cli("verify")
    assert v.returncode == 1, v.stdout
    assert "Traceback" not in v.stderr
    corrupt_line = next(line for line in v.stdout.splitlines() if "corrupt" in line)
    assert "acme/x@1.0.0" in corrupt_line and "acme/y" not in corrupt_line
    missing_line = next(line for line in v.stdout.splitlines() if "missing" in line)
    assert "acme/y@1.0.0" in missing_line
    report = json.loads(run_cli("verify", "--json").stdout)
    assert report["ok"] is False
    assert sorted((p["problem"].split()[0], tuple(p["versions"])) for p in report["problems"]) == [
        ("corrupt", ("acme/x@1.0.0",)), ("missing", ("acme/y@1.0.0",))]

    parent = tmp_path / "pulls"
    parent.mkdir()
    for ref, word in (("acme/x@1.0.0", "corrupt"), ("acme/y@1.0.0", "missing")):
        dest = parent / ref.replace("/", "_")
        proc = run_cli("pull", ref, "--out", str(dest))
        assert proc.returncode != 0
        assert word in one_error_line(proc.stderr)
        assert not dest.exists()
        assert list(parent.iterdir()) == [], "a refused pull left files behind"

    with ah.Registry.open(url, blobs=blobs) as reg:
        with pytest.raises(ah.IntegrityError):
            reg.pull("acme/x@1.0.0", parent / "api")
        with pytest.raises(ah.AdapterHubError):
            reg.pull("acme/y@1.0.0", parent / "api")
    assert list(parent.iterdir()) == []


# --------------------------------------------------------------------------- racing publishers


def _race(cmds: list[list[str]], barrier: Path) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", BARRIER_MAIN, str(barrier), *c],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    try:
        deadline = time.monotonic() + 120
        while len(list(barrier.parent.glob(barrier.name + ".*"))) < len(procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "racers never got ready"
            time.sleep(0.01)
        barrier.touch()  # release them together
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [subprocess.CompletedProcess(c, p.returncode, o, e) for c, p, (o, e) in zip(cmds, procs, outs)]


def test_racing_first_opens_of_a_new_sqlite_registry(tmp_path):
    """Many processes opening the same brand-new SQLite file at once: each must wait its
    turn (switching the file to WAL is answered "locked" at once, without the busy handler).
    ``gc --dry-run`` is a command that may create the registry it is given (``list`` on a
    URL that holds none is refused instead: a mistyped path is not a new registry)."""
    for rnd in range(4):
        url = f"sqlite:///{tmp_path / f'fresh{rnd}' / 'registry.db'}"
        cmds = [["--registry", url, "--blobs", str(tmp_path / f"blobs{rnd}"), "gc", "--dry-run", "--json"]
                for _ in range(6)]
        for r in _race(cmds, tmp_path / f"open{rnd}"):
            assert r.returncode == 0, r.stderr
            json.loads(r.stdout)
        listed = subprocess.run([sys.executable, "-m", "adapterhub_sdk", "--registry", url, "list", "--json"],
                                capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_concurrent_publishers(backend_url, base_dir, lora_dir, lora_dir_b, tmp_path):
    url = backend_url()
    blobs = tmp_path / "blobs"
    common = ["--registry", url, "--blobs", str(blobs)]
    sources = {"a": lora_dir, "b": lora_dir_b}
    winners = {}
    for rnd in range(3):  # the first round also races schema creation on a new database
        version = f"1.0.{rnd}"
        cmds = [[*common, "publish", str(src), "--name", "acme/race", "--version", version,
                 "--base", str(base_dir), "--json"] for src in sources.values()]
        results = _race(cmds, tmp_path / f"barrier{rnd}")
        for r in results:
            assert "locked" not in (r.stdout + r.stderr).lower(), r.stderr
            assert "Traceback" not in r.stderr, r.stderr
        codes = sorted(r.returncode for r in results)
        assert codes[0] == 0 and codes[1] != 0, [(r.returncode, r.stderr) for r in results]
        win = next(r for r in results if r.returncode == 0)
        lose = next(r for r in results if r.returncode != 0)
        assert "already exists" in one_error_line(lose.stderr)
        assert f"acme/race@{version}" in lose.stderr
        winners[version] = (json.loads(win.stdout)["digest"], Path(win.args[win.args.index("publish") + 1]))

    # N=4 processes publishing different versions at once all succeed
    n = 4 if url.startswith("sqlite") else 2
    cmds = [[*common, "publish", str(src), "--name", "acme/many", "--version", f"2.0.{i}", "--task", "t"]
            for i, src in enumerate([lora_dir, lora_dir_b, lora_dir, lora_dir_b][:n])]
    results = _race(cmds, tmp_path / "barrier_many")
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "locked" not in (r.stdout + r.stderr).lower()

    with ah.Registry.open(url, blobs=blobs) as reg:
        assert [i.version for i in reg.list(name="acme/race")] == ["1.0.2", "1.0.1", "1.0.0"]
        assert [i.version for i in reg.list(name="acme/many")] == [f"2.0.{i}" for i in reversed(range(n))]
        for version, (digest, src) in winners.items():
            assert reg.show(f"acme/race@{version}").digest == digest
            assert_same_files(reg.pull(f"acme/race@{version}", tmp_path / "out" / version), src)
        report = reg.verify()
        assert report.ok, report.problems
        assert report.versions == 3 + n
        gc = reg.gc(grace_seconds=0)  # acme/many references both sources' blobs: nothing to drop
        assert gc.blobs_removed == 0
        assert reg.stats()["bases"] == 1


# --------------------------------------------------------------------------- killed publishers


def _run_and_kill(cmd: list[str], trigger) -> tuple[bool, subprocess.CompletedProcess]:
    """Start ``cmd``; SIGKILL it when ``trigger(elapsed)`` is true. Returns (killed, result)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    killed = False
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            assert elapsed < 120, "process hung"
            if trigger(elapsed):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if killed and proc.returncode == 0:
        killed = False  # it finished just before the signal
    assert proc.returncode in (0, -signal.SIGKILL), err
    return killed, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _when_temp(blobs: Path):
    return lambda _t: bool(temp_files(blobs))


def _when_blob(blobs: Path):
    return lambda _t: bool(blob_digests(blobs))


def _after(seconds: float):
    return lambda t: t >= seconds


def _trigger(kind: str, arg, blobs: Path):
    if kind == "temp":  # a blob is being written
        return _when_temp(blobs)
    if kind == "blob":  # the first blob is in place, the others are not yet
        return _when_blob(blobs)
    return _after(arg)


@pytest.mark.slow
def test_publisher_killed_mid_publish(backend_url, big_lora, tmp_path):
    plan = [("temp", None), ("blob", None), ("delay", 0.3), ("delay", 1.0), ("delay", 1.6),
            ("delay", 2.2), ("delay", 3.0), ("temp", None)]
    if backend_url.kind == "postgres":
        plan = [("temp", None), ("blob", None), ("delay", 1.2), ("delay", 2.5)]  # fewer: new database each
    name = "acme/big"
    stats = {"mid": 0, "complete": 0, "before": 0}
    extra = 0
    rnd = 0
    while rnd < len(plan):
        kind, arg = plan[rnd]
        url = backend_url()
        blobs = tmp_path / f"blobs{rnd}"
        version = f"1.0.{rnd}"
        cmd = [ADAPTERHUB, "--registry", url, "--blobs", str(blobs), "publish", str(big_lora),
               "--name", name, "--version", version]
        killed, res = _run_and_kill(cmd, _trigger(kind, arg, blobs))
        assert "Traceback" not in res.stderr

        with ah.Registry.open(url, blobs=blobs) as reg:
            ref = f"{name}@{version}"
            try:
                info = reg.show(ref)
            except ah.NotFoundError:
                info = None
            referenced = {f.sha256 for f in info.manifest.files} if info else set()
            leftover = bool(temp_files(blobs)) or bool(blob_digests(blobs) - referenced)
            if info is not None:  # whole: listed, pullable, verified
                assert [i.version for i in reg.list(name=name)] == [version]
                assert_same_files(reg.pull(ref, tmp_path / f"pull{rnd}"), big_lora)
                assert reg.verify().ok
                stats["complete"] += 1
            else:  # or absent
                assert reg.list() == []
                assert not killed or res.returncode == -signal.SIGKILL
                stats["mid" if leftover else "before"] += 1
            assert killed or info is not None, f"publish exited without a kill: {res.stderr}"

            reg.gc(grace_seconds=0)
            assert temp_files(blobs) == []
            assert blob_digests(blobs) == referenced
            again = reg.publish(big_lora, name=name, version=version)  # the same version, later
            assert again.created is (info is None)
            report = reg.verify()
            assert report.ok and report.versions == 1, report.problems
            if info is None and leftover:
                assert_same_files(reg.pull(ref, tmp_path / f"repull{rnd}"), big_lora)
        rnd += 1
        if rnd == len(plan) and stats["mid"] == 0 and extra < 4:
            plan.append(("temp", None))  # no kill landed mid-publish yet: try again
            extra += 1
    print(f"kill rounds: {stats}, rounds {len(plan)}")
    assert stats["mid"] >= 1, f"no round killed the publisher half-way: {stats}"


# --------------------------------------------------------------------------- killed pulls


@pytest.mark.slow
def test_pull_killed_mid_way_leaves_nothing(big_lora, tmp_path):
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    blobs = tmp_path / "reg" / "blobs"
    with ah.Registry.open(url, blobs=blobs) as reg:
        reg.publish(big_lora, name="acme/big", version="1.0.0")
    parent = tmp_path / "pulls"
    parent.mkdir()
    dest = parent / "adapter"

    def partial_dirs() -> list[Path]:
        return [p for p in parent.iterdir() if p.name.startswith(".adapter.") and p.name.endswith(".incomplete")]

    def weights_started(_t: float) -> bool:
        return any((d / "adapter_model.safetensors").exists() for d in partial_dirs())

    cmd = [ADAPTERHUB, "--registry", url, "--blobs", str(blobs), "pull", "acme/big@1.0.0", "--out", str(dest)]
    mid = 0
    for trigger in (lambda _t: bool(partial_dirs()), weights_started, weights_started):
        had_partial_before = set(partial_dirs())
        killed, res = _run_and_kill(cmd, trigger)
        if killed:
            assert not dest.exists(), "a killed pull left a partial destination"
            if set(partial_dirs()) - had_partial_before:
                mid += 1
        else:
            assert_same_files(dest, big_lora)  # it won the race: then it is complete
            break
    assert mid >= 1, "no kill landed while the pull was writing"
    if not dest.exists():
        run_cli("--registry", url, "--blobs", str(blobs), "pull", "acme/big@1.0.0", "--out", str(dest),
                check=True)
    assert_same_files(dest, big_lora)

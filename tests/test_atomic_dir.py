"""One atomic directory write for pull and export (adapterhub_sdk.atomic_dir): the final
path holds the old tree or the new one, whole, whatever fails or dies when; an existing
tree is replaced only with overwrite; nothing is left behind once the next write of the
same path has run.

The crash tests kill real processes with SIGKILL before each filesystem step that pull or
export takes under the destination's parent (each mkdir, open, fsync, rename, unlink,
rmdir in turn), then check what is at the final path and that the next run cleans up."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.atomic_dir import clean_leftovers
from adapterhub_sdk.package import write_package_dir

NAME = "acme/swap"

# Runs in a helper process: forks one child per kill point; a child counts the filesystem
# calls that touch the destination's parent and SIGKILLs itself before call number N.
CRASH_MAIN = r"""
import json, os, signal, sys
from pathlib import Path
cfg = json.loads(sys.argv[1])
import adapterhub_sdk as ah, adapterhub_sdk.export, adapterhub_sdk.plugins, safetensors.torch  # noqa: E401
import adapterhub_sdk.atomic_dir
adapterhub_sdk.plugins.get_plugin_manager()
parent = cfg["parent"]

def under(args, kwargs):
    if kwargs.get("dir_fd") is not None:
        return True
    return any(isinstance(a, (str, os.PathLike)) and os.fspath(a).startswith(parent) for a in args[:2])

def install(kill_at):
    count = [0]
    def wrap(name):
        real = getattr(os, name)
        def step(*args, **kwargs):
            hit = under(args, kwargs)
            if name == "fsync":
                try:
                    hit = os.readlink(f"/proc/self/fd/{args[0]}").startswith(parent)
                except OSError:
                    hit = False
            if hit:
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        setattr(os, name, step)
    for name in ("mkdir", "open", "fsync", "rename", "replace", "unlink", "rmdir", "chmod"):
        wrap(name)

def run(version, kill_at):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if cfg["no_exchange"]:  # stands in for a system without renameat2 (this one has it)
                adapterhub_sdk.atomic_dir._renameat2_fn = False
            if kill_at:
                install(kill_at)
            reg = ah.Registry.open(cfg["url"], blobs=cfg["blobs"])
            ref = f"{cfg['name']}@{version}"
            if cfg["op"] == "pull":
                reg.pull(ref, cfg["dest"], overwrite=True)
            else:
                adapterhub_sdk.export.export(reg, ref, cfg["fmt"], cfg["dest"], overwrite=True)
        except BaseException as exc:
            print(f"child error: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"signal {os.WTERMSIG(status)}"
    return "ok" if os.WEXITSTATUS(status) == 0 else f"exit {os.WEXITSTATUS(status)}"

def tree():
    d = cfg["dest"]
    if not os.path.isdir(d):
        return None
    import hashlib
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out

def leftovers():
    return sorted(n for n in os.listdir(parent) if n != os.path.basename(cfg["dest"]))

# the lazy imports of a first open, pull and export happen here, once, not in every child
warm = ah.Registry.open(cfg["url"], blobs=cfg["blobs"])
warm.pull(f"{cfg['name']}@{cfg['old']}", os.path.join(cfg["scratch"], "pull"))
if cfg["op"] == "export":
    adapterhub_sdk.export.export(warm, f"{cfg['name']}@{cfg['old']}", cfg["fmt"], os.path.join(cfg["scratch"], "x"))
warm.close()
trees = {}
for v in (cfg["old"], cfg["new"]):
    assert run(v, 0) == "ok"
    trees[v] = tree()
assert trees[cfg["old"]] != trees[cfg["new"]]
have, want = cfg["new"], cfg["old"]  # each round replaces the tree the last one left
for n in range(1, 400):
    crashed = run(want, n)
    after = tree()
    state = "old" if after == trees[have] else "new" if after == trees[want] else "missing" if after is None else "partial"
    left = leftovers()
    adapterhub_sdk.atomic_dir.clean_leftovers(Path(cfg["dest"]))  # what the next writer does first
    after = tree()
    recovered = "old" if after == trees[have] else "new" if after == trees[want] else "missing" if after is None else "partial"
    rerun = run(want, 0)
    print(json.dumps({"step": n, "crash": crashed, "state": state, "left": left, "recovered": recovered,
                      "rerun": rerun,
                      "rerun_state": "new" if tree() == trees[want] else "other", "rerun_left": leftovers()}),
          flush=True)
    if crashed == "ok":
        break
    have, want = want, have
"""


@pytest.fixture
def two_versions(tmp_path, base_dir, lora_dir, lora_dir_b):
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    blobs = tmp_path / "reg" / "blobs"
    with ah.Registry.open(url, blobs=blobs) as reg:
        reg.publish(lora_dir, name=NAME, version="1.0.0", base=base_dir)
        reg.publish(lora_dir_b, name=NAME, version="2.0.0", base=base_dir)
    return url, blobs


def _crash_rounds(tmp_path: Path, url: str, blobs: Path, op: str, fmt: str | None = None, *,
                  no_exchange: bool = False) -> list[dict]:
    parent = tmp_path / f"out-{op}"
    parent.mkdir()
    (tmp_path / "scratch").mkdir()
    cfg = {"scratch": str(tmp_path / "scratch"), "no_exchange": no_exchange, "url": url, "blobs": str(blobs), "name": NAME, "old": "1.0.0", "new": "2.0.0", "op": op, "fmt": fmt,
           "parent": str(parent), "dest": str(parent / "dest")}
    proc = subprocess.run([sys.executable, "-c", CRASH_MAIN, json.dumps(cfg)], capture_output=True, text=True,
                          timeout=600)
    rounds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return rounds


def _check_rounds(rounds: list[dict], *, aside_window: bool = False) -> None:
    """``aside_window``: without an atomic swap, a kill between moving the old tree aside
    and renaming the new one in may leave the final path empty, with the old tree under a
    ``.old`` name that the next writer puts back."""
    assert rounds and rounds[-1]["crash"] == "ok", rounds[-1:]  # every step was reached
    killed = [r for r in rounds if r["crash"] == "killed"]
    assert len(killed) >= 8, f"too few kill points: {len(killed)}"
    window = [r for r in killed if r["state"] == "missing" and len(r["left"]) == 2
              and sum(n.endswith(".old") for n in r["left"]) == 1]
    bad = [r for r in killed if r["state"] not in ("old", "new") and not (aside_window and r in window)]
    assert not bad, f"a kill left the final path neither the old nor the new tree: {bad}"
    if aside_window:
        assert window, "no kill landed between the two renames"
        assert all(r["recovered"] == "old" for r in window), window
    assert all(r["recovered"] == r["state"] for r in killed if r not in window)
    # what a kill leaves is one clearly named sibling at most, and the next run removes it
    for r in killed:
        assert all(n.startswith(".dest.") and n.endswith((".incomplete", ".old")) for n in r["left"]), r
        assert len(r["left"]) <= 1 or r in window, r
    unclean = [r for r in rounds if r["rerun"] != "ok" or r["rerun_state"] != "new" or r["rerun_left"]]
    assert not unclean, f"the run after a kill did not end with the new tree and nothing beside it: {unclean}"
    assert {"old", "new"} <= {r["state"] for r in killed}, "no kill landed on each side of the replace"


@pytest.mark.slow
def test_pull_over_an_existing_tree_killed_at_every_step(two_versions, tmp_path):
    url, blobs = two_versions
    _check_rounds(_crash_rounds(tmp_path, url, blobs, "pull"))


@pytest.mark.slow
def test_pull_without_an_atomic_swap_killed_at_every_step(two_versions, tmp_path):
    """The fallback for systems without renameat2 (forced here: this one has it)."""
    url, blobs = two_versions
    _check_rounds(_crash_rounds(tmp_path, url, blobs, "pull", no_exchange=True), aside_window=True)


@pytest.mark.slow
def test_export_over_an_existing_tree_killed_at_every_step(two_versions, tmp_path):
    """vLLM: a staging directory holding the pull's own, the layout's files and a rewrite."""
    url, blobs = two_versions
    _check_rounds(_crash_rounds(tmp_path, url, blobs, "export", "vllm"))


# --------------------------------------------------------------------------- failures in process


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_destination_that_appears_while_writing_is_not_replaced_without_overwrite(tmp_path):
    """Another process fills the destination while a pull writes: the pull is refused and
    the other's files stay (the pull used to replace them)."""
    dest = tmp_path / "dest"

    def theirs(f):
        f.write(b"mine")
        dest.mkdir()
        (dest / "theirs.txt").write_text("someone else's")

    with pytest.raises(FileExistsError, match=r"pass overwrite=True"):
        write_package_dir(dest, [("a.json", theirs)])
    assert _tree(dest) == {"theirs.txt": b"someone else's"}
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


def test_a_failed_write_leaves_the_old_tree_whole_and_nothing_beside_it(tmp_path):
    dest = tmp_path / "dest"
    write_package_dir(dest, [("a.json", lambda f: f.write(b"old a")), ("b.json", lambda f: f.write(b"old b"))])

    def boom(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_package_dir(dest, [("a.json", lambda f: f.write(b"new a")), ("b.json", boom)], overwrite=True)
    assert _tree(dest) == {"a.json": b"old a", "b.json": b"old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]
    write_package_dir(dest, [("c.json", lambda f: f.write(b"new c"))], overwrite=True)
    assert _tree(dest) == {"c.json": b"new c"}
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


def test_a_live_writers_staging_directory_is_kept_and_a_dead_ones_removed(tmp_path):
    """Leftovers are judged by their lock, not their age: a writer still at work (here a
    real second process holding its staging directory) keeps it; a killed one's goes."""
    dest = tmp_path / "dest"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\n"
         "from adapterhub_sdk.atomic_dir import atomic_dir\n"
         "with atomic_dir(sys.argv[1]) as d:\n"
         "    (pathlib.Path(d) / 'f').write_text('x'); print(d, flush=True); sys.stdin.read()\n", str(dest)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir() and live.name.startswith(".dest.") and live.name.endswith(".incomplete")
        dead = tmp_path / ".dest.0123456789ab.incomplete"  # as a killed writer leaves it: unlocked
        dead.mkdir()
        (dead / "adapter_model.safetensors").write_bytes(b"half")
        clean_leftovers(dest)
        assert live.is_dir() and not dead.exists()
        holder.stdin.write("done\n")
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert _tree(dest) == {"f": b"x"}


def test_an_old_tree_a_crash_left_aside_is_put_back(tmp_path):
    """Without an atomic swap the old tree is renamed aside first; if the writer dies
    before the new one is renamed in, the next writer puts the old one back first."""
    dest = tmp_path / "dest"
    aside = tmp_path / ".dest.0123456789ab.old"
    aside.mkdir()
    (aside / "a.json").write_bytes(b"old")
    legacy = tmp_path / "other"
    (tmp_path / ".other.k9x_2abc.old" / "x").mkdir(parents=True)  # an older release's layout
    (tmp_path / ".other.k9x_2abc.old" / "x" / "a.json").write_bytes(b"older")
    clean_leftovers(dest)
    clean_leftovers(legacy)
    assert _tree(dest) == {"a.json": b"old"} and _tree(legacy) == {"a.json": b"older"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "other"]


def test_the_users_own_hidden_siblings_are_never_moved_or_removed(two_versions, tmp_path, monkeypatch):
    """Only names atomic_dir makes are leftovers: a user's ``.NAME.backup.old`` and
    ``.NAME.v1.incomplete`` beside the destination survive a pull (before: the first was
    renamed into the destination, the second deleted), with and without --force, and so do
    names in an older release's aside layout once the destination exists."""
    url, blobs = two_versions
    monkeypatch.chdir(tmp_path)
    own = {".sentiment.backup.old": "NOTES.txt", ".sentiment.v1.incomplete": "DATA.txt",
           ".sentiment.0123456789abcdef.old": "LONG.txt", ".sentiment.abcdefgh.old": "EIGHT.txt",
           ".sentiment.backup01.incomplete": "B.txt"}
    for d, f in own.items():
        (tmp_path / d).mkdir()
        (tmp_path / d / f).write_text("mine")
    env = {"ADAPTERHUB_REGISTRY_URL": url, "ADAPTERHUB_BLOBS": blobs}
    legacy = tmp_path / ".sentiment.k9x_2abc.old" / "x"  # an older release's aside layout: only ever put back
    for extra in ([], ["--force"]):
        if extra:  # the destination exists now: kept as it is
            legacy.mkdir(parents=True)
            (legacy / "a.json").write_text("mine")
        r = subprocess.run([sys.executable, "-m", "adapterhub_sdk", "pull", f"{NAME}@1.0.0", "--out", "sentiment",
                            *extra], capture_output=True, text=True, env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        assert "adapter_config.json" in {p.name for p in (tmp_path / "sentiment").iterdir()}
        for d, f in own.items():
            assert (tmp_path / d / f).read_text() == "mine", (extra, d)
    assert (legacy / "a.json").read_text() == "mine"


def test_a_link_or_the_root_as_destination_is_refused_in_one_line(two_versions, tmp_path):
    """A link is never written through (it is named as a link, not 'a file')."""
    url, blobs = two_versions
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    env = {**os.environ, "ADAPTERHUB_REGISTRY_URL": url, "ADAPTERHUB_BLOBS": blobs}
    r = subprocess.run([sys.executable, "-m", "adapterhub_sdk", "pull", f"{NAME}@1.0.0", "--out",
                        str(tmp_path / "link")], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "is a symbolic link" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list((tmp_path / "real").iterdir()) == []
    from adapterhub_sdk.atomic_dir import atomic_dir
    from adapterhub_sdk.errors import DestinationError

    with pytest.raises(DestinationError, match="cannot write a tree over /"), atomic_dir("/", overwrite=True):
        pass


def test_a_pulled_directory_is_verified_and_has_the_mode_mkdir_gives(two_versions, tmp_path):
    """0777 less the umask, as a plain mkdir (not mkdtemp's 0700): a service account can
    read what was pulled into a shared place."""
    url, blobs = two_versions
    with ah.Registry.open(url, blobs=blobs) as reg:
        out = reg.pull(f"{NAME}@1.0.0", tmp_path / "p")
        for f in reg.show(f"{NAME}@1.0.0").manifest.files:
            assert hashlib.sha256((out / f.path).read_bytes()).hexdigest() == f.sha256
        assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

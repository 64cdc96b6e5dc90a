"""Two processes writing the catalog at the same instant, on real SQLite and a real PostgreSQL:
each write is refused or accepted as if they had run one after the other, with the error a
user would get then, never a raw database error and never two versions that only differ in
build metadata (``1.0.0+a`` and ``1.0.0+b``: the same semver precedence).

Each worker is its own Python process (``subprocess``) that opens the registry, then runs its
rounds; both meet at a file barrier before each round's write, so the writes overlap."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROUNDS = 16

pytestmark = pytest.mark.filterwarnings("ignore:.*is published unpinned")

WORKER = textwrap.dedent("""
    import json, sys, time, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    url, blobs, sync, side, sides, rounds, job = sys.argv[1:8]
    job = json.loads(job)
    from adapterhub_sdk.registry import Registry
    reg = Registry.open(url, blobs=blobs)
    sync, sides = Path(sync), sides.split(",")
    for i in range(int(rounds)):
        (sync / f"{side}.{i}").touch()
        while not all((sync / f"{s}.{i}").exists() for s in sides):
            time.sleep(0.0002)
        try:
            if job["op"] == "publish":
                reg.publish(job["src"], name=job["name"].format(i=i), version=job["version"])
            else:
                reg.alias(job["ref"].format(i=i), job["alias"].format(i=i))
            out = {"round": i, "ok": True}
        except Exception as exc:  # recorded, so that the test sees a raw error as a failure
            out = {"round": i, "ok": False, "type": f"{type(exc).__module__}.{type(exc).__name__}",
                   "message": str(exc)}
        print(json.dumps(out), flush=True)
""")


def race(url: str, blobs: Path, sync: Path, jobs: dict[str, dict], rounds: int = ROUNDS) -> dict[str, list[dict]]:
    """Run one worker process per job, ``rounds`` rounds each; their results by side."""
    sync.mkdir()
    sides = ",".join(jobs)
    procs = {side: subprocess.Popen([sys.executable, "-c", WORKER, url, str(blobs), str(sync), side, sides,
                                     str(rounds), json.dumps(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for side, job in jobs.items()}
    results = {}
    for side, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results[side] = [json.loads(line) for line in out.splitlines()]
        assert len(results[side]) == rounds, err
    return results


def _weights(src: Path) -> str:
    return hashlib.sha256((src / "adapter_model.safetensors").read_bytes()).hexdigest()


def _stored_weights(registry, ref: str) -> set[str]:
    return {f.sha256 for f in registry.show(ref).manifest.files}


@pytest.mark.parametrize("adapter_exists", [True, False], ids=["existing-adapter", "new-adapter"])
def test_build_metadata_twins_published_at_once_one_is_refused(registry_url, registry, tmp_path, lora_dir,
                                                              lora_dir_b, adapter_exists):
    """acme/tN@1.0.0+a and @1.0.0+b, different content, at the same instant: one is published,
    the other gets the refusal a later publish gets (PostgreSQL accepted both: the twin check
    was a SELECT under READ COMMITTED, and no unique key covers semver precedence)."""
    if adapter_exists:  # the adapter's row is there: the race is the twin check alone
        for i in range(ROUNDS):
            registry.publish(lora_dir, name=f"acme/t{i}", version="0.1.0")
    res = race(registry_url, tmp_path / "blobs", tmp_path / "sync", {
        "a": {"op": "publish", "src": str(lora_dir), "name": "acme/t{i}", "version": "1.0.0+a"},
        "b": {"op": "publish", "src": str(lora_dir_b), "name": "acme/t{i}", "version": "1.0.0+b"}})
    srcs = {"a": lora_dir, "b": lora_dir_b}
    for i, (a, b) in enumerate(zip(res["a"], res["b"])):
        assert [a["ok"], b["ok"]].count(True) == 1, (i, a, b)
        won, lost = ("a", b) if a["ok"] else ("b", a)
        assert lost["type"] == "adapterhub_sdk.errors.VersionConflictError", lost
        assert f"acme/t{i}@1.0.0+{'b' if won == 'a' else 'a'} is the same version as the existing " \
               f"acme/t{i}@1.0.0+{won}" in lost["message"], lost
        twins = [v.version for v in registry.versions(f"acme/t{i}") if v.version.startswith("1.0.0")]
        assert twins == [f"1.0.0+{won}"]
        for spec in ("1.0.0", "^1", "latest"):
            assert registry.show(f"acme/t{i}@{spec}").version == f"1.0.0+{won}"
        assert _weights(srcs[won]) in _stored_weights(registry, f"acme/t{i}@1.0.0")


def test_same_version_other_content_published_at_once_one_is_refused(registry_url, registry, tmp_path, lora_dir,
                                                                    lora_dir_b):
    """acme/sN@1.0.0 with two contents, first publish of the name, at the same instant: one is
    published, the other is told the version exists with other content (no raw IntegrityError)."""
    res = race(registry_url, tmp_path / "blobs", tmp_path / "sync", {
        "a": {"op": "publish", "src": str(lora_dir), "name": "acme/s{i}", "version": "1.0.0"},
        "b": {"op": "publish", "src": str(lora_dir_b), "name": "acme/s{i}", "version": "1.0.0"}})
    srcs = {"a": lora_dir, "b": lora_dir_b}
    for i, (a, b) in enumerate(zip(res["a"], res["b"])):
        assert [a["ok"], b["ok"]].count(True) == 1, (i, a, b)
        won, lost = ("a", b) if a["ok"] else ("b", a)
        assert lost["type"] == "adapterhub_sdk.errors.VersionConflictError", lost
        assert f"acme/s{i}@1.0.0 already exists with other content" in lost["message"], lost
        [only] = registry.versions(f"acme/s{i}")
        assert _weights(srcs[won]) in _stored_weights(registry, f"acme/s{i}@1.0.0"), only


def test_same_new_alias_set_at_once_both_succeed(registry_url, registry, tmp_path, lora_dir, lora_dir_b):
    """Two processes create the same new alias at once (to two versions): an alias is set again to
    move it, so both succeed and it points at one of them (PostgreSQL: a raw IntegrityError on
    pk_aliases for the second, which had seen no alias and inserted one)."""
    registry.publish(lora_dir, name="acme/al", version="1.0.0")
    registry.publish(lora_dir_b, name="acme/al", version="2.0.0")
    res = race(registry_url, tmp_path / "blobs", tmp_path / "sync", {
        "a": {"op": "alias", "ref": "acme/al@1.0.0", "alias": "a{i}"},
        "b": {"op": "alias", "ref": "acme/al@2.0.0", "alias": "a{i}"}})
    for i, (a, b) in enumerate(zip(res["a"], res["b"])):
        assert a["ok"] and b["ok"], (i, a, b)
        assert registry.show(f"acme/al@a{i}").version in ("1.0.0", "2.0.0")
        assert registry.alias_target(f"acme/al@a{i}")[1] == registry.show(f"acme/al@a{i}").version

"""Push and pull through an OCI registry (``oci://``), against ``skopeo copy`` on the same bytes.

The registry is the CNCF distribution registry that Debian packages (``docker-registry
serve``, filesystem storage, plain HTTP on 127.0.0.1), started by this script; before
every round it is restarted on empty storage (untimed), so every push uploads every
byte and no blob can be mounted from an earlier round. The adapters are bench_s3.py's
(real PEFT ``save_pretrained`` output, LoRA on every projection of a Llama of hidden
1024): ~17 MB and ~200 MB.

Per round, order rotated, >= 5 rounds, medians reported:

* push, ours: ``adapterhub push NAME@VER --to oci://HOST/REPO --insecure``, a fresh process
  (start, imports, HEAD per blob, each file streamed from the blob store and hashed on the
  way, config, manifest).
* push, peer: ``skopeo copy --dest-tls-verify=false dir:D docker://HOST/REPO:VER`` where
  ``D`` is skopeo's own ``dir:`` copy of what we pushed (the same manifest and blobs).
* pull, ours: ``adapterhub pull oci://HOST/REPO:VER --out DIR --insecure`` into a home
  whose registry exists (created untimed): manifest and layers verified, the version
  recorded in the local registry, ``DIR`` written atomically.
* pull, peer: ``skopeo copy --src-tls-verify=false docker://HOST/REPO:VER dir:DIR``
  (digests verified, blobs written by digest, nothing recorded).
* the same push and pull in process (``OciRemote.push`` / ``.pull`` on an open
  ``Registry``): the data path without the CLI's start (Python, click, SQLAlchemy, the
  plugins), which a Go binary such as skopeo does not pay.
* the CLI's start alone, for context: ``adapterhub list`` in the puller's home, a fresh
  process (``ours_cli_start``): the floor under every ``adapterhub`` figure above.
* the same push and pull with ``oras`` (oras-py, the Python OCI client on PyPI that the
  issue names beside skopeo), each a fresh ``python`` process as a user's script would be:
  ``OrasClient(insecure=True).push(target, files=[...])`` of the adapter directory's files, and
  ``.pull(target, outdir=DIR)`` of what we pushed. The Python peer, as boto3 is for S3.
* a floor for any Python CLI push (``floor_push``): a fresh ``python`` process that imports
  only our OCI client (standard library HTTP) and pushes the same manifest and blobs, with no
  registry database, no plugins and no click: what a push costs in Python at the least.

    .venv/bin/python benchmarks/bench_oci.py [--quick] [--rounds N]

``--quick``: the 17 MB adapter only. Results: benchmarks/results/bench_oci.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import _common as C
from bench_s3 import SIZES, build, run, sha256_dir

sys.path.insert(0, str(C.ROOT / "tests"))
from ociserver import REGISTRY, start_registry  # noqa: E402

FLOOR = """import json, pathlib, sys
from adapterhub_sdk.manifest import Manifest
from adapterhub_sdk.oci.artifact import artifact_manifest
from adapterhub_sdk.oci.client import OciClient, sha256_digest
from adapterhub_sdk.oci.refs import version_tag
host, repo, spec = sys.argv[1:4]
job = json.loads(pathlib.Path(spec).read_text())
m = Manifest.from_json(job["manifest"].encode())
cfg = m.to_json()
with OciClient(host, insecure=True) as c:
    for f in m.files:
        if not c.has_blob(repo, "sha256:" + f.sha256):
            c.push_blob(repo, "sha256:" + f.sha256, f.size, pathlib.Path(job["paths"][f.sha256]), missing=True)
    c.push_blob(repo, sha256_digest(cfg), len(cfg), cfg)
    c.put_manifest(repo, version_tag(m.version), artifact_manifest(m, sha256_digest(cfg), len(cfg)))
"""

ORAS_PUSH = """import os, sys
import oras.client
target, src = sys.argv[1:3]
os.chdir(src)
files = sorted(f for f in os.listdir(".") if os.path.isfile(f))
oras.client.OrasClient(insecure=True).push(target=target, files=files, disable_path_validation=True)
"""

ORAS_PULL = """import sys
import oras.client
target, out = sys.argv[1:3]
oras.client.OrasClient(insecure=True).pull(target=target, outdir=out)
"""


def bench_size(label: str, adapter: Path, work: Path, env: dict[str, str], rounds: int) -> dict:
    exe = Path(sys.executable).with_name("adapterhub")
    ah_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "adapterhub_sdk"]
    want = sha256_dir(adapter)
    total = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    name, ver = f"bench/oci-{label.lower()}", "1.0.0"
    import adapterhub_sdk as ah
    from adapterhub_sdk.oci.remote import OciRemote

    pub_env = {**env, "ADAPTERHUB_HOME": str(work / f"home-pub-{label}")}
    pub_url = f"sqlite:///{work / f'home-pub-{label}' / 'registry.db'}"
    run([*ah_cmd, "publish", str(adapter), "--name", name, "--version", ver], pub_env)
    floor_job = work / f"floor-{label}.json"
    with ah.Registry.open(pub_url, blobs=work / f"home-pub-{label}" / "blobs") as reg:
        shown = reg.show(f"{name}@{ver}").manifest
        floor_job.write_text(json.dumps({"manifest": shown.to_json().decode(),
                                         "paths": {f.sha256: str(reg.blobs.path(f.sha256)) for f in shown.files}}))
    (work / "floor.py").write_text(FLOOR)
    (work / "oras_push.py").write_text(ORAS_PUSH)
    (work / "oras_pull.py").write_text(ORAS_PULL)
    variants = ["ours_push", "skopeo_push", "ours_api_push", "floor_push", "oras_push"]
    pulls = ["ours_pull", "skopeo_pull", "ours_api_pull", "oras_pull"]
    times: dict[str, list[float]] = {v: [] for v in variants + pulls + ["ours_cli_start"]}
    loads: list[float] = []

    def one_round(r: int, record: bool) -> None:
        srv = start_registry(work / f"reg-{label}-{r}")
        try:
            ours, peer = f"{srv.host}/bench/ours", f"{srv.host}/bench/peer"
            skdir = work / f"sk-src-{label}"
            got: dict[str, float] = {}
            k = r % len(variants)
            for v in (variants[k:] + variants[:k]):
                if v == "ours_api_push":
                    with ah.Registry.open(pub_url, blobs=work / f"home-pub-{label}" / "blobs") as reg:
                        got[v] = C.timed(OciRemote(insecure=True).push, reg, f"{name}@{ver}",
                                         f"oci://{srv.host}/bench/api")[0]
                elif v == "floor_push":
                    got[v] = run([sys.executable, str(work / "floor.py"), srv.host, "bench/floor", str(floor_job)], env)
                elif v == "oras_push":
                    got[v] = run([sys.executable, str(work / "oras_push.py"), f"{srv.host}/bench/oras:{ver}",
                                  str(adapter)], env)
                elif v == "ours_push":
                    got[v] = run([*ah_cmd, "push", f"{name}@{ver}", "--to", f"oci://{ours}", "--insecure"], pub_env)
                    if not skdir.exists():  # skopeo's own copy of exactly what we pushed (untimed, once)
                        run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ours}:{ver}", f"dir:{skdir}"],
                            env)
                else:
                    if not skdir.exists():
                        got[v] = -1.0
                        continue
                    got[v] = run(["skopeo", "copy", "--dest-tls-verify=false", f"dir:{skdir}",
                                  f"docker://{peer}:{ver}"], env)
            if got.get("skopeo_push", 0) < 0:  # first round with skopeo first: push it now, after ours
                got["skopeo_push"] = run(["skopeo", "copy", "--dest-tls-verify=false", f"dir:{skdir}",
                                          f"docker://{peer}:{ver}"], env)
            home = {**env, "ADAPTERHUB_HOME": str(work / f"home-{label}-{r}")}
            run([*ah_cmd, "list"], home)  # the puller's registry exists, as on a machine in use
            got["ours_cli_start"] = run([*ah_cmd, "list"], home)
            outs = work / f"out-{label}-{r}"
            outs.mkdir()
            for v in (pulls[k:] + pulls[:k]):
                if v == "ours_api_pull":
                    with ah.Registry.open(f"sqlite:///{work / f'api-{label}-{r}.db'}",
                                          blobs=work / f"api-blobs-{label}-{r}") as reg:
                        reg.list()  # the schema exists, as on a machine in use
                        got[v] = C.timed(OciRemote(insecure=True).pull, reg, f"oci://{ours}:{ver}", outs / v)[0]
                    shutil.rmtree(work / f"api-blobs-{label}-{r}", ignore_errors=True)
                elif v == "oras_pull":
                    got[v] = run([sys.executable, str(work / "oras_pull.py"), f"{ours}:{ver}", str(outs / v)], env)
                    got_files = sha256_dir(outs / v)
                    assert {f: got_files.get(f) for f in want} == want, v
                elif v == "ours_pull":
                    got[v] = run([*ah_cmd, "pull", f"oci://{ours}:{ver}", "--out", str(outs / v), "--insecure"],
                                 home)
                    got_files = sha256_dir(outs / v)
                    assert {f: got_files.get(f) for f in want} == want, v
                else:
                    got[v] = run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{peer}:{ver}",
                                  f"dir:{outs / v}"], env)
                    by_digest = {p.name for p in (outs / v).iterdir()}
                    assert set(want.values()) <= by_digest, v
            load = os.getloadavg()[0]
            if record:
                for v, dt in got.items():
                    times[v].append(dt)
                loads.append(load)
                print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{v} {dt:.2f}s" for v, dt in got.items())
                      + f", load {load:.2f}", flush=True)
            shutil.rmtree(outs, ignore_errors=True)
            shutil.rmtree(work / f"home-{label}-{r}", ignore_errors=True)
        finally:
            srv.stop()
            shutil.rmtree(work / f"reg-{label}-{r}", ignore_errors=True)

    one_round(999, record=False)  # warm-up: byte-compiled files, page cache
    for r in range(rounds):
        one_round(r, record=True)
    med = {v: C.median(t) for v, t in times.items()}

    def ratio(a: str, b: str) -> dict:
        return C.paired_ratio(times, a, b)

    return {"adapter": {"dir_files": C.dir_files(adapter),
                        "total_bytes": total},
            "seconds": times, "median_s": med, "load_1min_per_round": loads,
            "ratios": {"push_vs_skopeo": ratio("ours_push", "skopeo_push"),
                       "pull_vs_skopeo": ratio("ours_pull", "skopeo_pull"),
                       "push_api_vs_skopeo": ratio("ours_api_push", "skopeo_push"),
                       "pull_api_vs_skopeo": ratio("ours_api_pull", "skopeo_pull"),
                       "floor_push_vs_skopeo": ratio("floor_push", "skopeo_push"),
                       "push_vs_oras": ratio("ours_push", "oras_push"),
                       "pull_vs_oras": ratio("ours_pull", "oras_pull")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 17 MB adapter only")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    args = ap.parse_args()
    if REGISTRY is None or shutil.which("skopeo") is None:
        raise SystemExit("needs docker-registry and skopeo: apt-get install docker-registry skopeo")
    rounds = max(5, args.rounds or 5)
    sizes = ["17MB"] if args.quick else list(SIZES)
    warnings.filterwarnings("ignore")
    models = C.work_dir("s3-adapters", fresh=False)  # bench_s3.py's adapters, built once and kept
    adapters = {s: build(models / s, *SIZES[s]) for s in sizes}
    work = C.work_dir(f"oci-{os.getpid()}")
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONDONTWRITEBYTECODE",
                                                            "ADAPTERHUB_BLOBS", "ADAPTERHUB_REGISTRY_URL")}
    env["XDG_DATA_HOME"] = str(work / "xdg")  # skopeo's blob-info cache: fresh, so it cannot skip uploads
    try:
        results = {s: bench_size(s, adapters[s], work, env, rounds) for s in sizes}
        for s, res in results.items():
            med, rt = res["median_s"], res["ratios"]
            mb = res["adapter"]["total_bytes"] / 1e6
            print(f"\n{s}: {mb:.1f} MB, median of {rounds} rounds, load {min(res['load_1min_per_round']):.1f}"
                  f"-{max(res['load_1min_per_round']):.1f} (ratio = ours / skopeo; target <= 1.2x)")
            print(C.table(["what", "median s", "MB/s", "ratio"], [
                ["push: adapterhub push --to oci://", med["ours_push"], mb / med["ours_push"],
                 f"{rt['push_vs_skopeo']['median_ratio']:.2f}x"],
                ["push: skopeo copy dir: docker://", med["skopeo_push"], mb / med["skopeo_push"], "1.00x"],
                ["pull: adapterhub pull oci:// --out", med["ours_pull"], mb / med["ours_pull"],
                 f"{rt['pull_vs_skopeo']['median_ratio']:.2f}x"],
                ["pull: skopeo copy docker:// dir:", med["skopeo_pull"], mb / med["skopeo_pull"], "1.00x"],
                ["push: oras-py, fresh python process", med["oras_push"], mb / med["oras_push"],
                 f"ours {rt['push_vs_oras']['median_ratio']:.2f}x"],
                ["pull: oras-py, fresh python process", med["oras_pull"], mb / med["oras_pull"],
                 f"ours {rt['pull_vs_oras']['median_ratio']:.2f}x"],
                ["push: OciRemote.push (in process)", med["ours_api_push"], mb / med["ours_api_push"],
                 f"{rt['push_api_vs_skopeo']['median_ratio']:.2f}x"],
                ["pull: OciRemote.pull (in process)", med["ours_api_pull"], mb / med["ours_api_pull"],
                 f"{rt['pull_api_vs_skopeo']['median_ratio']:.2f}x"],
                ["push floor: bare Python + our OCI client", med["floor_push"], mb / med["floor_push"],
                 f"{rt['floor_push_vs_skopeo']['median_ratio']:.2f}x"],
                ["start: adapterhub list (context)", med["ours_cli_start"], "", ""],
            ]))
        version = subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout.strip()
        out = C.write_results("bench_oci_quick" if args.quick else "bench_oci", {
            "quick": args.quick, "rounds": rounds,
            "server": "docker-registry (CNCF distribution, Debian) on 127.0.0.1, filesystem storage, plain HTTP",
            "peer": version, "sizes": results})
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

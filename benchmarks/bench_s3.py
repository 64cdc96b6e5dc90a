"""Push and pull through an ``s3://`` blob store, against boto3's transfer manager on the same bytes.

The S3 server is moto's standalone server (``moto_server -H 127.0.0.1 -p PORT``, from
``moto[server]``), started by this script on loopback; AWS_ENDPOINT_URL and test
credentials point both sides at it. Two real adapters saved by PEFT ``save_pretrained``
(LoRA on q,k,v,o,gate,up,down of a Llama built from ``LlamaConfig``, hidden 1024,
intermediate 3584, weights randomised): ~17 MB (3 layers, r=64) and ~200 MB (9 layers,
r=256); each is ``adapter_model.safetensors`` + ``adapter_config.json`` + ``README.md``.

Per round, order rotated, >= 5 rounds, medians reported; the bucket is emptied between
rounds (untimed), so every push uploads every byte:

* push, ours: ``adapterhub --blobs s3://BUCKET/cli publish DIR --name ... --version <new>``,
  a fresh process as a user runs it (start, imports, staging copy + sha256, conditional
  uploads, the SQLite commit).
* push, peer: ``python push.py DIR BUCKET PREFIX``, a fresh process running what a user
  writes with boto3: ``boto3.client("s3").upload_file(...)`` of each file with the default
  ``TransferConfig`` (multipart over 8 MiB, 8 MiB parts, 10 threads).
* publish with local blobs (context for "S3 against file://"): the same CLI publish with
  ``--blobs DIR`` (a fresh directory each round); and both in-process
  (``Registry.publish``), without the process start.
* pull, ours: ``adapterhub --blobs s3://BUCKET/cli pull NAME@VERSION --out DIR`` (streamed,
  sha256-verified, written into a temp dir renamed into place).
* pull, peer: ``python pull.py BUCKET PREFIX DIR``: ``download_file`` of each object
  (ranged GETs over 10 threads for large ones), no verification.
* the CLI's start alone, for context: ``adapterhub --blobs s3://... list``, a fresh process
  (``ours_cli_start``; the store is not contacted): the floor under every ``adapterhub`` figure.

    .venv/bin/python benchmarks/bench_s3.py [--quick] [--rounds N]

``--quick``: the 17 MB adapter only, 5 rounds; ``--size 200MB``: that adapter only. Results:
benchmarks/results/bench_s3.json (``bench_s3_quick.json``, ``bench_s3_SIZE.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import _common as C

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SIZES = {"17MB": (3, 64), "200MB": (9, 256)}  # layers, rank

PUSH = '''import os, sys
import boto3
from boto3.s3.transfer import TransferConfig

src, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3")
config = TransferConfig()
for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if os.path.isfile(path):
        s3.upload_file(path, bucket, f"{prefix}/{name}", Config=config)
'''

PULL = '''import os, sys
import boto3
from boto3.s3.transfer import TransferConfig

bucket, prefix, dest = sys.argv[1:4]
s3 = boto3.client("s3")
config = TransferConfig()
os.makedirs(dest)
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for obj in page.get("Contents", ()):
        s3.download_file(bucket, obj["Key"], os.path.join(dest, obj["Key"].rsplit("/", 1)[-1]), Config=config)
'''


def build(out: Path, layers: int, r: int) -> Path:
    """A PEFT LoRA adapter directory (reused when a previous run left it)."""
    if (out / "adapter_model.safetensors").is_file():
        return out
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    lcfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                              "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise SystemExit("moto_server is not installed: pip install 'moto[server]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto_server did not start (exit {proc.poll()}); see {log}") from None
            time.sleep(0.1)


def sha256_dir(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def empty_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    return dt


def bench_size(label: str, adapter: Path, work: Path, bucket: str, env: dict[str, str], rounds: int,
               s3) -> dict:
    import adapterhub_sdk as ah

    warnings.filterwarnings("ignore", category=ah.UnpinnedPublishWarning)  # base=None, as bench_publish
    exe = Path(sys.executable).with_name("adapterhub")
    ah_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "adapterhub_sdk"]
    want = sha256_dir(adapter)
    total = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    push_py, pull_py = work / "push.py", work / "pull.py"
    push_py.write_text(PUSH)
    pull_py.write_text(PULL)
    reg_cli_s3 = f"sqlite:///{work / f'cli-s3-{label}.db'}"
    reg_cli_file = f"sqlite:///{work / f'cli-file-{label}.db'}"
    s3_cli = f"s3://{bucket}/cli"
    name = f"bench/s3-{label.lower()}"

    def cli(*args: str) -> list[str]:
        return [*ah_cmd, *args]

    def api_publish(blobs: str, version: str) -> float:
        with ah.Registry.open(f"sqlite:///{work / f'api-{label}.db'}", blobs=blobs) as reg:
            t0 = time.perf_counter()
            res = reg.publish(adapter, name=name, version=version)
            dt = time.perf_counter() - t0
        assert res.created and res.bytes_written == total, res
        return dt

    def api_pull(version: str, out: Path) -> float:
        with ah.Registry.open(f"sqlite:///{work / f'api-{label}.db'}", blobs=f"s3://{bucket}/api") as reg:
            t0 = time.perf_counter()
            reg.pull(f"{name}@{version}", out)
            return time.perf_counter() - t0

    push_variants = ["ours_cli_s3", "peer_boto3_push", "ours_cli_file", "ours_api_s3", "ours_api_file"]
    pull_variants = ["ours_cli_pull", "peer_boto3_pull", "ours_api_pull"]
    times: dict[str, list[float]] = {v: [] for v in push_variants + pull_variants + ["ours_cli_start"]}
    loads: list[float] = []

    def one_round(r: int, record: bool) -> None:
        ver = f"1.0.{r}"
        files_dir = work / f"blobs-{r}"
        k = r % len(push_variants)
        got: dict[str, float] = {}
        for v in push_variants[k:] + push_variants[:k]:
            if v == "ours_cli_s3":
                got[v] = run(cli("--registry", reg_cli_s3, "--blobs", s3_cli, "publish", str(adapter),
                                 "--name", name, "--version", ver), env)
            elif v == "peer_boto3_push":
                got[v] = run([sys.executable, str(push_py), str(adapter), bucket, f"peer/{ver}"], env)
            elif v == "ours_cli_file":
                got[v] = run(cli("--registry", reg_cli_file, "--blobs", str(files_dir / "cli"), "publish",
                                 str(adapter), "--name", name, "--version", ver), env)
            elif v == "ours_api_s3":
                got[v] = api_publish(f"s3://{bucket}/api", ver)
            else:
                got[v] = api_publish(str(files_dir / "api"), f"2.0.{r}")
        got["ours_cli_start"] = run(cli("--registry", reg_cli_s3, "--blobs", s3_cli, "list"), env)
        k = r % len(pull_variants)
        outs = work / f"out-{r}"
        for v in pull_variants[k:] + pull_variants[:k]:
            if v == "ours_cli_pull":
                got[v] = run(cli("--registry", reg_cli_s3, "--blobs", s3_cli, "pull", f"{name}@{ver}",
                                 "--out", str(outs / v)), env)
            elif v == "peer_boto3_pull":
                got[v] = run([sys.executable, str(pull_py), bucket, f"peer/{ver}", str(outs / v)], env)
            else:
                got[v] = api_pull(ver, outs / v)
            if r == 0 or not record:  # untimed: the adapter's files came out byte-identical
                got_files = sha256_dir(outs / v)
                assert {f: got_files.get(f) for f in want} == want, v
        load = os.getloadavg()[0]
        if record:
            for v, dt in got.items():
                times[v].append(dt)
            loads.append(load)
            print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{v} {dt:.2f}s" for v, dt in got.items())
                  + f", load {load:.2f}", flush=True)
        empty_bucket(s3, bucket)
        shutil.rmtree(files_dir, ignore_errors=True)
        shutil.rmtree(outs, ignore_errors=True)

    for reg in (reg_cli_s3, reg_cli_file):  # schema created before any timed run ('list' creates none)
        run(cli("--registry", reg, "--blobs", str(work / "warm"), "db", "upgrade"), env)
    one_round(999, record=False)  # warm-up: byte-compiled files, page cache, the server's first objects
    for r in range(rounds):
        one_round(r, record=True)
    med = {v: C.median(t) for v, t in times.items()}

    def ratio(a: str, b: str) -> dict:
        return C.paired_ratio(times, a, b)

    return {"adapter": {"dir_files": C.dir_files(adapter),
                        "total_bytes": total},
            "seconds": times, "median_s": med, "load_1min_per_round": loads,
            "ratios": {"push_cli_s3_vs_boto3": ratio("ours_cli_s3", "peer_boto3_push"),
                       "pull_cli_s3_vs_boto3": ratio("ours_cli_pull", "peer_boto3_pull"),
                       "publish_cli_s3_vs_cli_file": ratio("ours_cli_s3", "ours_cli_file"),
                       "publish_api_s3_vs_api_file": ratio("ours_api_s3", "ours_api_file")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 17 MB adapter only, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 7, quick 5)")
    ap.add_argument("--size", choices=list(SIZES), default=None, help="one adapter size only")
    args = ap.parse_args()
    rounds = max(5, args.rounds or (5 if args.quick else 7))
    sizes = [args.size] if args.size else ["17MB"] if args.quick else list(SIZES)

    models = C.work_dir("s3-adapters", fresh=False)  # built once, kept for the next run
    adapters = {s: build(models / s, *SIZES[s]) for s in sizes}
    work = C.work_dir(f"s3-{os.getpid()}")
    proc, endpoint = start_moto(work / "moto.log")
    env = {k: v for k, v in os.environ.items() if k not in ("ADAPTERHUB_LOAD_PLUGINS", "PYTHONDONTWRITEBYTECODE",
                                                            "ADAPTERHUB_BLOBS", "ADAPTERHUB_REGISTRY_URL")}
    env.update(AWS, AWS_ENDPOINT_URL=endpoint, ADAPTERHUB_HOME=str(work / "home"))
    os.environ.update(AWS, AWS_ENDPOINT_URL=endpoint, ADAPTERHUB_HOME=str(work / "home"))
    try:
        import boto3

        s3 = boto3.client("s3")
        bucket = "bench-adapters"
        s3.create_bucket(Bucket=bucket)
        results = {s: bench_size(s, adapters[s], work, bucket, env, rounds, s3) for s in sizes}
        for s, res in results.items():
            med, rt = res["median_s"], res["ratios"]
            mb = res["adapter"]["total_bytes"] / 1e6
            print(f"\n{s}: {mb:.1f} MB, median of {rounds} rounds, load {min(res['load_1min_per_round']):.1f}"
                  f"-{max(res['load_1min_per_round']):.1f} (ratio = ours / peer; target <= 1.2x)")
            print(C.table(["what", "median s", "MB/s", "ratio"], [
                ["push: adapterhub --blobs s3:// publish", med["ours_cli_s3"], mb / med["ours_cli_s3"],
                 f"{rt['push_cli_s3_vs_boto3']['median_ratio']:.2f}x"],
                ["push: python + boto3 upload_file", med["peer_boto3_push"], mb / med["peer_boto3_push"], "1.00x"],
                ["pull: adapterhub --blobs s3:// pull", med["ours_cli_pull"], mb / med["ours_cli_pull"],
                 f"{rt['pull_cli_s3_vs_boto3']['median_ratio']:.2f}x"],
                ["pull: python + boto3 download_file", med["peer_boto3_pull"], mb / med["peer_boto3_pull"], "1.00x"],
                ["publish CLI, file:// blobs", med["ours_cli_file"], mb / med["ours_cli_file"],
                 f"s3/file {rt['publish_cli_s3_vs_cli_file']['median_ratio']:.2f}x"],
                ["publish API, s3:// blobs", med["ours_api_s3"], mb / med["ours_api_s3"], ""],
                ["publish API, file:// blobs", med["ours_api_file"], mb / med["ours_api_file"],
                 f"s3/file {rt['publish_api_s3_vs_api_file']['median_ratio']:.2f}x"],
                ["pull API, s3:// blobs", med["ours_api_pull"], mb / med["ours_api_pull"], ""],
                ["start: adapterhub list (context)", med["ours_cli_start"], "", ""],
            ]))
        out = C.write_results(f"bench_s3_{args.size}" if args.size else "bench_s3_quick" if args.quick else "bench_s3", {
            "quick": args.quick, "rounds": rounds, "server": "moto_server on 127.0.0.1 (moto[server])",
            "peer": "boto3 upload_file/download_file, default TransferConfig, in a fresh python process",
            "sizes": results})
        print(f"\nwrote {out.relative_to(C.ROOT)}")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

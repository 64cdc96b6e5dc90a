"""A hostile prompt against `adapterhub serve`: how fast a 4 MB prompt is refused, what it does
to a small request sent beside it, and what it leaves in the server's memory. Ours (this
checkout) against the peer: the same server before issue 10 (commit ``--peer-commit``,
default 4a85007, run from ``git archive`` of that commit on PYTHONPATH), which read any body,
tokenized it on the model's worker thread and refused it only then.

Setup: bench_server.py's base (Llama, hidden 256, 4 layers, byte-level BPE tokenizer, context
256), no adapters, one `adapterhub serve` process per side (``OMP_NUM_THREADS=2``). Per side:

1. small: 20 sequential small completions (8 greedy tokens) alone: their median latency.
2. hostile: ``--rounds`` times (the peer: ``--peer-rounds``), a 4,000,000-character prompt
   (4 MB, encoded before timing) sent while a second client sends small completions back to
   back; the hostile request's time to its answer, and the small requests' median and
   slowest latency while it was in flight.
3. memory: the server's RSS (VmRSS) before the first hostile request and 2 s after the last.
4. ours only: a 1 MB prompt (under the 2 MiB body limit, over the 8,192 characters a
   256-token context can hold): time to its 400, refused before tokenization.

    .venv/bin/python benchmarks/bench_server_limits.py [--rounds N] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from _common import ROOT, machine, median, table, work_dir, write_results
from bench_server import Server, _build

SMALL = {"model": "base", "prompt": "the cat sat on the", "max_tokens": 8, "temperature": 0}


def _peer_tree(work: Path, commit: str) -> Path:
    """The package as of ``commit``, extracted under ``work`` (for PYTHONPATH)."""
    out = work / f"peer-{commit}"
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "adapterhub_sdk", "registry"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    return out


async def _small_loop(client: Any, url: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        r = await client.post(f"{url}/v1/completions", json=SMALL)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text


async def _hostile(client: Any, url: str, chars: int) -> tuple[float, int, list[float]]:
    """Time to answer a ``chars``-character prompt, its status, and the small requests' latencies
    meanwhile (the small client starts first and runs until the answer)."""
    body = json.dumps({**SMALL, "prompt": ("the cat sat on the mat " * (chars // 23 + 1))[:chars]}).encode()
    stop = asyncio.Event()  # the body is encoded before the small client starts: its loop is not blocked
    small: list[float] = []
    loop = asyncio.create_task(_small_loop(client, url, stop, small))
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    r = await client.post(f"{url}/v1/completions", content=body, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - t0
    stop.set()
    await loop
    return elapsed, r.status_code, small


async def _measure(url: str, server: Server, rounds: int, ours: bool) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(3):  # warm-up
            await client.post(f"{url}/v1/completions", json=SMALL)
        alone = []
        for _ in range(20):
            t0 = time.perf_counter()
            await client.post(f"{url}/v1/completions", json=SMALL)
            alone.append(time.perf_counter() - t0)
        rss_before = server.rss()
        hostile = []
        for _ in range(rounds):
            elapsed, status, small = await _hostile(client, url, 4_000_000)
            hostile.append({"seconds": elapsed, "status": status, "small_median_s": median(small) if small else None,
                            "small_max_s": max(small, default=None), "small_requests": len(small)})
        await asyncio.sleep(2)
        rss_after = server.rss()
        result: dict[str, Any] = {"small_alone_median_s": median(alone), "hostile": hostile,
                                  "rss_before": rss_before, "rss_after": rss_after}
        if ours:
            elapsed, status, small = await _hostile(client, url, 1_000_000)
            result["over_context_1mb"] = {"seconds": elapsed, "status": status,
                                          "small_median_s": median(small) if small else None}
    return result


def _side(base: Path, url: str, work: Path, rounds: int, peer: Path | None) -> dict[str, Any]:
    before = os.environ.get("PYTHONPATH")
    if peer is not None:
        os.environ["PYTHONPATH"] = str(peer)
        url = f"sqlite:///{work / 'peer-registry.db'}"  # its own: no adapters, and an older schema
    try:
        server = Server(base, url, [], 2, work / ("peer.log" if peer else "ours.log"))
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    try:
        server.wait()
        return asyncio.run(_measure(f"http://127.0.0.1:{server.port}", server, rounds, peer is None))
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="hostile requests per side (the peer: 1 by default)")
    ap.add_argument("--peer-rounds", type=int, default=1)
    ap.add_argument("--peer-commit", default="4a85007")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    work = work_dir("bench_server_limits")
    base, url = _build(work, 0)
    load = os.getloadavg()
    ours = _side(base, url, work, args.rounds, None)
    peer = None if args.no_peer else _side(base, url, work, args.peer_rounds, _peer_tree(work, args.peer_commit))
    load_after = os.getloadavg()

    def row(name: str, r: dict[str, Any]) -> list[Any]:
        h = r["hostile"]
        return [name, f"{median([x['seconds'] for x in h]) * 1000:.1f} ms", h[0]["status"],
                f"{r['small_alone_median_s'] * 1000:.1f} ms",
                f"{median([x['small_median_s'] for x in h if x['small_median_s']] or [0]) * 1000:.1f} ms",
                f"{max(x['small_max_s'] or 0 for x in h) * 1000:.1f} ms",
                f"{(r['rss_after'] - r['rss_before']) / 2**20:+.1f} MB"]

    rows = [row("ours", ours)] + ([row(f"peer ({args.peer_commit})", peer)] if peer else [])
    print(table(["server", "4 MB prompt answered in", "status", "small alone", "small beside it", "slowest beside it",
                 "RSS after - before"],
                rows))
    if peer:
        o = median([x["seconds"] for x in ours["hostile"]])
        p = median([x["seconds"] for x in peer["hostile"]])
        print(f"4 MB refusal: peer / ours = {p / o:,.0f}x")
    print("1 MB over-context prompt (ours):", ours["over_context_1mb"])
    print(f"load average before {load}, after {load_after}")
    write_results("bench_server_limits", {"ours": ours, "peer": peer, "peer_commit": args.peer_commit,
                                          "loadavg_before": load, "loadavg_after": load_after,
                                          "machine_now": machine()})


if __name__ == "__main__":
    main()

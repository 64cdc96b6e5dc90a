"""A bounded load generator for OpenAI-shaped completion servers on loopback, and the server
processes it drives (bench_serving_load.py).

A *workload* is a fixed list of requests drawn from one seed: arrival offsets (Poisson: unit
exponential gaps divided by the rate, so the same seed gives the same request mix at any rate),
the model (adapter) each one names, its prompt and its ``max_tokens``. ``open_loop`` sends each
request at its arrival time whatever is still in flight; ``closed_loop`` keeps C requests in
flight (a saturating load). Every request streams (``stream: true`` with usage), so the client
sees the first token: TTFT is the time to the first chunk carrying text. Open-loop latencies
are measured from the *scheduled* arrival (a client that falls behind does not hide queueing);
``lag_ms`` says how late the client actually sent.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import median, percentile


@dataclass(frozen=True)
class Request:
    i: int
    at: float  # arrival offset in seconds (open loop)
    target: int  # index into the run's target list (which server / model)
    prompt: str
    prompt_tokens: int
    max_tokens: int


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return min(hi, max(lo, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))))


def workload(n: int, *, targets: int, seed: int, text_ids: list[int], decode: Any,
             prompt_range: tuple[int, int], output_range: tuple[int, int]) -> list[Request]:
    """``n`` requests at rate 1 (scale ``at`` by 1/rate with :func:`at_rate`). Prompts are
    windows of ``text_ids`` decoded to text; ``decode`` maps ids to text."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1.0)
        plen = log_uniform(rng, *prompt_range)
        start = rng.randrange(0, len(text_ids) - plen)
        out.append(Request(i, t, rng.randrange(targets), decode(text_ids[start:start + plen]), plen,
                           log_uniform(rng, *output_range)))
    return out


def at_rate(reqs: list[Request], rate: float) -> list[Request]:
    return [Request(r.i, r.at / rate, r.target, r.prompt, r.prompt_tokens, r.max_tokens) for r in reqs]


async def _one(client: Any, url: str, model: str, req: Request, sent_at: float) -> dict[str, Any]:
    """Stream one completion; times are seconds from ``sent_at`` (the request's reference)."""
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t_send = time.perf_counter()
    ttft = None
    tokens = chunks = 0
    usage = None
    status, error = 0, None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            status = r.status_code
            if status != 200:
                error = (await r.aread()).decode(errors="replace")[:200]
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    choices = obj.get("choices") or []
                    if choices and choices[0].get("text"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - sent_at
                    if obj.get("usage"):
                        usage = obj["usage"]
    except Exception as exc:  # noqa: BLE001 - recorded per request
        error = f"{type(exc).__name__}: {exc}"[:200]
    end = time.perf_counter()
    if usage is not None:
        tokens = int(usage.get("completion_tokens") or 0)
    return {"i": req.i, "target": req.target, "max_tokens": req.max_tokens, "prompt_tokens": req.prompt_tokens,
            "status": status, "error": error, "ttft_s": ttft, "e2e_s": end - sent_at, "end": end,
            "lag_s": t_send - sent_at, "tokens": tokens, "chunks": chunks, "usage": usage is not None}


def _client(timeout: float) -> Any:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30),
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))


async def _open(targets: list[tuple[str, str]], reqs: list[Request], timeout: float) -> tuple[list, float, float]:
    async with _client(timeout) as client:
        t0 = time.perf_counter() + 0.05

        async def fire(req: Request) -> dict[str, Any]:
            due = t0 + req.at
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url, model = targets[req.target]
            return await _one(client, url, model, req, due)

        rows = await asyncio.gather(*(fire(r) for r in reqs))
    return list(rows), t0, time.perf_counter()


async def _closed(targets: list[tuple[str, str]], reqs: list[Request], concurrency: int,
                  timeout: float) -> tuple[list, float, float]:
    rows: list[dict[str, Any]] = []
    it = iter(reqs)
    async with _client(timeout) as client:
        t0 = time.perf_counter()

        async def worker() -> None:
            for req in it:
                url, model = targets[req.target]
                rows.append(await _one(client, url, model, req, time.perf_counter()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rows, t0, time.perf_counter()


def run_load(targets: list[tuple[str, str]], reqs: list[Request], *, concurrency: int | None = None,
             timeout: float = 900.0) -> dict[str, Any]:
    """Open loop when ``concurrency`` is None, else closed loop; summary + per-request rows."""
    load_before = os.getloadavg()
    if concurrency is None:
        rows, t0, t1 = asyncio.run(_open(targets, reqs, timeout))
    else:
        rows, t0, t1 = asyncio.run(_closed(targets, reqs, concurrency, timeout))
    out = summarize(rows, t0, t1)
    out["loadavg_before"], out["loadavg_after"] = load_before, os.getloadavg()
    for r in rows:
        r.pop("end", None)
    out["requests"] = rows
    return out


def summarize(rows: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200 and r["error"] is None]
    wall = (max(r["end"] for r in ok) - t0) if ok else t1 - t0
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    e2e = [r["e2e_s"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    short = sum(1 for r in ok if r["tokens"] != r["max_tokens"])
    return {"n": len(rows), "ok": len(ok), "errors": len(rows) - len(ok), "wall_s": wall,
            "rps": len(ok) / wall, "tok_s": tokens / wall, "output_tokens": tokens,
            "not_max_tokens": short, "text_chunks": sum(r["chunks"] for r in ok), "no_usage": sum(1 for r in ok if not r["usage"]),
            "p50_ttft_ms": 1e3 * median(ttft) if ttft else float("nan"),
            "p99_ttft_ms": 1e3 * percentile(ttft, 99) if ttft else float("nan"),
            "p50_e2e_ms": 1e3 * median(e2e) if e2e else float("nan"),
            "p99_e2e_ms": 1e3 * percentile(e2e, 99) if e2e else float("nan"),
            "p99_lag_ms": 1e3 * percentile([r["lag_s"] for r in rows], 99),
            "first_errors": [r["error"] for r in rows if r["error"]][:3]}


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTED: list[Server] = []


@atexit.register
def _stop_all() -> None:  # a run that fails half-way leaves no server behind
    for s in STARTED:
        s.stop()


class Server:
    """A server process on loopback; ``start_s``: from spawn to /health answering 200 (what a
    user waits before the first request)."""

    def __init__(self, cmd: list[str], port: int, log: Path, threads: int, env: dict[str, str] | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "ADAPTERHUB_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.start_s: float | None = None
        STARTED.append(self)

    def wait(self, deadline_s: float = 900) -> float:
        import httpx

        deadline = time.time() + deadline_s
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self.start_s = time.perf_counter() - self.t_spawn
                    return self.start_s
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer /health in {deadline_s:.0f} s: {self.tail()}")

    def tail(self, n: int = 600) -> str:
        self.log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-n:].replace("\n", " | ")
        except OSError:
            return ""

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.log.closed:
            self.log.close()

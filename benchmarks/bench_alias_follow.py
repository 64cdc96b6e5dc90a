"""How long `adapterhub serve` takes to serve the version an alias moved to.

Starts ``adapterhub serve --adapter acme/sent@prod --follow-interval INTERVAL`` on a small
Llama (real CLI, real SQLite registry, LoRA adapters saved by PEFT), moves the alias back
and forth with ``adapterhub alias`` (the real CLI), and times from the moment the alias
command returns to the moment ``/v1/models`` shows the new version, and the attach time the
server logs for each switch. Idle server (no requests running): the bound is the interval +
the attach; under load the continuous scheduler also finishes the rows running first.

    python benchmarks/bench_alias_follow.py [--interval 2] [--moves 6] [--hidden 256]

Prints one JSON object (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADAPTERHUB = str(Path(sys.executable).with_name("adapterhub"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--moves", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()

    import httpx
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterhub_sdk as ah

    tmp = Path(tempfile.mkdtemp(prefix="bench-follow-"))
    env = dict(os.environ, ADAPTERHUB_HOME=str(tmp / "home"), ADAPTERHUB_LOAD_PLUGINS="", HF_HUB_OFFLINE="1")
    os.environ.update(ADAPTERHUB_HOME=env["ADAPTERHUB_HOME"])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 2, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    base = tmp / "base"
    LlamaForCausalLM(cfg).save_pretrained(base)
    url = f"sqlite:///{tmp / 'registry.db'}"
    with ah.Registry.open(url) as reg:
        for i, version in enumerate(("1.0.0", "1.1.0")):
            model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                                   LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.normal_(0, 0.05, generator=torch.Generator().manual_seed(i))
            model.save_pretrained(tmp / version)
            reg.publish(tmp / version, name="acme/sent", version=version, base=base)
        reg.alias("acme/sent@1.0.0", "prod")
        size = reg.show("acme/sent@1.0.0").size
    port = _free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ADAPTERHUB, "--registry", url, "serve", "--base", str(base), "--adapter",
                                 "acme/sent@prod", "--follow-interval", str(args.interval), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    waits = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(log.read_text()[-2000:])
                time.sleep(0.1)
            for i in range(args.moves):
                version = "1.1.0" if i % 2 == 0 else "1.0.0"
                subprocess.run([ADAPTERHUB, "--registry", url, "alias", f"acme/sent@{version}", "prod"], env=env,
                               check=True, capture_output=True)
                moved = time.monotonic()
                while True:
                    card = next(m for m in c.get("/v1/models").json()["data"] if m["id"] == "acme/sent")
                    if card["version"] == version:
                        break
                    time.sleep(0.01)
                waits.append(time.monotonic() - moved)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    attach = [float(x) for x in re.findall(r"after ([0-9.]+) s to attach", log.read_text())]
    print(json.dumps({"interval_s": args.interval, "moves": args.moves, "adapter_bytes": size,
                      "hidden": args.hidden, "rank": args.rank,
                      "switch_s": {"min": min(waits), "median": statistics.median(waits), "max": max(waits)},
                      "attach_s": {"min": min(attach), "median": statistics.median(attach), "max": max(attach)}
                      if attach else None}, indent=1))


if __name__ == "__main__":
    main()

"""LoRAX: a PEFT LoRA directory loaded per request from a local path
(``adapter_source: "local"``)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..manifest import Manifest
from .common import README, _Base, _fence, _json, _readme, _write


def _layout_lorax(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path, adir: str,
                  warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    path = str(out / adir)
    request = {"inputs": "Hello", "parameters": {"max_new_tokens": 64, "adapter_id": path,
                                                 "adapter_source": "local"}}
    _write(tmp / "request.json", _json(request))
    docker_req = {"inputs": "Hello", "parameters": {"max_new_tokens": 64, "adapter_id": f"/data/{adir}",
                                                    "adapter_source": "local"}}
    base_arg = base.ref or "BASE_MODEL"
    base_in_docker = f"/base/{Path(base_arg).name}" if base.checked else base_arg
    docker = (f"docker run --gpus all --shm-size 1g -p 8080:80 -v {shlex.quote(str(out))}:/data"
              + (f" -v {shlex.quote(base_arg)}:{shlex.quote(base_in_docker)}" if base.checked else "")
              + f" \\\n  ghcr.io/predibase/lorax:main --model-id {shlex.quote(base_in_docker)}")
    usage = [
        "LoRAX loads PEFT LoRA adapters from a local directory per request. Start LoRAX on the base:",
        "",
        *_fence("sh", f"lorax-launcher --model-id {shlex.quote(base_arg)}"),
        "",
        "and name the adapter's directory in the request (`request.json` holds this body):",
        "",
        *_fence("sh", "curl http://127.0.0.1:8080/generate -X POST -H 'Content-Type: application/json' \\\n"
                      "  -d @request.json"),
        *_fence("json", json.dumps(request, indent=2)),
        "",
        "With the Docker image, mount this directory at `/data` and use the path inside the container:",
        "",
        *_fence("sh", docker),
        *_fence("json", json.dumps(docker_req, indent=2)),
    ]
    _write(tmp / README, _readme(manifest, "lorax", adapter_dir=adir, served_name=served, base=base,
                                 usage=usage, warnings=warnings))
    return out / adir, README, {"request": request}


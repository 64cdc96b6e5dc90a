"""PEFT: the adapter directory as PEFT saved it, byte for byte, with the pin in a README
beside its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import Manifest
from .common import PEFT_README, _Base, _fence, _readme, _write


def _layout_peft(tmp: Path, manifest: Manifest, base: _Base, served: str, out: Path,
                 warnings: list[str]) -> tuple[Path, str, dict[str, Any]]:
    usage = [
        "The directory is the adapter as PEFT saved it, byte for byte:",
        "",
        *_fence("python", "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                          f"base = AutoModelForCausalLM.from_pretrained({base.ref or 'BASE_MODEL'!r})\n"
                          f"model = PeftModel.from_pretrained(base, {str(out)!r})"),
    ]
    _write(tmp / PEFT_README, _readme(manifest, "peft", adapter_dir=".", served_name=served, base=base,
                                      usage=usage, warnings=warnings))
    return out, PEFT_README, {}


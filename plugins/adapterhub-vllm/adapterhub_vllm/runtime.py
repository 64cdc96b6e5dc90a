"""The ``vllm`` runtime backend: what vLLM serves, stated as limits so that
``adapterhub resolve --runtime vllm`` can answer before anything is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapterhub_sdk.export import VLLM_MAX_LORA_RANKS, VLLM_MODULES_TO_SAVE_OK
from adapterhub_sdk.runtime import RuntimeBackend, RuntimeLimits

VLLM_LIMITS = RuntimeLimits(
    methods=frozenset({"lora"}),
    unsupported_variants=frozenset({"dora"}),
    max_rank=VLLM_MAX_LORA_RANKS[-1],
    dtypes=("float16", "bfloat16"),
    devices=("cuda",),
    mixed_batch_methods=frozenset({"lora"}),
    notes=(
        "LoRA and rsLoRA from PEFT; no DoRA, LoRA bias, aLoRA, QALoRA or layer replication",
        "modules_to_save only for classifier heads (classifier, score)",
        "rank <= --max-lora-rank (1, 8, 16, 32, 64, 128, 256, 320 or 512)",
        "LoRA weights run in float16 or bfloat16 (--lora-dtype)",
        "adapters are resolved by name from the registry and fingerprint-checked by the "
        "adapterhub LoRA resolver (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
    ),
)


class VllmRuntime(RuntimeBackend):
    """vLLM on CUDA. :meth:`lora_request_args` prepares an adapter for a ``LoRARequest``."""

    def __init__(self) -> None:
        super().__init__("vllm", VLLM_LIMITS)

    def check(self, method: str, variant: str, summary: Mapping[str, Any]) -> list[str]:
        reasons = super().check(method, variant, summary)
        extra = [m for m in (summary.get("modules_to_save") or []) if m not in VLLM_MODULES_TO_SAVE_OK]
        if extra:
            reasons.append(f"runtime 'vllm' supports modules_to_save only for classifier heads "
                           f"({', '.join(VLLM_MODULES_TO_SAVE_OK)}), the adapter saves {', '.join(map(str, extra))}")
        return reasons

    def check_method(self, method: Mapping[str, Any]) -> list[str]:
        """Also what only the LoRA config shows (LoRA bias, aLoRA, unknown options, ...), as
        the resolver refuses it, so that ``resolve --runtime vllm`` and vLLM agree."""
        from adapterhub_sdk.export import vllm_config_limitations

        reasons = super().check_method(method)
        if method.get("type") == "lora":
            reasons += [f"runtime 'vllm': {why}" for why in vllm_config_limitations(method.get("config") or {})]
        return reasons

    def lora_request_args(self, spec: str, **kwargs: Any) -> Any:
        """See :func:`adapterhub_vllm.lora.prepare_lora`."""
        from .lora import prepare_lora

        return prepare_lora(spec, **kwargs)

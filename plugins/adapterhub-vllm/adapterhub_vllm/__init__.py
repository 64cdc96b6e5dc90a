"""adapterhub-vllm: serve registry adapters with vLLM.

- a ``vllm`` runtime backend (registered through adapterhub's ``register_runtimes`` hook):
  LoRA only, no DoRA, rank <= 512, CUDA; ``adapterhub resolve --runtime vllm`` uses it;
- :func:`prepare_lora`: registry spec -> ``LoRARequest`` arguments, pulled (verified) into a
  cache keyed by the manifest digest, refused unless pinned to the served model's weights;
- :class:`~adapterhub_vllm.resolver.AdapterHubLoRAResolver`: a vLLM LoRA resolver (entry
  point group ``vllm.general_plugins``) that does the same for names in requests.

Importing this package never imports vLLM; ``adapterhub_vllm.resolver`` does when it can.
"""

from __future__ import annotations

from adapterhub_sdk.hookspecs import hookimpl

from .lora import (
    LoRAArgs,
    cached_pull,
    lora_int_id_for,
    prepare_lora,
    refusal_reasons,
    served_fingerprint,
)
from .runtime import VLLM_LIMITS, VllmRuntime

__version__ = "0.1.0"


@hookimpl
def register_runtimes(register):
    register(VllmRuntime())


__all__ = ["VLLM_LIMITS", "LoRAArgs", "VllmRuntime", "cached_pull", "lora_int_id_for", "prepare_lora",
           "refusal_reasons", "served_fingerprint"]

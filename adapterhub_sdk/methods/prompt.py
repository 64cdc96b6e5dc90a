"""Prompt learning: prompt tuning, P-tuning and prefix tuning. They touch no base module;
what must fit is the embedding width, and for prefix tuning the layer count and the
key/value width of each layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import AdapterFormatError
from ..hookspecs import hookimpl
from .base import AdapterMethod, Requirements, Shape, numel


def _embeddings(tensors: Mapping[str, Shape]) -> Shape:
    if set(tensors) != {"prompt_embeddings"} or len(tensors["prompt_embeddings"]) != 2:
        extra = sorted(set(tensors) - {"prompt_embeddings"})
        raise AdapterFormatError(f"unexpected tensors for a prompt-learning adapter: {extra or list(tensors)}",
                                 hint="the adapter file does not match its adapter_config.json")
    return tensors["prompt_embeddings"]


class PromptTuningMethod(AdapterMethod):
    name = "prompt_tuning"
    peft_types = ("PROMPT_TUNING", "P_TUNING")

    def detect(self, config: Mapping[str, Any]) -> str | None:
        kind = str(config.get("peft_type", "")).upper()
        return {"PROMPT_TUNING": "prompt_tuning", "P_TUNING": "p_tuning"}.get(kind)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        n, width = _embeddings(tensors)
        if config.get("token_dim") not in (None, width):
            raise AdapterFormatError(f"prompt_embeddings are {width} wide but token_dim is {config.get('token_dim')}")
        return {"@input_embeddings": [None, width]}

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "virtual_tokens": config.get("num_virtual_tokens"), "token_dim": config.get("token_dim")}


class PrefixTuningMethod(AdapterMethod):
    name = "prefix_tuning"
    peft_types = ("PREFIX_TUNING",)

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: Any = None) -> Requirements:
        n, width = _embeddings(tensors)
        layers, kv = config.get("num_layers"), config.get("token_dim")
        if not isinstance(layers, int) or not isinstance(kv, int):
            raise AdapterFormatError("prefix tuning config lacks num_layers/token_dim")
        if not config.get("prefix_projection") and width != layers * 2 * kv:
            raise AdapterFormatError(f"prompt_embeddings are {width} wide, expected num_layers*2*token_dim = "
                                     f"{layers * 2 * kv}")
        return {"@num_layers": [layers], "@kv_width": [kv]}

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        return {"trainable_params": sum(numel(s) for s in tensors.values()),
                "virtual_tokens": config.get("num_virtual_tokens"), "layers": config.get("num_layers"),
                "projection": bool(config.get("prefix_projection"))}


@hookimpl
def register_methods(register):
    register(PromptTuningMethod())
    register(PrefixTuningMethod())

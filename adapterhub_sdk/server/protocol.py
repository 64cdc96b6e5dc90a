"""The HTTP API's request and response bodies (pydantic), as ``/openapi.json`` describes them.

Request models validate what clients send (unknown OpenAI fields are accepted and ignored,
unsupported ones refused by the routes with a 400). Response models describe what the
server answers; they forbid fields they do not declare, so a test can hold every answer
to its documented shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# --------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str = Field(description="an adapter's served name, or the base model's id")
    max_tokens: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: StrictInt | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]  # StrictInt: true is no token id
    echo: bool | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(min_length=1, description="a registry spec: NAME[@VERSION|RANGE|ALIAS]")
    name: str | None = Field(default=None, description="the name to serve it under (default: its registry name)")


class LoraLoad(_Body):
    """vLLM's ``/v1/load_lora_adapter`` body (its other fields are accepted and ignored)."""

    lora_name: str = Field(min_length=1, description="the name to serve it under")
    lora_path: str = Field(min_length=1, description="a registry spec (NAME[@VERSION|RANGE|ALIAS]) or a PEFT "
                                                     "directory on the server: an absolute path, ./, ../, ~ or "
                                                     "file://")
    load_inplace: bool = Field(default=False, description="replace an adapter already served as lora_name (vLLM's "
                                                          "flag; without it a name in use is a 400)")


class LoraUnload(_Body):
    """vLLM's ``/v1/unload_lora_adapter`` body."""

    lora_name: str = Field(min_length=1)


REQUEST_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatRequest, AdapterLoad, LoraLoad, LoraUnload)


# --------------------------------------------------------------------------- responses


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Answer):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Answer):
    """Every failure: OpenAI's error object."""

    error: ErrorDetail


class Usage(_Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(_Answer):
    """Per token of a choice (with ``logprobs: K``): its text, log-probability, the K most likely
    tokens, and where it starts in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(_Answer):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason


class CompletionResponse(_Answer):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(_Answer):
    role: Literal["assistant"]
    content: str


class TopLogprob(_Answer):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Answer):
    """With ``logprobs: true`` (and ``top_logprobs: K``): one object per generated token."""

    content: list[TokenLogprob] | None


class ChatChoice(_Answer):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(_Answer):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunkChoice(_Answer):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionChunk(_Answer):
    """One Server-Sent Event of a streamed completion (``data: {...}``, then ``data: [DONE]``)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ChatDelta(_Answer):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Answer):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Answer):
    """One Server-Sent Event of a streamed chat completion (the first delta carries the role)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class AdapterInfo(_Answer):
    """An attached adapter, as ``AttachedAdapter.to_dict`` gives it."""

    name: str
    ref: str = Field(description="name@version it came from")
    digest: str
    verdict: Literal["exact", "structural"]
    rank: int
    modules: int
    bytes: int = Field(description="memory its tensors take")
    file_bytes: int = Field(description="size of its files in the registry")
    pinned: bool = Field(description="false: a directory without a base fingerprint, checked by shapes only")
    path: str | None = Field(default=None, description="the server directory it was read from (none: the registry)")


class ModelPermission(_Answer):
    """vLLM's (and OpenAI's former) permission object, always the same here."""

    id: str
    object: Literal["model_permission"]
    created: int
    allow_create_engine: bool
    allow_sampling: bool
    allow_logprobs: bool
    allow_search_indices: bool
    allow_view: bool
    allow_fine_tuning: bool
    organization: str
    group: str | None
    is_blocking: bool


class Refusal(_Answer):
    version: str | None = Field(description="the version the alias moved to (none: the alias could not be read)")
    digest: str | None
    reason: str
    at: int = Field(description="when it was refused (unix time)")


class AliasState(_Answer):
    """An adapter served by following an alias (``serve --adapter NS/NAME@ALIAS``)."""

    spec: str = Field(description="the alias followed, NS/NAME@ALIAS")
    version: str = Field(description="the version serving now")
    digest: str
    since: int = Field(description="when this version started serving (unix time)")
    refusal: Refusal | None = Field(description="the alias's latest target when it could not be served (the "
                                                "version above keeps serving); none otherwise")


class ModelObject(_Answer):
    """The base (``parent`` null, with its ``fingerprint``) or an adapter (with ``adapter``,
    its ``digest`` and served ``version``, and ``alias`` when it follows one). The fields vLLM's
    model cards carry come first."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int | None = Field(description="the base's context in tokens")
    permission: list[ModelPermission]
    fingerprint: str | None = None
    digest: str | None = Field(default=None, description="the served version's manifest digest")
    version: str | None = Field(default=None, description="the served version (none: an unpinned directory)")
    adapter: AdapterInfo | None = None
    alias: AliasState | None = None


class ModelList(_Answer):
    object: Literal["list"]
    data: list[ModelObject]


class AdapterObject(AdapterInfo):
    id: str
    object: Literal["adapter"]
    parent: str


class AdapterList(_Answer):
    object: Literal["list"]
    data: list[AdapterObject]
    merged: str | None = Field(description="the adapter folded into the base weights, if any")


class AdapterLoaded(AdapterObject):
    replaced: bool = Field(description="true: an adapter of that name was replaced (200); false: added (201)")
    warnings: list[str] = Field(description="e.g. a structural fit (other weights of the same architecture)")


class AdapterDeleted(_Answer):
    id: str
    object: Literal["adapter"]
    deleted: bool


class Health(_Answer):
    status: Literal["ok", "unavailable"]
    base: str
    adapters: int
    queue: int
    device: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with an :class:`ErrorResponse`."""
    return {status: {"model": ErrorResponse} for status in statuses}


def streamed(chunk: type[BaseModel]) -> dict[str, Any]:
    """The ``text/event-stream`` alternative of a route's 200 answer (``stream: true``): each
    event's data is a chunk, or an error object when a started stream fails, then ``[DONE]``."""
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (chunk, ErrorResponse)]
    return {"text/event-stream": {"schema": {"oneOf": refs}}}


__all__ = [
    "AdapterDeleted", "AdapterInfo", "AdapterList", "AdapterLoad", "AdapterLoaded", "AdapterObject",
    "AssistantMessage", "ChatChoice", "ChatChunkChoice", "ChatCompletionChunk", "ChatCompletionResponse",
    "ChatDelta", "ChatMessage", "ChatRequest", "CompletionChoice", "CompletionChunk", "CompletionChunkChoice",
    "CompletionRequest", "CompletionResponse", "ContentPart", "ErrorDetail", "ErrorResponse", "Health",
    "LoraLoad", "LoraUnload", "ModelList", "ModelObject", "StreamOptions", "Usage",
]

"""The checks of generation inputs, shared by :meth:`Deployment.generate` and the HTTP server,
so that both refuse the same values with the same message.

Each check returns the value it accepted (normalized) or raises :class:`GenerationError`,
whose ``param`` names the field (the server answers it as a 400 error object with that
``param``) and whose ``code`` is the OpenAI-style error code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import AdapterHubError

MAX_NEW_TOKENS = 4096  # the most tokens one request may generate
MAX_STOP = 16  # the most stop sequences one request may give
MAX_SEED = 2**63 - 1


class GenerationError(AdapterHubError, ValueError):
    """Bad generation input: prompt too long, bad parameters, no tokenizer.

    ``param``: the request field at fault (``max_tokens``, ``temperature``, ``prompt``, ...),
    or None. ``code``: ``invalid_value``, ``context_length_exceeded`` or ``no_tokenizer``."""

    def __init__(self, message: str, *, hint: str | None = None, param: str | None = None,
                 code: str = "invalid_value") -> None:
        super().__init__(message, hint=hint)
        self.param = param
        self.code = code


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_max_tokens(value: Any) -> int:
    """The number of tokens to generate: an integer from 1 to :data:`MAX_NEW_TOKENS`."""
    if not _is_int(value) or not 1 <= value <= MAX_NEW_TOKENS:
        raise GenerationError(f"max_tokens must be an integer between 1 and {MAX_NEW_TOKENS}, not {value!r}",
                              param="max_tokens")
    return int(value)


def check_temperature(value: Any) -> float:
    """A sampling temperature: a number from 0 (greedy) to 2."""
    if not _is_number(value) or not (math.isfinite(value) and 0 <= value <= 2):
        raise GenerationError(f"temperature must be a number between 0 and 2, not {value!r}", param="temperature")
    return float(value)


def check_top_p(value: Any) -> float:
    """A nucleus-sampling mass: a number in (0, 1]."""
    if not _is_number(value) or not (math.isfinite(value) and 0 < value <= 1):
        raise GenerationError(f"top_p must be a number in (0, 1], not {value!r}", param="top_p")
    return float(value)


def check_seed(value: Any) -> int | None:
    """A row's random seed: None (fresh entropy) or an integer from 0 to 2**63 - 1."""
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise GenerationError(f"seed must be None or an integer between 0 and 2**63 - 1, not {value!r}",
                              param="seed")
    return int(value)


def check_stop(value: Any) -> list[str]:
    """Stop sequences: one string or up to :data:`MAX_STOP` of them, none empty."""
    if value is None:
        return []
    stop = [value] if isinstance(value, str) else list(value)
    if len(stop) > MAX_STOP or any(not isinstance(s, str) or not s for s in stop):
        raise GenerationError(f"stop takes up to {MAX_STOP} non-empty strings, not {value!r}", param="stop")
    return stop


def no_tokenizer(param: str = "prompt") -> GenerationError:
    """The error for a text prompt given to a base without a tokenizer."""
    return GenerationError("this base has no tokenizer: pass the prompt as token ids instead of text",
                           param=param, code="no_tokenizer")


def no_prompts() -> GenerationError:
    """The error for a request with no prompt at all (an empty list of prompts)."""
    return GenerationError("no prompts to generate for", hint="pass a list of strings or of token id lists",
                           param="prompt")


def check_prompt_ids(ids: Sequence[Any], vocab: int) -> list[int]:
    """A tokenized prompt: not empty, every id in the model's vocabulary."""
    if not ids:
        raise GenerationError("the prompt is empty", param="prompt")
    out = []
    for t in ids:
        if not _is_int(t) or not 0 <= t < vocab:
            raise GenerationError(f"token id {t!r} is outside the model's vocabulary (0..{vocab - 1})",
                                  param="prompt")
        out.append(int(t))
    return out


def check_context(prompt_tokens: int, max_tokens: int, context: int | None, *, defaulted: bool = False) -> None:
    """Refuse a prompt that with ``max_tokens`` more tokens exceeds the model's ``context``
    (None: unknown, nothing to check). ``param`` is ``prompt`` when the prompt alone fills the
    context or ``max_tokens`` was not given (``defaulted``), else ``max_tokens``."""
    if not context or prompt_tokens + max_tokens <= context:
        return
    param = "prompt" if prompt_tokens >= context or defaulted else "max_tokens"
    raise GenerationError(f"this model's context is {context} tokens; the prompt has {prompt_tokens} and "
                          f"max_tokens is {max_tokens}: shorten the prompt or lower max_tokens",
                          param=param, code="context_length_exceeded")


__all__ = ["MAX_NEW_TOKENS", "MAX_STOP", "GenerationError", "check_context", "check_max_tokens",
           "check_prompt_ids", "check_seed", "check_stop", "check_temperature", "check_top_p", "no_prompts",
           "no_tokenizer"]

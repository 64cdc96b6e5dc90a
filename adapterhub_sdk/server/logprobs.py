"""``n`` and ``logprobs`` of a request, and the OpenAI shapes of the log-probabilities the
scheduler reports (each entry: ``{"id", "token", "logprob", "offset", "top": [{"id",
"token", "logprob"}]}``, see :class:`~.continuous.ContinuousWorker`).

Log-probabilities are the model's (the adapter's) distribution at each step, before
temperature and top_p, as OpenAI and vLLM report them."""

from __future__ import annotations

from typing import Any

from .errors import APIError

MAX_N = 16  # choices per prompt
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI: 5 for completions, 20 for chat)


def _bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def choices(body: Any) -> int:
    """How many choices each prompt gets (``n``, 1 to :data:`MAX_N`)."""
    n = 1 if body.n is None else body.n
    if not 1 <= n <= MAX_N:
        raise _bad("n", f"n must be an integer from 1 to {MAX_N}, not {n}")
    return int(n)


def requested(body: Any, kind: str) -> int | None:
    """How many top alternatives each token reports (None: no log-probabilities). Completions
    take ``logprobs: int``; chat takes ``logprobs: true`` with ``top_logprobs: int``."""
    if kind == "chat":
        top = body.top_logprobs
        if not body.logprobs:
            if top is not None:
                raise _bad("top_logprobs", "top_logprobs needs logprobs: true")
            return None
        count, param = (0 if top is None else top), "top_logprobs"
    else:
        if body.logprobs is None:
            return None
        count, param = body.logprobs, "logprobs"
    if not 0 <= count <= MAX_LOGPROBS:
        raise _bad(param, f"{param} must be an integer from 0 to {MAX_LOGPROBS}, not {count}")
    return int(count)


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="surrogatepass"))


def completion_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """``choices[i].logprobs`` of a completion: tokens, token_logprobs, top_logprobs, text_offset."""
    if entries is None:
        return None
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"]} for e in entries],
            "text_offset": [e["offset"] for e in entries]}


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """``choices[i].logprobs`` of a chat completion: ``content``, one object per token."""
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": _utf8(e["token"]),
                         "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": _utf8(t["token"])}
                                          for t in e["top"]]} for e in entries]}


__all__ = ["MAX_LOGPROBS", "MAX_N", "chat_logprobs", "choices", "completion_logprobs", "requested"]

"""Bounds on what a request may make the server do, each checked before the work it bounds:
the body's size (413) while it is read, JSON nesting (400) before it is parsed, adapter
names, and a prompt's length in characters before it is tokenized."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from ..errors import InvalidNameError
from ..generation_inputs import GenerationError
from ..jsontext import json_depth, too_deep
from ..names import validate_name
from .errors import APIError

MAX_BODY_BYTES = 2 * 1024 * 1024  # a long prompt as text or token ids fits; a body over it is a 413
MAX_JSON_DEPTH = 64  # OpenAI's bodies nest four levels deep
CHARS_PER_TOKEN = 32  # generous: real tokenizers average 3-5 characters per token, their longest are < 32
_SERVED = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?", re.ASCII)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (from its
    Content-Length, or while it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise too_large(limit)
    return bytes(chunks)


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large")


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` as JSON, refused (400) when empty, malformed or nested deeper than ``max_depth``
    (checked before parsing, so a deep document never reaches the recursive parser)."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    if too_deep(raw, max_depth):
        raise APIError(400, f"the request body nests arrays or objects deeper than {max_depth} levels",
                       code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc}", code="invalid_json") from None
    try:  # a lone surrogate (\ud800) parses but is no text: refused here, not a 500 further on
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request body holds a lone UTF-16 surrogate (an escape like \\ud800 without its "
                            "pair), which is no text", code="invalid_json") from None
    return data


def check_served_name(name: str, param: str = "name") -> str:
    """A name to serve an adapter under: a registry name (``namespace/name``) or one such part
    (``summ``), ASCII letters, digits, ``.``, ``_`` and ``-``; 400 otherwise."""
    try:
        if "/" in name:
            return validate_name(name)
        if _SERVED.fullmatch(name) and ".." not in name and "--" not in name:
            return name
    except InvalidNameError:
        pass
    shown = name[:64].encode("ascii", "backslashreplace").decode() + ("..." if len(name) > 64 else "")
    raise APIError(400, f"{shown!r} cannot name an adapter: use namespace/name or one part of it (ASCII letters, "
                        "digits, '.', '_', '-'; at most 96 characters each)", param=param, code="invalid_value")


def prompt_char_limit(context: int | None) -> int | None:
    """The most characters a prompt may have to fit ``context`` tokens (None: unknown)."""
    return None if not context else int(context) * CHARS_PER_TOKEN


def check_prompt_chars(length: int, context: int | None, param: str) -> None:
    """Refuse a prompt of ``length`` characters that cannot fit the context, before tokenizing it."""
    limit = prompt_char_limit(context)
    if limit is not None and length > limit:
        raise GenerationError(f"this model's context is {context} tokens; a prompt of {length} characters cannot "
                              f"fit it (at most {limit} characters are tokenized): shorten the prompt",
                              param=param, code="context_length_exceeded")


__all__ = ["CHARS_PER_TOKEN", "MAX_BODY_BYTES", "MAX_JSON_DEPTH", "check_prompt_chars", "check_served_name",
           "json_depth", "parse_json", "prompt_char_limit", "read_body", "too_large"]

"""JSON from files and peers, with its nesting measured before the recursive parser sees it:
a document nested thousands deep is a format error, never a RecursionError."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_FILE_JSON_DEPTH = 64  # adapter configs and manifests nest a handful of levels

# a string, or an unterminated one up to the end: each match starts at the first quote left, so one
# pass over the text is linear whatever the quotes and backslashes in it
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw`` (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(b - 1 for b in brackets.translate(_STEP)))


def too_deep(raw: bytes | str, max_depth: int = MAX_FILE_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests arrays or objects deeper than ``max_depth`` (cheap when it cannot)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return data.count(b"[") + data.count(b"{") > max_depth and json_depth(data) > max_depth


def loads_bounded(raw: bytes | str, max_depth: int = MAX_FILE_JSON_DEPTH) -> Any:
    """``json.loads(raw)``; ValueError (as json's own errors are) when nested too deep."""
    if too_deep(raw, max_depth):
        raise ValueError(f"nests arrays or objects deeper than {max_depth} levels")
    return json.loads(raw)

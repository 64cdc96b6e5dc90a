"""Read safetensors headers defensively, without trusting them and without torch.

The header is length-prefixed JSON; everything in it is checked against the file
(size limits, offsets inside the data region, sizes that match dtype and shape), so a
truncated file or a header that claims gigabytes is refused before any tensor is read.
Pickle-based checkpoints are recognised by name and by magic bytes and refused.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorruptFileError, UnsafeFormatError
from .jsontext import too_deep

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's own limit

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")

CONVERT_HINT = (
    "convert it once, in a trusted environment, to safetensors: for an adapter, "
    "PeftModel.from_pretrained(base, DIR).save_pretrained(OUT, safe_serialization=True); "
    "for a model, AutoModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    size: int


def refuse_pickle(path: Path, what: str = "file") -> None:
    """Raise UnsafeFormatError for a pickle-based checkpoint. Never opens it with pickle."""
    raise UnsafeFormatError(
        f"{what} {path.name!r} is a pickle-based checkpoint; adapterhub never loads pickles "
        "because unpickling can run arbitrary code",
        hint=CONVERT_HINT,
    )


def looks_like_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return looks_like_pickle_head(head, size)


def looks_like_pickle_head(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` (its first 9 bytes) is a pickle."""
    # a safetensors header: a length that fits the file, then '{' (the length's first byte
    # may be 0x80, which alone would look like a pickle)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return False
    # pickle protocol 2+ starts with PROTO (0x80); torch.save's zip format with 'PK\x03\x04'
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


class _DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object hook: JSON keeps the last of two equal keys, which would hide a tensor."""
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def read_header(path: str | os.PathLike[str], *, display: str | os.PathLike[str] | None = None
                ) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file. Errors name ``display`` (the
    file the user knows) when ``path`` is a private copy of it."""
    p = Path(path)
    shown = Path(display) if display is not None else p
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CorruptFileError(f"{shown.name}: {size} bytes is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or n > size - 8:
                if looks_like_pickle(p):
                    refuse_pickle(shown)
                raise CorruptFileError(
                    f"{shown.name}: header claims {n:,} bytes but the file has {size:,} bytes "
                    f"(limit {MAX_HEADER_BYTES:,}); the file is truncated or not safetensors",
                    hint="re-download or re-save the file",
                )
            raw = f.read(n)
    except OSError as exc:
        raise CorruptFileError(f"{shown}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
        if too_deep(raw):
            raise CorruptFileError(f"{shown.name}: header nests deeper than any safetensors header; "
                                   "not a safetensors file")
        header = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if looks_like_pickle(p):
            refuse_pickle(shown)
        raise CorruptFileError(f"{shown.name}: header is not valid JSON; not a safetensors file") from exc
    except _DuplicateKey as exc:
        raise CorruptFileError(f"{shown.name}: header names {exc.args[0]!r} twice") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{shown.name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{shown.name}: __metadata__ is not an object")
    base = 8 + n
    data_len = size - base
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise CorruptFileError(f"{shown.name}: entry {name!r} is not an object")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise CorruptFileError(f"{shown.name}: tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise CorruptFileError(f"{shown.name}: tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1]
        ):
            raise CorruptFileError(f"{shown.name}: tensor {name!r} has invalid data_offsets {offs!r}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if dtype == "F4":
            expected = (math.prod(shape) + 1) // 2
        if offs[1] - offs[0] != expected:
            raise CorruptFileError(
                f"{shown.name}: tensor {name!r} spans {offs[1] - offs[0]} bytes but {dtype}{shape} needs {expected}"
            )
        if offs[1] > data_len:
            raise CorruptFileError(
                f"{shown.name}: tensor {name!r} ends at byte {base + offs[1]:,} but the file has {size:,} bytes; "
                "the file is truncated",
                hint="re-download or re-save the file",
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), base + offs[0], base + offs[1])
        spans.append((offs[0], offs[1], name))
    spans.sort()
    for (_, e1, a), (s2, _, b) in zip(spans, spans[1:]):
        if s2 < e1:
            raise CorruptFileError(f"{shown.name}: tensors {a!r} and {b!r} overlap")
    return SafetensorsHeader(p, tensors, {str(k): str(v) for k, v in metadata.items()}, size)

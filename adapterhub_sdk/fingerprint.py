"""Base-model fingerprints: a digest of the weights themselves, not of a name.

Definition (version 1). For every tensor, in name order::

    content = sha256(sha256(chunk_1) || sha256(chunk_2) || ...)     # 8 MiB chunks of raw bytes
    entry   = sha256("adapterhub-tensor-v1\\0" name \\0 dtype \\0 shape \\0 content)
    fingerprint = sha256("adapterhub-fingerprint-v1\\n" entry_1 entry_2 ...)

Chunk digests let two cores share even one huge tensor. Only tensor names, dtypes,
shapes and bytes count, so re-sharding, renaming files or editing safetensors metadata
changes nothing, and a model in memory (same dtype) has the fingerprint of its files.
Tensors that share storage in memory (tied weights) count once under the first name in
module order, which is the name transformers writes to disk.

The *arch signature* hashes the sorted ``name shape`` lines only: two bases with the
same signature accept the same adapters structurally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptFileError, WeightsNotFoundError
from .hashing import (  # noqa: F401 - the engine's names stay importable from here
    ALGO,
    CHUNK,
    PROGRESS_MIN_BYTES,
    _Cache,
    _default_cache,
    _entry_digest,
    _hash_buffers,
    _hash_ranges,
    _is_tty,
    _Progress,
    _serial,
    _work_units,
    _workers,
)
from .layouts import SAFE_WEIGHTS_NAME, AmbiguousCheckpointError, read_index, resolve_checkpoint
from .safetensors_io import TensorInfo, read_header

_TORCH_TO_ST = {
    "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
    "torch.int8": "I8", "torch.uint8": "U8", "torch.int16": "I16", "torch.int32": "I32",
    "torch.int64": "I64", "torch.bool": "BOOL", "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2", "torch.uint16": "U16", "torch.uint32": "U32",
    "torch.uint64": "U64", "torch.complex64": "C64",
}


@dataclass(frozen=True)
class BaseFingerprint:
    """What we know about a base model's weights.

    ``digest`` identifies the exact weights; ``arch_signature`` the architecture;
    ``shapes`` maps every tensor name (tied names included) to its shape, which is all a
    structural compatibility check needs.
    """

    digest: str
    arch_signature: str
    n_tensors: int
    n_params: int
    dtypes: dict[str, int]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    tied: dict[str, str] = field(default_factory=dict, repr=False)
    source: str | None = None
    total_bytes: int = 0
    #: the model's config.json as a dict, when known (not part of the digest)
    config: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def short(self) -> str:
        return self.digest[:12]

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """Shape of a tensor (tied names included) or of a fact such as ``@input_embeddings``."""
        if name.startswith("@"):
            return _pseudo_shape(self, name)
        if name in self.shapes:
            return self.shapes[name]
        target = self.tied.get(name)
        return self.shapes.get(target) if target else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.digest,
            "arch_signature": self.arch_signature,
            "n_tensors": self.n_tensors,
            "n_params": self.n_params,
            "dtypes": dict(self.dtypes),
            "total_bytes": self.total_bytes,
            "source": self.source,
            "tied": dict(self.tied),
        }


_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
                   "tok_embeddings.weight", "shared.weight")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
_KEY_PROJ = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.0\..*(?:k_proj|key|k)\.weight$")


def _pseudo_shape(fp: BaseFingerprint, name: str) -> tuple[int, ...] | None:
    if name == "@input_embeddings":
        found = sorted((n for n in fp.shapes if n.endswith(_EMBED_SUFFIXES)), key=len)
        return fp.shapes[found[0]] if found else None
    if name == "@num_layers":
        layers = {int(m.group(1)) for n in fp.shapes if (m := _LAYER.search(n))}
        return (len(layers),) if layers else None
    if name == "@kv_width":
        for n, shape in fp.shapes.items():
            if _KEY_PROJ.search(n) and len(shape) == 2:
                return (shape[0],)
        emb = _pseudo_shape(fp, "@input_embeddings")
        return (emb[1],) if emb and len(emb) == 2 else None
    return None


def _combine(entries: list[tuple[str, str, tuple[int, ...], bytes]], tied: Mapping[str, str],
             source: str | None, config: dict[str, Any] | None = None) -> BaseFingerprint:
    entries = sorted(entries, key=lambda e: e[0])
    fp = hashlib.sha256(b"adapterhub-fingerprint-" + ALGO.encode() + b"\n")
    arch = hashlib.sha256(b"adapterhub-arch-" + ALGO.encode() + b"\n")
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    n_params = 0
    total = 0
    from .safetensors_io import DTYPE_SIZES

    for name, dtype, shape, entry in entries:
        fp.update(entry)
        arch.update(f"{name}\t{list(shape)}\n".encode())
        shapes[name] = shape
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        numel = 1
        for d in shape:
            numel *= d
        n_params += numel
        total += numel * DTYPE_SIZES.get(dtype, 1)
    tied_ok = {k: v for k, v in tied.items() if k not in shapes and v in shapes}
    return BaseFingerprint(fp.hexdigest(), arch.hexdigest(), len(entries), n_params, dtypes,
                           shapes, tied_ok, source, total, config)


# --------------------------------------------------------------------------- on disk


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files that ``from_pretrained`` loads from a model directory (or the
    file itself); see :mod:`adapterhub_sdk.layouts` for the precedence and what is refused."""
    return resolve_checkpoint(path).files


def _tied_from_config(directory: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Names that the model ties to a stored tensor but that are not on disk (e.g. lm_head)."""
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, dict) or not cfg.get("tie_word_embeddings", False):
        return {}
    tied: dict[str, str] = {}
    # The common case (a causal LM whose lm_head is the input embedding) needs no import.
    inputs = [n for n in shapes if n.endswith(("embed_tokens.weight", "wte.weight",
                                               "word_embeddings.weight", "embed_in.weight"))]
    if len(inputs) == 1 and "lm_head.weight" not in shapes:
        tied["lm_head.weight"] = inputs[0]
    else:
        # Ask transformers which names the architecture ties (imports torch: cached by the caller).
        for arch in cfg.get("architectures") or []:
            try:
                import transformers

                keys = getattr(getattr(transformers, arch, None), "_tied_weights_keys", None)
            except Exception:  # noqa: BLE001 - transformers is optional for this lookup
                keys = None
            if isinstance(keys, dict):
                tied.update({str(k): str(v) for k, v in keys.items()})
    return {k: v for k, v in tied.items() if k not in shapes and v in shapes}


def _hash_files(files: list[Path], label: str, *, workers: int | None, progress: bool | None,
                cache: _Cache | None) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """(name, dtype, shape, entry digest) of every tensor in ``files``, from the cache when unchanged."""
    entries: list[tuple[str, str, tuple[int, ...], bytes]] = []
    todo: list[tuple[Path, str, list[TensorInfo]]] = []
    for f in files:
        key = _Cache.key(f)
        hit = cache.get(key) if cache else None
        if hit is not None:
            for name, dtype, shape, digest in hit:
                entries.append((name, dtype, tuple(shape), bytes.fromhex(digest)))
        else:
            header = read_header(f)
            todo.append((f, key, list(header.tensors.values())))
    if todo:
        hashed = (_hash_by_reads if hasattr(os, "preadv") else _hash_by_mmap)(todo, label, workers, progress)
        owners = [key for _, key, infos in todo for _ in infos]
        per_file: dict[str, list] = {}
        for owner, (name, dtype, shape, digest) in zip(owners, hashed):
            per_file.setdefault(owner, []).append([name, dtype, list(shape), digest.hex()])
            entries.append((name, dtype, shape, digest))
        if cache:
            for _, key, _ in todo:
                cache.put(key, per_file.get(key, []))
    return entries


#: files held open at once while hashing (a checkpoint of thousands of shards stays under the fd limit)
OPEN_FILES = 256


def _hash_by_reads(todo: list[tuple[Path, str, list[TensorInfo]]], label: str, workers: int | None,
                   progress: bool | None) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Each tensor of each file hashed from ``os.preadv`` reads (see :func:`hashing._hash_ranges`)."""
    contents: list[bytes] = []
    for at in range(0, len(todo), OPEN_FILES):
        fds: dict[int, str] = {}
        try:
            ranges = []
            for f, _, infos in todo[at:at + OPEN_FILES]:
                fd = os.open(f, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                fds[fd] = f.name
                ranges += [(fd, t.start, t.end) for t in infos]
            contents += _hash_ranges(ranges, workers, progress, f"fingerprint {label}", fds)
        finally:
            for fd in fds:
                os.close(fd)
    infos_all = [t for _, _, infos in todo for t in infos]
    return [(t.name, t.dtype, t.shape, _entry_digest(t.name, t.dtype, t.shape, c)) for t, c in zip(infos_all, contents)]


def _hash_by_mmap(todo: list[tuple[Path, str, list[TensorInfo]]], label: str, workers: int | None,
                  progress: bool | None) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Where there is no ``os.preadv`` (Windows): each tensor hashed from a memory map."""
    maps: list[mmap.mmap] = []
    jobs = []
    try:
        for f, _, infos in todo:
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            maps.append(mm)
            view = memoryview(mm)
            for t in infos:
                piece = view[t.start:t.end]
                if len(piece) != t.end - t.start:
                    raise CorruptFileError(f"{label}: {f.name} is shorter than its header says (changed on disk?)",
                                           hint="wait until the file is written in full, then retry")
                jobs.append((t.name, t.dtype, t.shape, piece))
        hashed = _hash_buffers(jobs, workers, progress, f"fingerprint {label}")
        del jobs, view
    finally:
        for mm in maps:
            try:
                mm.close()
            except BufferError:
                pass
    return hashed


def _refuse_adapter_files(path: Path) -> None:
    if path.is_dir() and (path / "adapter_config.json").is_file() and (path / "config.json").is_file():
        raise AmbiguousCheckpointError(
            f"{path} holds an adapter (adapter_config.json) beside the base weights: from_pretrained applies "
            "that adapter while loading, so the model is not the weights a fingerprint of the directory covers",
            hint="fingerprint the base's own directory, without the adapter files (publish the adapter with "
                 "'adapterhub publish DIR --base BASE')")


def _fingerprint_files(path: Path, *, workers: int | None, progress: bool | None,
                       cache: _Cache | None, complete: bool = True) -> BaseFingerprint:
    checkpoint = resolve_checkpoint(path)
    fp = _fingerprint_checkpoint(path, checkpoint.files, checkpoint.index, workers=workers,
                                 progress=progress, cache=cache, complete=complete)
    if checkpoint.shadowed and checkpoint.shadowed_index is not None:
        # transformers loads model.safetensors; vLLM and others read the shards: same tensors, or refused
        index = checkpoint.shadowed_index
        try:
            other = _fingerprint_checkpoint(path, checkpoint.shadowed, index, workers=workers,
                                            progress=progress, cache=cache)
        except CorruptFileError as exc:
            raise AmbiguousCheckpointError(
                f"{path} holds {SAFE_WEIGHTS_NAME} and {index.name} whose shards do not load ({exc})",
                hint=f"keep one weight set: remove {index.name} and its shards, or {SAFE_WEIGHTS_NAME}") from exc
        if other.digest != fp.digest:
            raise AmbiguousCheckpointError(
                f"{path} holds two different weight sets: {SAFE_WEIGHTS_NAME} (fingerprint {fp.short}, what "
                f"transformers loads) and the shards of {index.name} (fingerprint {other.short}, what vLLM "
                "and other loaders read)",
                hint=f"keep one weight set: remove {index.name} and its shards, or {SAFE_WEIGHTS_NAME}")
    return fp


def _fingerprint_checkpoint(path: Path, files: list[Path], index: Path | None, *, workers: int | None,
                            progress: bool | None, cache: _Cache | None, complete: bool = True) -> BaseFingerprint:
    entries = _hash_files(files, path.name, workers=workers, progress=progress, cache=cache)
    seen: dict[str, str] = {}
    for name, *_ in entries:
        if name in seen:
            raise CorruptFileError(f"{path}: tensor {name!r} is stored twice")
        seen[name] = name
    directory = path if path.is_dir() else path.parent
    stored_tie = _stored_tie(directory, files, entries)
    if stored_tie is not None:  # tied, but saved twice: count it once, as in memory
        entries = [e for e in entries if e[0] != stored_tie[0]]
    shapes = {n: s for n, _, s, _ in entries}
    tied = _cached_tied(directory, shapes, cache)
    if stored_tie is not None:
        tied[stored_tie[0]] = stored_tie[1]
    if index is not None:
        _check_index(index, set(shapes) | set(tied))
    config = _read_config(directory)
    _check_head(path, shapes, tied, config)
    if complete:
        _check_complete(path, directory, shapes, tied, cache)
    return _combine(entries, tied, str(path.resolve()), config)


_IN_LAYER = re.compile(r"\.\d+\.")  # a tensor inside a numbered block (layers.3., h.3.)


def _check_head(path: Path, shapes: Mapping[str, tuple[int, ...]], tied: Mapping[str, str],
                config: dict[str, Any] | None) -> None:
    """Refuse a causal LM checkpoint whose config unties the output head while no head is
    stored: ``from_pretrained`` would initialise it at random, so what loads is not the
    weights this fingerprint covers (the tied copy of the same file would hash the same)."""
    if not config or config.get("tie_word_embeddings") is not False or tied:
        return
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or any(_is_output_head(n) for n in shapes):
        return
    outside_layers = [n for n, s in shapes.items() if len(s) == 2 and s[0] == vocab and not _IN_LAYER.search(n)]
    if len(outside_layers) > 1:
        return  # a head under another name: an input embedding and an output matrix, outside the layers
    raise WeightsNotFoundError(
        f"{path}: config.json sets tie_word_embeddings to false but the checkpoint stores no output head "
        "(lm_head.weight); from_pretrained would initialise the head at random, so no adapter can be "
        "exact on it",
        hint="save the model with its head (model.save_pretrained), or set tie_word_embeddings to true if "
             "the head is the input embedding")


_LAYER_KEY = re.compile(r"^(?P<pre>(?:.*\.)?(?:layers|h|blocks|layer)\.)(?P<i>\d+)\.(?P<suf>.+)$")


def _holes(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether a numbered block's tensor is stored in most blocks but not all (a tensor lost
    from one layer looks like that; so do models whose layers differ by design, which the
    architecture itself then decides, in :func:`_check_complete`)."""
    blocks: dict[str, set[int]] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for name in shapes:
        m = _LAYER_KEY.match(name)
        if m is not None:
            i = int(m["i"])
            blocks.setdefault(m["pre"], set()).add(i)
            where.setdefault((m["pre"], m["suf"]), set()).add(i)
    return any(len(idx) < len(blocks[pre]) <= 2 * len(idx) for (pre, _), idx in where.items())


def _expected(directory: Path) -> dict[str, Any] | None:
    """The tensor names the architecture config.json names has (built on the meta device:
    no memory, no weights), with the patterns it lets a checkpoint leave out and its tied
    names; None where transformers cannot say (then nothing is refused on its account)."""
    try:
        import torch
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(str(directory))
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        if cls is None:
            return None
        with torch.device("meta"):
            model = cls(cfg)
        tied = getattr(model, "all_tied_weights_keys", None) or getattr(cls, "_tied_weights_keys", None) or {}
        return {"names": list(model.state_dict().keys()), "arch": archs[0],
                "optional": [str(p) for p in (getattr(cls, "_keys_to_ignore_on_load_missing", None) or [])],
                "tied": sorted(str(k) for k in (tied if isinstance(tied, (dict, list, set, tuple)) else []))}
    except Exception:  # noqa: BLE001 - an architecture transformers cannot build here decides nothing
        return None


def _check_complete(path: Path, directory: Path, shapes: Mapping[str, tuple[int, ...]], tied: Mapping[str, str],
                    cache: _Cache | None) -> None:
    """Refuse a checkpoint that lacks a tensor its architecture has: ``from_pretrained``
    would initialise it at random, so what loads is not the weights this fingerprint covers.
    Asked of transformers only where a numbered block's tensor is missing from some blocks
    (:func:`_holes`; cached per config.json), and only for blocks' tensors stored in other
    blocks (see ``lost``)."""
    if not _holes(shapes):
        return
    cfg = directory / "config.json"
    if not cfg.is_file():
        return
    key = "expected|" + _Cache.key(cfg)
    want = cache.get(key) if cache else None
    if want is None:
        want = _expected(directory) or {}
        if cache:
            cache.put(key, want)
    names = want.get("names") or []
    stored = {(m["pre"], m["suf"]) for n in shapes if (m := _LAYER_KEY.match(n)) is not None}
    optional = [re.compile(p) for p in want.get("optional", [])]

    def lost(n: str) -> bool:
        """A block's tensor the architecture has there, stored for other blocks but not this
        one. A name stored for no block (a checkpoint in another naming, or fused on load, as
        transformers fuses MoE experts) is not judged."""
        m = _LAYER_KEY.match(n)
        return (m is not None and (m["pre"], m["suf"]) in stored and n not in shapes and n not in tied
                and n not in want.get("tied", []) and not any(p.search(n) for p in optional))

    missing = [n for n in names if lost(n)]
    if missing:
        raise WeightsNotFoundError(
            f"{path}: the checkpoint lacks {len(missing)} tensor(s) of its architecture ({want.get('arch')}), e.g. "
            f"{missing[0]!r}; from_pretrained would initialise {'it' if len(missing) == 1 else 'them'} at random, "
            "so no adapter can be exact on it",
            hint="re-download the model, or save it again with model.save_pretrained")


def _check_index(index_path: Path, stored: set[str]) -> None:
    """A sharded checkpoint's index must not name a tensor that no shard holds (a shard
    saved over by another model, or cut short): such a model does not load."""
    weight_map = read_index(index_path)
    missing = sorted(n for n in weight_map if n not in stored)
    if missing:
        raise CorruptFileError(
            f"{index_path.name} names {len(missing)} tensor(s) no shard holds, e.g. {missing[0]!r} "
            f"in {weight_map[missing[0]]!r}",
            hint="re-download the model; its shards and index do not belong together")


def _stored_tie(directory: Path, files: list[Path], entries: list[tuple[str, str, tuple[int, ...], bytes]]
                ) -> tuple[str, str] | None:
    """(output head, input embedding) when config.json ties word embeddings yet the files
    store both, with identical bytes; None otherwise."""
    heads = [e for e in entries if _is_output_head(e[0])]
    inputs = [e for e in entries if e[0].endswith(_EMBED_SUFFIXES)]
    if len(heads) != 1 or len(inputs) != 1 or heads[0][1:3] != inputs[0][1:3]:
        return None
    cfg = _read_config(directory)
    if not cfg or not cfg.get("tie_word_embeddings", False):
        return None
    head, emb = heads[0][0], inputs[0][0]
    found: dict[str, tuple[Path, TensorInfo]] = {}
    for f in files:
        header = read_header(f)
        for n in (head, emb):
            if n in header.tensors:
                found[n] = (f, header.tensors[n])
    if len(found) != 2:
        return None
    with contextlib.ExitStack() as stack:
        views = []
        for n in (head, emb):
            f, info = found[n]
            fh = stack.enter_context(open(f, "rb"))
            mm = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            views.append(stack.enter_context(memoryview(mm))[info.start:info.end])
        try:
            same = views[0] == views[1]  # compared in place, no copy of the embedding
        finally:
            for v in views:
                v.release()
    return (head, emb) if same else None


def _read_config(directory: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _cached_tied(directory: Path, shapes: Mapping[str, tuple[int, ...]], cache: _Cache | None) -> dict[str, str]:
    """Tied names from config.json; cached, since asking transformers imports torch."""
    cfg = directory / "config.json"
    if cache is None or not cfg.is_file():
        return _tied_from_config(directory, shapes)
    key = "tied|" + _Cache.key(cfg)
    hit = cache.get(key)
    if hit is None:
        hit = _tied_from_config(directory, shapes)
        cache.put(key, hit)
    return {k: v for k, v in hit.items() if k not in shapes and v in shapes}


# --------------------------------------------------------------------------- in memory


def _fingerprint_tensors(items: list[tuple[str, Any]], *, workers: int | None,
                         progress: bool | None, source: str | None,
                         config: dict[str, Any] | None = None) -> BaseFingerprint:
    import torch

    jobs = []
    keep = []
    tied: dict[str, str] = {}
    tensors = [(name, t) for name, t in items if isinstance(t, torch.Tensor)]
    for name, t in tensors:
        if t.device.type == "meta":
            raise WeightsNotFoundError(f"tensor {name!r} is on the meta device; a fingerprint needs real weights")
    # tensors sharing storage (tied weights) count once, under the name save_pretrained keeps
    # on disk: not an output head, whatever order the state dict lists them in
    groups: dict[tuple, list[str]] = {}
    for name, t in tensors:
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            groups.setdefault(key, []).append(name)
    for names in groups.values():
        if len(names) > 1:
            canonical = min(names, key=lambda n: (_is_output_head(n), names.index(n)))
            tied.update({n: canonical for n in names if n != canonical})
    for name, t in tensors:
        if name in tied:
            continue
        dtype = _TORCH_TO_ST.get(str(t.dtype))
        if dtype is None:
            raise CorruptFileError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        keep.append(raw)
        jobs.append((name, dtype, tuple(t.shape), memoryview(raw.numpy()).cast("B")))  # type: ignore[arg-type]
    hashed = _hash_buffers(jobs, workers, progress, "fingerprint")
    return _combine(hashed, tied, source, config)


def _is_output_head(name: str) -> bool:
    return name.endswith(("lm_head.weight", "embed_out.weight"))


def _jsonable(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    try:
        return json.loads(json.dumps(d, default=str))
    except (TypeError, ValueError):
        return None


def fingerprint(model: Any, *, workers: int | None = None, progress: bool | None = None,
                use_cache: bool = True, as_stored: bool = False) -> BaseFingerprint:
    """Fingerprint a base model: a directory or ``.safetensors`` file, an ``nn.Module``, or a
    state dict. Files are streamed through mmap and hashed on all cores; results for
    unchanged files come from a cache under ``ADAPTERHUB_HOME``. A directory whose tensors are
    not what ``from_pretrained`` loads is refused: one that also holds an
    ``adapter_config.json`` (the adapter is applied while loading), or whose checkpoint lacks a
    tensor its architecture has (initialised at random). ``as_stored``: fingerprint the stored
    tensors anyway, for a caller that checks what loaded, as ``Deployment`` does."""
    if isinstance(model, BaseFingerprint):
        return model
    if isinstance(model, (str, os.PathLike)):
        if not as_stored:
            _refuse_adapter_files(Path(model))
        cache = _default_cache() if use_cache else None
        try:
            return _fingerprint_files(Path(model), workers=workers, progress=progress, cache=cache,
                                      complete=not as_stored)
        finally:
            if cache:
                cache.close()
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        raise TypeError("pass the base model, not a PeftModel (use peft_model.get_base_model() "
                        "only after unloading adapters)")
    if hasattr(model, "state_dict") and callable(model.state_dict):
        config: Any = getattr(model, "config", None)
        config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
        if config_dict is not None and not config_dict.get("architectures"):
            config_dict["architectures"] = [type(model).__name__]
        return _fingerprint_tensors(list(model.state_dict(keep_vars=False).items()), workers=workers,
                                    progress=progress, source=type(model).__name__,
                                    config=_jsonable(config_dict))
    if isinstance(model, Mapping):
        return _fingerprint_tensors(list(model.items()), workers=workers, progress=progress,
                                    source="state_dict")
    raise TypeError(f"cannot fingerprint a {type(model).__name__}: pass a directory, a .safetensors "
                    "file, an nn.Module or a state dict")

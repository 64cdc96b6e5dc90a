"""Packing: turn a directory that PEFT saved (or an in-memory PeftModel) into an
:class:`AdapterPackage` — its files with their digests, its method, and the base tensors
it touches. Only safetensors weights are accepted; nothing is ever unpickled.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .adapter_files import (
    CONFIG,
    WEIGHTS,
    DirReader,
    NonFinite,
    NonFiniteError,
    copy_and_hash,
    nonfinite_message,
    nonfinite_tensors,
    open_regular,
    refuse,
    sha256_file,  # noqa: F401 - re-exported: package.sha256_file was public
    skipped,
    staged_copy_removed,
)
from .atomic_dir import atomic_dir
from .errors import AdapterFormatError, CorruptFileError, IncompatibleAdapterError
from .jsontext import loads_bounded
from .manifest import BaseRef, FileEntry, Manifest, check_file_path
from .methods.base import AdapterMethod, Requirements
from .plugins import detect_method
from .safetensors_io import (
    PICKLE_SUFFIXES,
    looks_like_pickle,
    looks_like_pickle_head,
    read_header,
    refuse_pickle,
)

EXTRA_SUFFIXES = (".json", ".md", ".txt", ".model", ".jinja")
PULLED_MANIFEST = "adapterhub_manifest.json"  # written by pull beside the files, never one of them
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def base_fraction(summary: dict[str, Any], base_params: Any) -> float | None:
    """The summary's ``trainable_params`` over the base's parameter count, to four
    significant digits; None when either is unknown. Computed when shown, not stored in the
    manifest, so that manifests (and their digests) do not change with it."""
    trainable = summary.get("trainable_params")
    if not isinstance(trainable, int) or isinstance(trainable, bool) or not isinstance(base_params, int) \
            or base_params <= 0:
        return None
    return float(f"{trainable / base_params:.4g}")


@dataclass
class PackedFile:
    path: str  # name inside the package
    source: Path  # where the bytes are now
    sha256: str
    size: int
    staged: Any = None  # a blob store's staged copy (``source`` is its path) until stored


@dataclass
class AdapterPackage:
    """An adapter ready to publish: files, config, method and requirements on the base."""

    root: Path
    config: dict[str, Any]
    files: list[PackedFile]
    tensors: dict[str, tuple[int, ...]]
    method: AdapterMethod
    variant: str
    requirements: Requirements
    summary: dict[str, Any]
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    _discard: Callable[[Any], None] | None = field(default=None, repr=False)
    _copies: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    _nonfinite: list[NonFinite] | None = field(default=None, repr=False)

    @property
    def base_name(self) -> str | None:
        name = self.config.get("base_model_name_or_path")
        return str(name) if name else None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def check_base(self, base: Any) -> list[str]:
        """Reasons this adapter does not fit ``base`` (a BaseFingerprint); empty if it fits.
        The method plugin decides: by shapes, or by PEFT injection on the meta device."""
        return self.method.validate(self.config, self.tensors, base)

    def require_base(self, base: Any) -> None:
        """Raise IncompatibleAdapterError unless the adapter fits ``base``; on success, pin the
        requirements to what the method can tell with this base in hand."""
        reasons = self.check_base(base)
        if reasons:
            raise IncompatibleAdapterError(
                f"adapter does not fit base {base.short}: {reasons[0]}"
                + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""),
                reasons=reasons,
                hint="check that base=PATH is the model this adapter was trained on",
            )
        self.requirements = self.method.requirements(self.config, self.tensors, base)
        how = getattr(self.method, "validation", None)  # how it was checked, when less than shapes
        validated = how(self.config, self.tensors, base) if callable(how) else None
        if validated:
            self.summary = {**self.summary, "validated": validated}

    def manifest(self, *, name: str, version: str, base: BaseRef, tasks: list[str] | tuple[str, ...] = (),
                 description: str | None = None, license: str | None = None,
                 metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> Manifest:
        method = {"type": self.method.name, "variant": self.variant,
                  "peft_type": self.config.get("peft_type"), "config": self.config,
                  "summary": self.summary}
        return Manifest(name=name, version=version, method=method, base=base,
                        files=tuple(FileEntry(f.path, f.sha256, f.size) for f in self.files),
                        requirements=self.requirements, tasks=tuple(tasks), description=description,
                        license=license, metrics=dict(metrics or {}), provenance=dict(provenance or {}))

    def nonfinite(self) -> list[NonFinite]:
        """The tensors of the adapter's weights holding NaN or Inf values (empty if none),
        read from the package's own copy of the file, one tensor at a time."""
        if self._nonfinite is None:
            weights = next(f for f in self.files if f.path == WEIGHTS)
            with _reading_copies(self.files):
                self._nonfinite = nonfinite_tensors(weights.source, display=self.root / WEIGHTS)
        return self._nonfinite

    def require_finite(self) -> None:
        """Raise NonFiniteError, naming the tensor, if the weights hold NaN or Inf."""
        found = self.nonfinite()
        if found:
            raise NonFiniteError(
                nonfinite_message(WEIGHTS, found) + "; an adapter with such weights makes the model's outputs NaN",
                hint="check the training run (a diverged loss, fp16 overflow) and save the adapter again; to "
                     "publish it anyway for research, pass allow_nonfinite=True")

    def close(self) -> None:
        _discard_staged(self.files, self._discard)
        for attr in ("_copies", "_tmp"):
            tmp = getattr(self, attr)
            if tmp is not None:
                tmp.cleanup()
                setattr(self, attr, None)

    def __enter__(self) -> AdapterPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_adapter_dir(root: Path, subfolder: str | None) -> DirReader:
    """The adapter's directory, opened: ``root`` itself (the user's path, which may be a
    link) or a real subfolder of it (a subfolder that is a link is refused)."""
    if not root.exists():
        raise AdapterFormatError(f"{root}: no such directory")
    if not root.is_dir():
        if looks_like_pickle(root):
            refuse_pickle(root, "adapter file")
        raise AdapterFormatError(f"{root} is a file; pass the directory PEFT saved the adapter to")
    top = DirReader(root)
    try:
        if subfolder is not None:
            if not subfolder or "/" in subfolder or "\\" in subfolder or subfolder.startswith("."):
                raise AdapterFormatError(f"subfolder {subfolder!r} is not a plain folder name")
            if top.entry(subfolder) is None:
                raise AdapterFormatError(f"{root / subfolder}: no such folder")
            sub = top.subdir(subfolder)
            if sub.entry(CONFIG) is None:
                sub.close()
                raise AdapterFormatError(f"{root / subfolder}: no {CONFIG}")
            top.close()
            return sub
        if top.entry(CONFIG) is not None:
            return top
        subs, linked = [], []
        for e in top.entries():
            if e.name.startswith("."):
                continue
            if e.directory:
                with top.subdir(e.name) as d:
                    if d.entry(CONFIG) is not None:
                        subs.append(e.name)
            elif not e.regular and (root / e.name / CONFIG).is_file():
                linked.append(e)
        if len(subs) == 1:
            sub = top.subdir(subs[0])
            top.close()
            return sub
        if subs:
            raise AdapterFormatError(f"{root} holds several adapters ({', '.join(subs)}); choose one",
                                     hint="pass subfolder=NAME (PEFT saves non-default adapters in subfolders)")
        if linked:
            refuse(root / linked[0].name, linked[0].kind, "adapter subfolder")
        raise AdapterFormatError(f"{root}: no {CONFIG}; not a PEFT adapter directory",
                                 hint="point at the directory that PeftModel.save_pretrained wrote")
    except BaseException:
        top.close()
        raise


def pack(source: Any, *, subfolder: str | None = None, adapter_name: str | None = None,
         stage: Callable[[Any], Any] | None = None, discard: Callable[[Any], None] | None = None
         ) -> AdapterPackage:
    """Pack a PEFT adapter directory, or a PeftModel (``adapter_name`` selects one of its adapters).

    Only regular files inside the directory are read, never through a link (see
    :mod:`adapterhub_sdk.adapter_files`): an adapter file that is a link, a FIFO, a device
    is refused by name; such an entry that is not part of the adapter is skipped with a
    :class:`~adapterhub_sdk.adapter_files.SkippedEntryWarning`.

    With ``stage`` (a blob store's :meth:`~adapterhub_sdk.blobs.BlobStore.stage`), every file
    is first copied aside and hashed there, and the package is read from those copies: one
    pass over the bytes, and what gets stored is exactly what was checked. ``discard``
    throws a staged copy away; :meth:`AdapterPackage.close` calls it for copies not stored.
    Without ``stage`` the files are copied into a private temp folder the package owns."""
    if hasattr(source, "peft_config") and hasattr(source, "save_pretrained"):
        return _pack_model(source, adapter_name, stage, discard)
    with _open_adapter_dir(Path(source), subfolder) as d:
        return _pack_dir(d, stage, discard)


def pack_files(files: Mapping[str, str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None,
               stage: Callable[[Any], Any] | None = None, discard: Callable[[Any], None] | None = None,
               select: bool = False) -> AdapterPackage:
    """Pack the files named explicitly (package name -> path of a regular file), e.g. the
    blobs a huggingface_hub cache snapshot links to. Each path is opened without following
    a link; ``root`` is what messages call the package's folder. A pickle among them is
    refused, as publish refuses one in a directory (a manifest may list any file: a remote's
    must not bring one in). With ``select``, the files are chosen as in a directory: only the
    adapter's files kept."""
    shown = Path(root) if root is not None else Path(".")
    for name, path in files.items():
        if name.lower().endswith(PICKLE_SUFFIXES):
            refuse_pickle(shown / name, "adapter file")
        if name.endswith(".safetensors"):
            with open_regular(path, display=shown / name) as f:
                if _is_pickle_head(f):
                    refuse_pickle(shown / name, "adapter file")
    if select:
        files = {n: p for n, p in files.items() if _wanted(n)}
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for name, path in sorted(files.items()):
            check_file_path(name)
            opened.append((name, open_regular(path, display=shown / name)))
        return _pack_opened(shown, opened, stage, discard)
    finally:
        for _, f in opened:
            f.close()


def _pack_model(model: Any, adapter_name: str | None, stage: Callable[[Any], Any] | None = None,
                discard: Callable[[Any], None] | None = None) -> AdapterPackage:
    names = list(model.peft_config)
    name = adapter_name or getattr(model, "active_adapter", None) or names[0]
    if isinstance(name, list):
        name = name[0]
    if name not in model.peft_config:
        raise AdapterFormatError(f"the model has no adapter {name!r} (it has {', '.join(names)})")
    tmp = tempfile.TemporaryDirectory(prefix="adapterhub-pack-")
    try:
        model.save_pretrained(tmp.name, selected_adapters=[name], safe_serialization=True)
        root = Path(tmp.name)
        with DirReader(root) as top:
            if top.entry(CONFIG) is not None:
                pkg = _pack_dir(top, stage, discard)
            else:
                with top.subdir(name) as d:
                    pkg = _pack_dir(d, stage, discard)
    except BaseException:
        tmp.cleanup()
        raise
    pkg._tmp = tmp
    return pkg


def _wanted(name: str) -> bool:
    """Whether a file of an adapter directory is part of the package: not the manifest a pull
    wrote there (every pull writes its own over it, so a version listing it never loads)."""
    if name in (PULLED_MANIFEST, "adapterhub_export.json"):  # the latter: an export's record (export_record)
        return False
    return name in (CONFIG, WEIGHTS) or Path(name).suffix.lower() in EXTRA_SUFFIXES


def _is_pickle_head(f: BinaryIO) -> bool:
    head = os.pread(f.fileno(), 9, 0)
    return looks_like_pickle_head(head, os.fstat(f.fileno()).st_size)


def _pack_dir(d: DirReader, stage: Callable[[Any], Any] | None = None,
              discard: Callable[[Any], None] | None = None) -> AdapterPackage:
    root = d.display
    entries = [e for e in d.entries() if not e.name.startswith(".")]
    for e in entries:
        if not e.directory and e.name.lower().endswith(PICKLE_SUFFIXES):
            refuse_pickle(root / e.name, "adapter file")
        if e.regular and e.name.endswith(".safetensors"):
            with d.open(e.name) as f:
                if _is_pickle_head(f):
                    refuse_pickle(root / e.name, "adapter file")
    by_entry = {e.name: e for e in entries}
    for required in (CONFIG, WEIGHTS):
        got = by_entry.get(required)
        if got is not None and not got.regular:
            refuse(root / required, got.kind)
    if WEIGHTS not in by_entry:
        raise AdapterFormatError(f"{root}: no {WEIGHTS}",
                                 hint="save the adapter with save_pretrained(..., safe_serialization=True)")
    chosen = []
    for e in entries:
        wanted = _wanted(e.name)
        if e.regular and wanted:
            chosen.append(e.name)
        elif wanted and not e.directory:
            refuse(root / e.name, e.kind)
        elif not e.regular and not e.directory:
            skipped(root / e.name, e.kind)
    for name in chosen:
        check_file_path(name)
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for name in chosen:
            opened.append((name, d.open(name)))
        return _pack_opened(root, opened, stage, discard)
    finally:
        for _, f in opened:
            f.close()


def _pack_opened(root: Path, opened: list[tuple[str, BinaryIO]], stage: Callable[[Any], Any] | None,
                 discard: Callable[[Any], None] | None) -> AdapterPackage:
    """The package of files already opened (regular files, checked): each is copied aside
    (staged in the blob store, or into a private temp folder) and everything else is read
    from those copies."""
    handles = dict(opened)
    if CONFIG not in handles:
        raise AdapterFormatError(f"{root}: no {CONFIG}; not a PEFT adapter directory",
                                 hint="point at the directory that PeftModel.save_pretrained wrote")
    if WEIGHTS not in handles:
        raise AdapterFormatError(f"{root}: no {WEIGHTS}",
                                 hint="save the adapter with save_pretrained(..., safe_serialization=True)")
    if os.fstat(handles[CONFIG].fileno()).st_size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
    files: list[PackedFile] = []
    copies = None if stage is not None else tempfile.TemporaryDirectory(prefix="adapterhub-pack-")
    try:
        for name, f in opened:
            if stage is None:
                assert copies is not None
                dest = Path(copies.name) / name
                digest, size = copy_and_hash(f, dest)
                files.append(PackedFile(name, dest, digest, size))
            else:
                f.seek(0)
                staged = stage(f)
                files.append(PackedFile(name, staged.path, staged.sha256, staged.size, staged))
        by_name = {f.path: f.source for f in files}
        cfg_path = by_name[CONFIG]
        if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
            raise AdapterFormatError(f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            config = loads_bounded(cfg_path.read_text(encoding="utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON, or nested too deep
            raise AdapterFormatError(f"{root / CONFIG}: not valid JSON ({exc})") from exc
        if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
            raise AdapterFormatError(f"{root / CONFIG}: no 'peft_type'; not a PEFT adapter config")
        header = read_header(by_name[WEIGHTS], display=root / WEIGHTS)
        tensors = {n: t.shape for n, t in header.tensors.items()}
        if not tensors:
            raise AdapterFormatError(f"{root / WEIGHTS} holds no tensors")
        method, variant = detect_method(config)
        requirements = method.requirements(config, tensors)
        summary = method.describe(config, tensors)
    except BaseException as exc:
        removed = _removed_copy(files, exc)
        _discard_staged(files, discard)
        if copies is not None:
            copies.cleanup()
        if removed is not None:
            raise removed from exc
        raise
    return AdapterPackage(root, config, files, tensors, method, variant, requirements, summary, _discard=discard,
                          _copies=copies)


def _removed_copy(files: list[PackedFile], exc: BaseException) -> Exception | None:
    """The error to give instead of ``exc`` (a file that could not be read) when one of the
    package's staged copies is gone: a gc with no grace took it for a leftover temp file. Not
    the user's file unreadable, nor the temp file's private path."""
    if isinstance(exc, (OSError, CorruptFileError)):
        for f in files:
            if f.staged is not None and not Path(f.staged.path).exists():
                return staged_copy_removed(f.sha256)
    return None


@contextmanager
def _reading_copies(files: list[PackedFile]) -> Iterator[None]:
    """Reads of the package's staged copies: see :func:`_removed_copy`."""
    try:
        yield
    except BaseException as exc:
        removed = _removed_copy(files, exc)
        if removed is not None:
            raise removed from exc
        raise


def _discard_staged(files: list[PackedFile], discard: Callable[[Any], None] | None) -> None:
    for f in files:
        staged, f.staged = f.staged, None
        if staged is not None and discard is not None:
            try:
                discard(staged)
            except OSError:
                pass  # a leftover temp file; gc removes it


def write_package_dir(dest: Path, files: list[tuple[str, Any]], *, overwrite: bool = False) -> Path:
    """Write files (name, writer(fileobj)) to ``dest`` atomically (:mod:`.atomic_dir`):
    ``dest`` is the old tree or the new one, complete, whatever fails or dies when."""
    with atomic_dir(dest, overwrite=overwrite, purpose="to write the adapter to") as tmp:
        for name, writer in files:
            check_file_path(name)
            with open(tmp / name, "wb") as f:
                writer(f)
    return Path(dest)

"""Put an adapter directory on a model: the method plugin's ``apply`` when it has one
(methods PEFT does not know), PEFT otherwise.

A directory written by ``pull`` carries the version's manifest: its files are checked
against their digests and the model's weights against the base fingerprint the adapter is
pinned to before anything is loaded, exactly as ``Deployment.attach`` does. A directory
that carries no base fingerprint (a plain PEFT directory, one whose manifest was removed, or
a version published without a base) has no pin: ``strict=True`` refuses it, as a strict
``Deployment`` refuses it; otherwise it loads as PEFT loads it, with an
:class:`UnpinnedAdapterWarning` saying that nothing pins it to the model's weights."""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .deploy import StructuralMatchWarning
from .errors import AdapterFormatError, IncompatibleAdapterError, IntegrityError
from .jsontext import loads_bounded
from .methods.base import check_requirements
from .plugins import detect_method

MANIFEST_FILE = "adapterhub_manifest.json"

#: why a directory has no pin, in the words ``Deployment``'s directory path (deploy_dir) uses
NO_MANIFEST = f"it carries no base fingerprint (no {MANIFEST_FILE})"
NO_BASE = "it carries no base fingerprint (published without a base)"


class UnpinnedAdapterWarning(UserWarning):
    """An adapter carrying no base fingerprint was loaded (without ``strict``): nothing ties it
    to the model's weights, so no verdict could be made; PEFT loaded it as it loads any."""


def _unpinned(where: str, why: str, strict: bool, stacklevel: int) -> None:
    """No pin to check: ``strict`` refuses (one line, what to do), otherwise a warning
    (``stacklevel`` as the caller would give it to ``warnings.warn``)."""
    if strict:
        raise IncompatibleAdapterError(
            f"{where}: {why}, so nothing pins it to these weights (strict)", reasons=[why],
            hint="publish it pinned to the base it was trained on (adapterhub publish DIR --name NS/NAME "
                 "--version VER --base PATH) and load the directory pull writes, or load it without strict=True "
                 "to load it as PEFT does")
    warnings.warn(f"{where}: {why}, so nothing pins it to these weights; loaded as PEFT loads it, unchecked "
                  "(publish it with a base to have it checked)", UnpinnedAdapterWarning, stacklevel=stacklevel + 1)


def _read(reader: Any, name: str) -> bytes:
    with reader.open(name) as fh:
        return fh.read()


def _sha256(reader: Any, name: str) -> str:
    h = hashlib.sha256()
    with reader.open(name) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _peft_wrappers() -> tuple[type, type]:
    """PEFT's two kinds of wrapper around a base module: tuner layers (``BaseTunerLayer``:
    LoRA, IA3, trainable tokens' ``TrainableTokensLayer``..., the base under ``base_layer``) and
    auxiliary training wrappers (``modules_to_save``'s ``ModulesToSaveWrapper``, trainable
    tokens' ``TrainableTokensWrapper``: the base is ``original_module``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        from peft.utils.other import AuxiliaryTrainingWrapper as aux
    except ImportError:  # PEFT before 0.15: modules_to_save was the only such wrapper
        from peft.utils.other import ModulesToSaveWrapper as aux  # type: ignore[assignment]
    return BaseTunerLayer, aux


def _base_keys(module: Any, src: str, dst: str, wrappers: tuple[type, type], out: dict[str, str]) -> None:
    """Map the state-dict keys under ``module`` (at ``src``) that hold the base's own tensors to
    the names the bare base gives them (under ``dst``); adapter tensors, and the copies a wrapper
    trains, get no entry."""
    tuner, aux = wrappers
    inner = None
    if isinstance(module, aux):
        inner = getattr(module, "original_module", None)
    elif isinstance(module, tuner):
        inner = getattr(module, "base_layer", None)
    if inner is not None:  # a wrapper: only the module it wraps is the base's
        for rel, sub in module.named_modules(remove_duplicate=False):
            if sub is inner and rel:
                _base_keys(inner, f"{src}{rel}.", dst, wrappers, out)
                return
    skip = set(getattr(module, "adapter_layer_names", ())) | set(getattr(module, "other_param_names", ())) \
        if isinstance(module, tuner) else set()  # a tuner layer without base_layer: its own tensors only
    for name in [*module._parameters, *module._buffers, "_extra_state"]:
        if name not in skip:
            out[src + name] = dst + name
    for name, child in module._modules.items():
        if child is not None and name not in skip:
            _base_keys(child, f"{src}{name}.", f"{dst}{name}.", wrappers, out)


def _base_state(model: Any) -> Any:
    """What to fingerprint: the model itself, or for a PeftModel the base weights under its
    wrappers, named as the bare base names them: every tuner layer's ``base_layer``, every
    ``modules_to_save`` / trainable-tokens wrapper's original module, unwrapped by the module's
    type (PEFT's own classes), whatever adapters are loaded; adapter tensors and trained copies
    left out."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return model
    base = model.get_base_model()
    keys: dict[str, str] = {}
    _base_keys(base, "", "", _peft_wrappers(), keys)
    return {keys[k]: v for k, v in base.state_dict().items() if k in keys}


def _verify_files(path: Path, copy_to: Path | None = None) -> Any:
    """The manifest of a directory written by ``pull`` (None without one), each file it lists
    checked against its sha256: hashed in place, or, with ``copy_to``, copied there and the
    copy hashed (what is checked is then what is loaded, whatever happens to ``path``'s files
    afterwards, through a hard link or otherwise). IntegrityError for a missing or changed file."""
    from .adapter_files import DirReader, copy_and_hash
    from .export_record import EXPORT_RECORD, again_hint, read_record
    from .manifest import Manifest

    with DirReader(path) as reader:
        if reader.entry(MANIFEST_FILE) is not None:
            name = MANIFEST_FILE
            raw = _read(reader, MANIFEST_FILE)
            manifest = Manifest.from_json(raw)
            files = manifest.files
            ref = f"{manifest.name}@{manifest.version}"
            again = f"pull it again: adapterhub pull {ref} --out {path} --force"
        elif reader.entry(EXPORT_RECORD) is not None:  # an export that rewrote the files for its server
            name = EXPORT_RECORD
            raw = _read(reader, EXPORT_RECORD)
            manifest, files, fmt = read_record(raw, path)
            ref = f"{manifest.name}@{manifest.version}"
            again = again_hint(manifest, fmt, path)
        else:
            return None
        for f in files:
            if reader.entry(f.path) is None:
                raise IntegrityError(f"{path}: {f.path} of {ref} is missing", hint=again)
            if copy_to is None:
                got = _sha256(reader, f.path)
            else:
                with reader.open(f.path) as src:
                    got, _ = copy_and_hash(src, copy_to / f.path)
            if got != f.sha256:
                what = "its export record lists" if name == EXPORT_RECORD else f"{ref} lists"
                raise IntegrityError(f"{path}: {f.path} does not match the sha256 {what} for it (changed "
                                     f"since it was {'exported' if name == EXPORT_RECORD else 'pulled'})", hint=again)
        if copy_to is not None:
            (copy_to / name).write_bytes(raw)
    return manifest


def check_as_recorded(manifest: Any, registry: Any, where: str | Path) -> None:
    """A pulled directory's manifest against the registry's record of that version: where
    ``registry`` (None: the default registry, when one exists; none is created) holds
    ``NAME@VERSION``, the manifest must be the one it holds, digest for digest. The manifest
    carries the pin: one edited after the pull (another base fingerprint, other files) would
    otherwise be taken at its word. IntegrityError naming both digests. A directory whose
    version this registry does not hold (pulled from another registry) is not checked here:
    a signing policy is what vouches for it."""
    from contextlib import nullcontext

    from .errors import AdapterHubError, VersionConflictError

    opened = _default_registry() if registry is None else None
    with opened if opened is not None else nullcontext():
        reg = registry if registry is not None else opened
        if reg is None:
            return
        try:
            held = reg._existing_digest(manifest.name, manifest.version)
        except VersionConflictError:  # another build of a version held here: not the one it holds
            ref = f"{manifest.name}@{manifest.version}"
            twin = reg.show(f"{manifest.name}@{manifest.version.split('+', 1)[0]}")  # that precedence, held
            other = f"{twin.name}@{twin.version}"
            raise IntegrityError(f"{where}: its {MANIFEST_FILE} names {ref}, but the registry holds that version as "
                                 f"another build ({other}); its pin cannot be trusted",
                                 hint=f"pull the version the registry holds: adapterhub pull {other} --out {where} "
                                      "--force") from None
        except AdapterHubError:  # no such name here: a directory from another registry
            return
        if held is not None and held != manifest.digest:
            ref = f"{manifest.name}@{manifest.version}"
            raise IntegrityError(
                f"{where}: its {MANIFEST_FILE} is not the manifest {ref} has in the registry ({manifest.digest[:19]}, "
                f"recorded {held[:19]}): changed since it was pulled, so its pin cannot be trusted",
                hint=f"pull it again: adapterhub pull {ref} --out {where} --force (if it comes from another "
                     "registry that holds its own " + ref + ", pass registry= that registry)")


def _check_fit(model: Any, manifest: Any, strict: bool, stacklevel: int = 3) -> str | None:
    from .fingerprint import fingerprint

    ref = f"{manifest.name}@{manifest.version}"
    if not manifest.base.fingerprint:  # published unpinned
        _unpinned(ref, NO_BASE, strict, stacklevel)
        return None
    fp = fingerprint(_base_state(model), progress=False)
    # the requirements first, even where the fingerprints agree: a version imported with a pin
    # its files do not bear out (claimed before the base was known here) is a misfit, told so
    reasons = check_requirements(manifest.requirements, fp)
    if reasons:
        raise IncompatibleAdapterError(f"{ref} does not fit this model: {reasons[0]}", reasons=reasons)
    if fp.digest == manifest.base.fingerprint:
        return "exact"
    if strict:
        raise IncompatibleAdapterError(f"{ref} was trained on other base weights (strict)",
                                       reasons=["base weights differ from the ones the adapter was trained on"],
                                       hint="load it without strict=True to accept a structural fit")
    warnings.warn(f"{ref}: the model's weights differ from the ones it was trained on "
                  f"(pinned to {manifest.base.fingerprint[:12]}, this model is {fp.digest[:12]}); it fits "
                  "structurally", StructuralMatchWarning, stacklevel=stacklevel)
    return "structural"


def check_pulled(model: Any, path: str | Path, *, strict: bool = False, registry: Any = None) -> str | None:
    """For a directory written by ``pull``: verify its files against the manifest, then the
    model's weights against the pinned base fingerprint. Returns the verdict (``exact``,
    ``structural``; None, with an UnpinnedAdapterWarning, when the directory has no manifest or
    the version is not pinned); raises IntegrityError for changed files or a manifest that is
    not the one ``registry`` (default: the default registry, when one exists) holds for it,
    IncompatibleAdapterError when it does not fit, or under ``strict`` when nothing pins it."""
    manifest = _verify_files(Path(path))
    if manifest is None:
        _unpinned(str(path), NO_MANIFEST, strict, stacklevel=2)
        return None
    check_as_recorded(manifest, registry, path)
    return _check_fit(model, manifest, strict, stacklevel=3)


def _check_directory_signed(path: Path, registry: Any, require_signed: Any) -> None:
    import os

    from .registry.signatures import POLICY_ENV

    if registry is not None:
        registry.check_signed_directory(path, require_signed)
        return
    from .home import default_registry_url, home_dir

    if not (require_signed or os.environ.get(POLICY_ENV) or os.environ.get("ADAPTERHUB_REGISTRY_URL")
            or (home_dir() / "registry.db").is_file()):
        return  # no policy can be in force: no registry to hold one, none asked for
    from .registry import Registry

    with Registry.open(default_registry_url(), blobs=os.environ.get("ADAPTERHUB_BLOBS") or home_dir() / "blobs") as reg:
        reg.check_signed_directory(path, require_signed)


def _how_to_get(text: str) -> str:
    spec = text if "/" in text and not text.startswith(("/", ".")) and "://" not in text else "NS/NAME@SPEC"
    return (f"get one with 'adapterhub pull {spec} --out DIR' (Python: Registry.pull({spec!r}, DIR)), "
            "then pass DIR")


def _load_spec(model: Any, path: str | Path, **kw: Any) -> Any:
    """``path`` is no directory: a registry spec (``NS/NAME@SPEC``) is pulled, verified,
    into a private temporary directory and loaded from there; anything else is refused in
    one line saying that a directory is expected and how to get one."""
    import os

    from .errors import InvalidNameError, InvalidVersionError, NotFoundError
    from .names import parse_ref

    text = os.fspath(path)
    ref = None
    if isinstance(path, str) and not os.path.lexists(path):
        try:
            ref = parse_ref(text)
        except (InvalidNameError, InvalidVersionError):
            ref = None
    if ref is None:
        raise AdapterFormatError(f"{text} is not a directory; ah.load_adapter takes an adapter directory (as "
                                 "pulled or as PEFT saved it) or a spec in this registry, NS/NAME@SPEC",
                                 hint=_how_to_get(text))
    registry = kw.pop("registry")
    opened = None
    if registry is None:
        opened = registry = _default_registry()
        if registry is None:
            raise AdapterFormatError(f"{text} is not a directory, and there is no registry here to resolve it "
                                     "in", hint=_how_to_get(text) + ", or pass registry=Registry.open(URL)")
    try:
        with tempfile.TemporaryDirectory(prefix="adapterhub-load-") as tmp:
            try:
                pulled = registry.pull(str(ref), Path(tmp) / "adapter", require_signed=kw["require_signed"])
            except NotFoundError as exc:
                raise NotFoundError(f"{text} is not a directory, and {exc.message}", hint=exc.hint) from exc
            return load_adapter(model, pulled, registry=registry, **kw)
    finally:
        if opened is not None:
            opened.close()


def _default_registry() -> Any:
    """The default registry (ADAPTERHUB_REGISTRY_URL, or the home's registry.db) when one
    exists, else None (none is created)."""
    import os

    from .home import default_registry_url, home_dir

    if not (os.environ.get("ADAPTERHUB_REGISTRY_URL") or (home_dir() / "registry.db").is_file()):
        return None
    from .registry import Registry

    return Registry.open(default_registry_url(), blobs=os.environ.get("ADAPTERHUB_BLOBS") or home_dir() / "blobs")


def _check_finite(source: Path, allow_nonfinite: bool, shown: Path, manifest: Any) -> None:
    """Refuse weights holding NaN or Inf as ``Deployment.attach`` does (NonFiniteError, the
    same words); with ``allow_nonfinite`` warn instead. Read only as a regular file inside
    the directory (a link there is refused, as everywhere)."""
    from .adapter_files import (
        WEIGHTS,
        DirReader,
        NonFiniteError,
        NonFiniteWarning,
        nonfinite_hint,
        nonfinite_message,
        nonfinite_tail,
        nonfinite_tensors,
    )

    with DirReader(source, display=shown) as reader:
        if reader.entry(WEIGHTS) is None:
            return  # PEFT says what is missing
        with reader.open(WEIGHTS):  # a regular file, not a link (NotRegularFileError otherwise)
            pass
    ref = f"{manifest.name}@{manifest.version}" if manifest is not None else str(shown)
    found = nonfinite_tensors(source / WEIGHTS, display=shown / WEIGHTS)
    if not found:
        return
    if not allow_nonfinite:
        raise NonFiniteError(f"{ref}: " + nonfinite_message(WEIGHTS, found) + nonfinite_tail, hint=nonfinite_hint)
    warnings.warn(f"{ref}: " + nonfinite_message(WEIGHTS, found) + "; loaded anyway (allow_nonfinite=True)",
                  NonFiniteWarning, stacklevel=3)


def _refuse_pickled_weights(source: Path, shown: Path) -> None:
    """PEFT falls back to ``torch.load`` of ``adapter_model.bin`` (or another pickle) when the
    directory has no ``adapter_model.safetensors``: refused here (UnsafeFormatError, with the
    conversion hint) before PEFT sees the directory; nothing is unpickled."""
    from .adapter_files import WEIGHTS
    from .safetensors_io import looks_like_pickle, refuse_pickle

    if (source / WEIGHTS).is_file():
        return  # what PEFT loads when it is there
    for f in sorted(source.iterdir()):
        if f.name.startswith("adapter_model.") and f.is_file() and looks_like_pickle(f):
            refuse_pickle(shown / f.name, what="adapter weights")


def load_adapter(model: Any, path: str | Path, *, adapter_name: str = "default", strict: bool = False,
                 registry: Any = None, require_signed: Any = None, allow_nonfinite: bool = False) -> Any:
    """Load the adapter at ``path`` (as pulled) onto ``model`` and return the model to use.

    ``path`` may instead be a spec in ``registry`` (default: the default registry, when one
    exists), ``NS/NAME@SPEC`` that is not a path here: it is pulled into a private temporary
    directory (verified, under the signing policy) and loaded from there as below. Anything
    else that is not a directory is refused in one line saying how to get one.

    A pulled directory is checked first (files against the manifest's digests, the model
    against the pinned base fingerprint): an adapter that does not fit is refused, one that
    fits only structurally warns (``strict=True`` refuses it). A directory that carries no base
    fingerprint (no manifest: a plain PEFT directory; or a version published without a base)
    is refused under ``strict=True`` (IncompatibleAdapterError); without it, it loads as PEFT
    loads it, with an UnpinnedAdapterWarning. Under a signing policy
    (``require_signed``, ADAPTERHUB_REQUIRE_SIGNED, or ``registry``'s policy; ``registry``
    defaults to the default registry when one exists) the directory needs a ``model.sig``
    (or ``model.NAME.sig``) by a key the policy names, over exactly the files present.
    Weights holding NaN or Inf are refused (NonFiniteError, as ``Deployment.attach``);
    ``allow_nonfinite=True`` loads them with a warning, to debug them."""
    p = Path(path)
    if not p.is_dir():
        return _load_spec(model, path, adapter_name=adapter_name, strict=strict, registry=registry,
                          require_signed=require_signed, allow_nonfinite=allow_nonfinite)
    _check_directory_signed(p, registry, require_signed)
    try:
        config = loads_bounded((p / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{p}: no readable adapter_config.json ({exc})") from exc
    with tempfile.TemporaryDirectory(prefix="adapterhub-load-") as private:
        manifest = _verify_files(p, Path(private))
        unpinned = None  # (where, why) when nothing pins it: strict refuses now, else a warning before PEFT
        if manifest is None:
            unpinned = (str(p), NO_MANIFEST)
        elif not manifest.base.fingerprint:
            unpinned = (f"{manifest.name}@{manifest.version}", NO_BASE)
        if unpinned is not None and strict:
            _unpinned(*unpinned, strict=True, stacklevel=2)
        if manifest is not None:  # as pulled: check and load the private copy just hashed, nothing else
            check_as_recorded(manifest, registry, p)
            if unpinned is None:
                _check_fit(model, manifest, strict)
            config = loads_bounded((Path(private) / "adapter_config.json").read_text(encoding="utf-8"))
            source = Path(private)
        else:
            source = p
        _refuse_pickled_weights(source, p)
        _check_finite(source, allow_nonfinite, p, manifest)
        if unpinned is not None:
            _unpinned(*unpinned, strict=False, stacklevel=2)
        return _load(model, source, config, adapter_name)


def _load(model: Any, source: Path, config: Any, adapter_name: str) -> Any:
    method, _ = detect_method(config)
    try:
        return method.apply(model, str(source), config, adapter_name)
    except NotImplementedError:
        pass
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(str(source), adapter_name=adapter_name)
        return model
    return PeftModel.from_pretrained(model, str(source), adapter_name=adapter_name)

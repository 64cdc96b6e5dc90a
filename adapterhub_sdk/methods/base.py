"""The method API a plugin implements, and the shape check every method shares.

A method turns an adapter's config and tensor shapes into *requirements*: the base
tensors it touches and the shape each must have (``None`` for a dimension it does not
constrain, ``[]`` for "must exist", ``{"one_of": [shape, ...]}`` where the adapter's files
admit a few exact shapes and only a base can say which). Checking requirements needs only
the base's shape table, never its weights. A few facts that are not one tensor have ``@`` names:
``@input_embeddings`` (the input embedding matrix), ``@num_layers``, ``@kv_width``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AdapterFormatError

if TYPE_CHECKING:
    from ..fingerprint import BaseFingerprint

Shape = tuple[int, ...]
#: base tensor name -> expected shape; ``None`` matches any size, ``[]`` only requires existence,
#: ``{"one_of": [[...], ...]}`` one of these shapes exactly (see :func:`one_of`)
Requirements = dict[str, Any]
ONE_OF = "one_of"

PEFT_PREFIX = "base_model.model."
MAX_REASONS = 8  # shape mismatches listed one by one; the rest are counted
PSEUDO_LABELS = {
    "@input_embeddings": "input embeddings",
    "@num_layers": "number of layers",
    "@kv_width": "key/value width",
}


class AdapterMethod:
    """Base class for method plugins. Subclasses set ``name`` and override the methods."""

    #: short name used in manifests, ``--method`` filters and ``adapterhub plugins``
    name: str = ""
    #: PEFT ``peft_type`` values this method handles (upper case), if any
    peft_types: tuple[str, ...] = ()
    #: the family's variants (for runtime limits and docs)
    variants: tuple[str, ...] = ()
    #: the per-module parameter names of a method that wraps the modules its config's
    #: ``target_modules`` selects (a regex alternation, e.g. ``"hada_w1_a|hada_w1_b"``); with
    #: it, :meth:`validate` also checks coverage: PEFT puts a freshly initialised layer on a
    #: selected module the adapter has no weights for, so such a base is refused
    target_parts: str | None = None

    def detect(self, config: Mapping[str, Any]) -> str | None:
        """Return the variant name (e.g. ``"dora"``) when this method owns ``config``, else None."""
        if str(config.get("peft_type", "")).upper() in self.peft_types:
            return self.name
        return None

    def requirements(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                     base: BaseFingerprint | None = None) -> Requirements:
        """Base tensors this adapter touches and their expected shapes. ``base``, when given,
        is the base it is being published against (shapes and ``config``, no weights).
        Raise AdapterFormatError for a tensor the method does not recognise."""
        raise NotImplementedError

    def validate(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                 base: BaseFingerprint) -> list[str]:
        """Reasons the adapter does not fit ``base`` (empty: it fits)."""
        reasons = check_requirements(self.requirements(config, tensors, base), base)
        if self.target_parts:
            reasons += check_targets(config, wrapped_modules(tensors, self.target_parts), base,
                                     parts="/".join(self.target_parts.split("|")[:3]))
        return reasons

    def validation(self, config: Mapping[str, Any], tensors: Mapping[str, Shape],
                   base: BaseFingerprint) -> str | None:
        """How an adapter that fits ``base`` was checked, when that is less than the shapes of
        every tensor it touches (recorded as the summary's ``validated``); None: shapes. By
        default: the base tensors whose requirement is existence only, if any."""
        loose = sorted(n for n, want in self.requirements(config, tensors, base).items() if not want)
        if loose:
            return f"{self.name}: shapes checked except for {few(loose)}, whose existence only is checked"
        return None

    def describe(self, config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> dict[str, Any]:
        """Facts for the manifest: trainable parameters, rank, targets ..."""
        return {"trainable_params": sum(numel(s) for s in tensors.values())}

    def apply(self, model: Any, adapter_dir: str, config: Mapping[str, Any], adapter_name: str) -> Any:
        """Put the adapter on ``model`` and return the model. Only methods PEFT cannot load
        implement this; the default means "load with PEFT"."""
        raise NotImplementedError


def numel(shape: Shape | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n



def few(names: list[str], n: int = 3) -> str:
    """``a, b, c (+2 more)``: the first ``n`` names and a count of the rest."""
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def strip_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def group_by_module(tensors: Mapping[str, Shape], parts: str) -> dict[str, dict[str, Shape]]:
    """Split PEFT keys ``base_model.model.<module>.<part>[.weight]`` by module, for the
    parts matching the regex alternation ``parts``; other keys raise AdapterFormatError."""
    rx = re.compile(rf"(?P<module>.+)\.(?P<part>{parts})(?:\.(?P<param>weight|bias))?")
    out: dict[str, dict[str, Shape]] = {}
    for key, shape in tensors.items():
        m = rx.fullmatch(strip_prefix(key))
        if m is None:
            raise AdapterFormatError(f"unexpected tensor {key!r} for this adapter type",
                                     hint="the adapter file does not match its adapter_config.json")
        part = m["part"] + (".bias" if m["param"] == "bias" else "")
        out.setdefault(m["module"], {})[part] = shape
    return out


def wrapped_modules(tensors: Mapping[str, Shape], parts: str) -> list[str]:
    """The modules that carry one of the method's own parameters ``parts`` (a regex
    alternation); other tensors (full copies, shared matrices) are left out."""
    rx = re.compile(rf"(?P<module>.+)\.(?:{parts})(?:\.(?:weight|bias))?")
    found = {m["module"] for key in tensors if (m := rx.fullmatch(strip_prefix(key))) is not None}
    return sorted(m for m in found if ".base_layer." not in f"{m}.")


def split_full_copies(tensors: Mapping[str, Shape], adapter_parts: str) -> tuple[dict[str, Shape], Requirements]:
    """Separate ``modules_to_save``-style full tensor copies (``<module>.weight``) from the
    method's own tensors; return (method tensors, requirements for the copies).
    A copy of a wrapped layer (PEFT's ``save_embedding_layers``) is saved as
    ``<module>.base_layer.weight``; it stands for the base's ``<module>.weight``."""
    own = re.compile(rf"\.(?:{adapter_parts})(?:\.(?:weight|bias))?$")
    rest: dict[str, Shape] = {}
    req: Requirements = {}
    for key, shape in tensors.items():
        rel = strip_prefix(key)
        if own.search(rel) is None and rel.endswith((".weight", ".bias")):
            req[rel.replace(".base_layer.", ".")] = list(shape)
        else:
            rest[key] = shape
    return rest, req


def one_of(shapes: Iterable[Sequence[int | None]]) -> Any:
    """The requirement "exactly one of these shapes" (a parameter that may be stored in either
    order, a kernel of either rank), in a canonical order so that its digest is stable; a
    single shape is recorded as itself. Each is compared dimension by dimension, never as a
    flattened kernel. Readers before it refuse it (no list of sizes matches a mapping)."""
    distinct = sorted({json.dumps(list(s)): list(s) for s in shapes}.values(),
                      key=lambda s: (len(s), [-1 if d is None else d for d in s]))
    return distinct[0] if len(distinct) == 1 else {ONE_OF: distinct}


def alternatives(want: Any) -> list[list[int | None]] | None:
    """The shapes of a :func:`one_of` requirement; None for a plain shape (or ``[]``)."""
    if isinstance(want, Mapping):
        shapes = want.get(ONE_OF)
        return [list(s) for s in shapes if isinstance(s, (list, tuple))] if isinstance(shapes, list) else []
    return None


def _shown(want: Any) -> str:
    alts = alternatives(want)
    if alts is not None:
        return " or ".join(_shown(a) for a in alts) if alts else "a shape it cannot name"
    return str([("*" if w is None else w) for w in want])


def pin_flattened(req: Requirements, base: BaseFingerprint | None) -> Requirements:
    """PEFT's LyCORIS, OFT, BOFT and AdaLoRA layers see a convolution's kernel flattened to
    ``(out, in/groups * k...)``; their tensors give a 2-D ``[out, in_flat]``. With ``base`` in
    hand, a requirement on a kernel of more dimensions whose trailing sizes multiply to
    ``in_flat`` is pinned to the kernel's own shape (the adapter fits it exactly as PEFT sees
    it); any other stays as it is, and so is refused with both shapes named."""
    if base is None:
        return req
    out: Requirements = {}
    for name, want in req.items():
        have = base.shape_of(name)
        if (have is not None and alternatives(want) is None and len(have) > 2 and len(want) == 2
                and want[1] is not None and want[0] in (None, have[0]) and numel(have[1:]) == want[1]):
            out[name] = [want[0], *have[1:]]
        else:
            out[name] = want
    return out


def refines(derived: Mapping[str, Any], pinned: Mapping[str, Any]) -> bool:
    """Whether ``pinned`` (requirements made with a base in hand) is ``derived`` (made from the
    adapter alone) or more precise: every derived entry is there with the same known sizes, or,
    for a 2-D ``[out, in_flat]``, as the kernel shape :func:`pin_flattened` put in its place,
    or, for a :func:`one_of`, as one of its shapes (or some of them). A ``[]`` where the
    adapter's files give a ``one_of`` is what an SDK before ``one_of`` recorded for them: the
    claim is kept, and checks existence only, as it did."""
    for name, want in derived.items():
        have = pinned.get(name)
        if have is None or not _refines_one(want, have):
            return False
    return True


def tightened(claimed: Mapping[str, Any], derived: Mapping[str, Any]) -> dict[str, Any]:
    """The requirements to check an imported version by: its manifest's (``claimed``), where
    an entry is ``[]`` (existence only) but the files give more (``derived``: a shape or a
    :func:`one_of`), the files' entry instead. :func:`refines` keeps such a claim importable (an
    SDK before ``one_of`` wrote it), but what resolve decides by must not be looser than what the
    files themselves say."""
    return {name: (derived[name] if want == [] and derived.get(name) not in (None, []) else want)
            for name, want in claimed.items()}


def _refines_one(want: Any, have: Any) -> bool:
    wants, haves = alternatives(want), alternatives(have)
    if haves is not None:
        return bool(haves) and all(_refines_one(want, h) for h in haves)
    if wants is not None:
        return not have or any(_same(w, have) for w in wants)
    if not want:
        return True
    if not have:
        return False
    if len(have) > 2 and len(want) == 2 and want[1] is not None and None not in have[1:]:
        flat: list[int | None] = [have[0], numel([d for d in have[1:] if d is not None])]
        if all(w is None or w == h for w, h in zip(want, flat)):
            return True
    return _same(want, have)


def _same(want: Sequence[int | None], have: Sequence[int | None]) -> bool:
    """``have`` has ``want``'s rank and its known sizes."""
    return len(want) == len(have) and all(w is None or w == h for w, h in zip(want, have))


def selects(spec: Any, module: str) -> bool:
    """Whether a PEFT module list (``feedforward_modules``, ...) names ``module``: a string is
    a regex matched against the whole name; a list entry matches the name or its last parts."""
    if isinstance(spec, str):
        try:
            return re.fullmatch(spec, module) is not None
        except re.error:
            return False
    if isinstance(spec, (list, tuple, set)):
        return any(isinstance(e, str) and (module == e or module.endswith(f".{e}")) for e in spec)
    return False


# ----------------------------------------------------------------- PEFT's target selection

#: config fields under which PEFT changes what it targets at injection time (weight tying moves
#: targets to the embedding, parameter targets and layer replication add modules): with any of
#: them set, which modules must carry the adapter cannot be told from names alone
_UNEVALUATED = ("target_parameters", "layer_replication", "ensure_weight_tying", "target_modules_to_tie")
#: the first numbered block in a module name (as in fingerprint's layer count)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
_NUMBERED = re.compile(r"\.\d+(?=\.)")
TargetMatcher = Callable[[str], bool | None]


def _names(value: Any) -> set[str] | None:
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return set(value)
    return None


def peft_target_matcher(config: Mapping[str, Any]) -> TargetMatcher | None:
    """PEFT's rule (``check_target_module_exists`` in ``peft.tuners.tuners_utils``) for whether a
    tuner puts this adapter on the module named ``key`` (a name in the model, as in the adapter's
    keys without ``base_model.model.``): ``exclude_modules`` and ``modules_to_save`` never;
    ``target_modules`` as a regex must match the whole name; as a list, a name is targeted when
    listed or when it ends with ``.<entry>``, and then ``layers_to_transform`` (with
    ``layers_pattern``) must admit its layer index.

    The predicate answers None where PEFT versions disagree (the layer index of a name with
    several numbered parts). The function returns None when the config uses a form that
    cannot be evaluated exactly from names: ``all-linear`` (it depends on module classes),
    weight tying, ``target_parameters``, layer replication, a missing or malformed field."""
    if any(config.get(k) for k in _UNEVALUATED):
        return None
    try:
        targets = config.get("target_modules")
        regex: re.Pattern[str] | None = None
        names: set[str] = set()
        if isinstance(targets, str):
            if targets.lower() == "all-linear":
                return None
            regex = re.compile(targets)
        elif (listed := _names(targets)) is not None:
            names = listed
        else:
            return None

        exclude = config.get("exclude_modules")
        exclude_rx = re.compile(exclude) if isinstance(exclude, str) and exclude else None
        exclude_names = _names(exclude) if not isinstance(exclude, str) and exclude else set()
        if exclude_names is None:
            return None
        saved = _names(config.get("modules_to_save") or [])
        if saved is None:
            return None
        saved_rx = [re.compile(rf"(^|.*\.){m}($|\..*)") for m in saved]

        layers = config.get("layers_to_transform")
        pattern = config.get("layers_pattern")
        using_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
        wanted: set[int] = set()
        if using_layers:
            if isinstance(layers, bool) or not (isinstance(layers, int) or (
                    isinstance(layers, list) and all(isinstance(i, int) for i in layers))):
                return None
            wanted = {layers} if isinstance(layers, int) else set(layers)
        if isinstance(pattern, str):
            patterns = [pattern] if pattern else []
        elif isinstance(pattern, list) and all(isinstance(p, str) for p in pattern):
            patterns = list(pattern)  # PEFT tries them in order
        elif pattern is None:
            patterns = []
        else:
            return None
        # current PEFT takes the first numbered part (lazy); PEFT < 0.14 took the last (greedy)
        if patterns:
            finders = [[re.compile(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.") for p in patterns],
                       [re.compile(rf".*\.{p}\.(?P<idx>\d+)\.") for p in patterns]]
        else:
            finders = [[re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")], [re.compile(r".*\.[^.]*\.(?P<idx>\d+)\.")]]
    except (re.error, TypeError):
        return None

    def layer_index(key: str, finder: list[re.Pattern[str]]) -> int | None:
        for rx in finder:
            m = rx.match(key)
            if m is not None:
                return int(m["idx"])
        return None

    def select(key: str) -> bool | None:
        if exclude_rx is not None and exclude_rx.fullmatch(key):
            return False
        if key in exclude_names or any(key.endswith(f".{e}") for e in exclude_names):
            return False
        targeted = target(key)
        if any(rx.match(key) for rx in saved_rx):
            # PEFT >= 0.15 never targets modules_to_save; older versions adapted them too
            return None if targeted is not False else False
        return targeted

    def target(key: str) -> bool | None:
        if regex is not None:
            return regex.fullmatch(key) is not None
        if key in names:
            return True
        if not any(key.endswith(f".{t}") for t in names):
            return False
        if not using_layers:
            return True
        found = {layer_index(key, f) for f in finders}
        if len(found) > 1:
            return None
        idx = found.pop()
        return idx is not None and idx in wanted

    return select


def base_modules(base: BaseFingerprint) -> set[str]:
    """Modules of ``base`` that a tuner can wrap: those with a weight matrix or kernel (2-D or
    more; tied names included). Blocks past the config's ``num_hidden_layers`` are left out:
    checkpoints may carry layers the model never builds (multi-token-prediction heads)."""
    out: set[str] = set()
    for name in [*base.shapes, *base.tied]:
        shape = base.shape_of(name)
        if name.endswith(".weight") and shape is not None and len(shape) >= 2:
            out.add(name[: -len(".weight")])
    n_layers = (base.config or {}).get("num_hidden_layers")
    if isinstance(n_layers, int) and not isinstance(n_layers, bool):
        out = {m for m in out if not ((hit := _LAYER_INDEX.search(m)) and int(hit.group(1)) >= n_layers)}
    return out


def _untargeted(select: TargetMatcher, modules: Iterable[str]) -> list[str]:
    return sorted(m for m in modules if select(m) is False)


def refuse_untargeted(config: Mapping[str, Any], wrapped: Iterable[str]) -> None:
    """Refuse adapter weights on modules the config's ``target_modules`` does not select
    (``wrapped``: the adapter's modules, named as in the base). PEFT ignores them when it
    loads the adapter, so nothing may apply them: they are refused however the adapter
    arrives (published with or without a base, pulled from a remote), before any base is
    in hand; :func:`check_targets` finds the same modules with a base."""
    select = peft_target_matcher(config)
    bad = _untargeted(select, wrapped) if select is not None else []
    if bad:
        raise AdapterFormatError(f"unexpected adapter weights: {few(bad)} not selected by target_modules "
                                 "(PEFT would ignore them)",
                                 hint="PEFT did not write these files as they are; save the adapter again with PEFT")


def check_targets(config: Mapping[str, Any], wrapped: Iterable[str], base: BaseFingerprint,
                  parts: str = "lora_A/lora_B") -> list[str]:
    """Reasons why the adapter's modules (``wrapped``) are not exactly those PEFT puts it on in
    ``base`` (empty: they are, or the config cannot be evaluated exactly). A module PEFT targets
    but the adapter lacks loads as a silent no-op; one PEFT does not target is ignored."""
    select = peft_target_matcher(config)
    if select is None:
        return []
    have = set(wrapped)
    kinds = {_NUMBERED.sub(".N", f".{m}.") for m in have}

    def expected(m: str) -> bool:
        # a name with nested indices (experts.3 in layers.1) counts only where the adapter has
        # one of its kind: transformers may fuse per-expert checkpoint tensors into one parameter
        # that no module-targeting tuner wraps
        return len(_NUMBERED.findall(f".{m}.")) < 2 or _NUMBERED.sub(".N", f".{m}.") in kinds

    missing = sorted(m for m in base_modules(base) - have if select(m) is True and expected(m))
    unexpected = _untargeted(select, have)
    reasons = []
    if missing:
        reasons.append(f"missing adapter weights: {few(missing)} selected by target_modules "
                       f"but without {parts} in the adapter")
    if unexpected:
        reasons.append(f"unexpected adapter weights: {few(unexpected)} not selected by target_modules "
                       f"(PEFT would ignore them)")
    return reasons


def __getattr__(name: str) -> Any:
    """Old import path: ``detect_method`` is a plugin lookup and lives in
    :mod:`adapterhub_sdk.plugins` (the built-in method plugins import this module)."""
    if name == "detect_method":
        from .. import plugins

        return plugins.detect_method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def requirements_digest(req: Requirements) -> str:
    body = json.dumps(req, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _label(name: str) -> str:
    return PSEUDO_LABELS.get(name, name)


def shape_fits(want: Any, have: Shape | list[int]) -> bool:
    """Whether a base tensor of shape ``have`` has the required shape ``want`` (``None``: any
    size; a :func:`one_of`: one of its shapes, each dimension by dimension). A 2-D
    ``[out, in_flat]`` also fits a kernel of more dimensions seen flattened,
    ``[out, in/groups, k...]`` with ``in/groups * k...`` = ``in_flat``: PEFT's LyCORIS, OFT,
    BOFT and AdaLoRA layers see a convolution so, and an adapter checked without its base
    (published unpinned) can only say ``[out, in_flat]``; with a base in hand,
    :func:`pin_flattened` records the kernel's own shape."""
    alts = alternatives(want)
    if alts is not None:
        return any(_same(a, have) for a in alts)
    if len(have) == len(want):
        return all(w is None or w == h for w, h in zip(want, have))
    return (len(want) == 2 and len(have) > 2 and want[0] in (None, have[0]) and want[1] is not None
            and numel(have[1:]) == want[1])


def check_requirements(req: Mapping[str, Any], base: BaseFingerprint) -> list[str]:
    """Reasons why ``base`` cannot take an adapter with these requirements (empty: it fits)."""
    reasons: list[str] = []
    missing: list[str] = []
    for name in sorted(req):
        want = req[name]
        have = base.shape_of(name)
        if have is None:
            missing.append(name)
            continue
        if not want:  # existence is all the method could check
            continue
        if not shape_fits(want, have):
            vocab = ("embed" in name or "lm_head" in name or "wte" in name) and not name.startswith("@")
            if vocab and alternatives(want) is None and want[0] not in (None, have[0]):
                reasons.append(f"vocabulary size: {name} has {have[0]} rows in the base, "
                               f"the adapter expects {want[0]}")
            else:
                reasons.append(f"shape: {_label(name)} is {list(have)} in the base, the adapter needs {_shown(want)}")
    if len(reasons) > MAX_REASONS:
        reasons = reasons[:MAX_REASONS] + [f"(+{len(reasons) - MAX_REASONS} more shape mismatches)"]
    if missing:
        modules = sorted({m if m.startswith("@") else m.rsplit(".", 1)[0] for m in missing})
        reasons.insert(0, f"missing module: {few([_label(m) for m in modules])} not in the base")
    return reasons

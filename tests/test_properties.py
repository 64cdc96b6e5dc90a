"""Property tests (hypothesis): names, versions and ranges, the manifest's canonical JSON
round trip, and safetensors header validation; and a bounded fuzz target for config and
manifest parsing (every input is parsed or refused with our own error, never another
exception). Bounded by max_examples so that CI spends seconds here; ``-m extended`` runs
the fuzz target longer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterhub_sdk.errors import (
    AdapterHubError,
    CorruptFileError,
    InvalidNameError,
    InvalidVersionError,
    UnsafeFormatError,
)
from adapterhub_sdk.manifest import BaseRef, FileEntry, Manifest
from adapterhub_sdk.names import name_key, parse_ref, validate_name
from adapterhub_sdk.safetensors_io import DTYPE_SIZES, read_header
from adapterhub_sdk.versions import Version, VersionSpec

QUICK = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ_EXAMPLES = 300

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
part = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9_]|[.-][A-Za-z0-9_]){0,40}[A-Za-z0-9]?\Z", fullmatch=True).filter(
    lambda p: p[-1] in _ALNUM and ".." not in p and "--" not in p)
names = st.builds(lambda a, b: f"{a}/{b}", part, part)
versions = st.builds(Version, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))


# --------------------------------------------------------------------------- names


@QUICK
@given(names)
def test_valid_names_are_accepted_and_keyed_case_insensitively(name):
    assert validate_name(name) == name
    assert name_key(name) == name_key(name.upper()) == name_key(name.lower())


@QUICK
@given(st.text(max_size=200))
def test_any_text_is_a_name_or_an_invalid_name_error(text):
    try:
        validate_name(text)
    except InvalidNameError:
        return
    ns, _, rest = text.partition("/")
    assert text.isascii() and ns and rest and "/" not in rest and ".." not in text and "\x00" not in text


@QUICK
@given(names, versions)
def test_a_reference_splits_into_its_name_and_spec(name, version):
    ref = parse_ref(f"{name}@{version}")
    assert (ref.name, ref.spec) == (name, str(version))


# --------------------------------------------------------------------------- versions and ranges


def _parse(text: str) -> Version:
    return Version.parse(text)


@QUICK
@given(versions)
def test_version_text_round_trips(v):
    assert _parse(str(v)) == v


@QUICK
@given(versions, versions)
def test_versions_order_like_their_numbers(a, b):
    ka, kb = (a.major, a.minor, a.patch), (b.major, b.minor, b.patch)
    assert (a < b) == (ka < kb) and (a == b) == (ka == kb)


@QUICK
@given(versions, versions)
def test_a_range_between_two_versions_holds_exactly_those_between(a, b):
    lo, hi = min(a, b), max(a, b)
    spec = VersionSpec.parse(f">={lo},<{hi}")
    for v in (lo, hi, a, b):
        assert spec.matches(v) == (lo <= v < hi)


@QUICK
@given(versions)
def test_caret_and_tilde_ranges(v):
    caret, tilde = VersionSpec.parse(f"^{v}"), VersionSpec.parse(f"~{v}")
    assert caret.matches(v) and tilde.matches(v)
    assert not tilde.matches(Version(v.major, v.minor + 1, 0))
    assert caret.matches(Version(v.major, v.minor + 1, 0)) == (v.major > 0)


@QUICK
@given(st.text(max_size=60))
def test_any_text_is_a_spec_or_an_invalid_version_error(text):
    try:
        VersionSpec.parse(text)
    except InvalidVersionError:
        pass


# --------------------------------------------------------------------------- manifests

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                            max_size=4),
                           max_leaves=12)
file_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,12}\.(json|safetensors|md|txt)\Z", fullmatch=True)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def manifests(draw) -> Manifest:
    paths = sorted(draw(st.lists(file_names, min_size=1, max_size=5, unique_by=str.casefold)))  # as pack writes them
    return Manifest(
        name=draw(names), version=str(draw(versions)),
        method=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        base=BaseRef(name=draw(st.none() | st.text(max_size=20)), fingerprint=draw(st.none() | sha)),
        files=tuple(FileEntry(p, draw(sha), draw(st.integers(0, 2**40))) for p in paths),
        requirements=draw(st.dictionaries(st.text(max_size=10), st.lists(st.none() | st.integers(0, 10**6), max_size=3),
                                          max_size=4)),
        tasks=tuple(sorted(draw(st.lists(st.from_regex(r"\A[a-z][a-z0-9-]{0,10}\Z", fullmatch=True),
                                         max_size=3, unique=True)))),  # as publish keeps them
        description=draw(st.none() | st.text(max_size=40)),
        metrics=draw(st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False)
                                     | st.integers(), max_size=3)),
    )


@QUICK
@given(manifests())
def test_manifest_canonical_json_round_trips(m):
    raw = m.to_json()
    back = Manifest.from_json(raw)
    assert back == m and back.digest == m.digest and back.to_json() == raw
    assert Manifest.from_json(json.dumps(json.loads(raw), indent=3)).to_json() == raw  # layout does not count


@QUICK
@given(manifests(), st.sampled_from(["name", "version", "description"]))
def test_a_changed_manifest_field_breaks_its_digest(m, key):
    d = json.loads(m.to_json())
    d[key] = (d[key] or "") + "x" if key != "version" else d[key] + "-x"
    with pytest.raises(AdapterHubError):
        Manifest.from_dict(d)


# --------------------------------------------------------------------------- safetensors headers

dtypes = st.sampled_from(sorted(d for d in DTYPE_SIZES if d != "F4"))


@st.composite
def safetensors_files(draw) -> tuple[bytes, dict[str, tuple[str, tuple[int, ...]]]]:
    entries = draw(st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9._]{0,20}\Z", fullmatch=True),
                                   st.tuples(dtypes, st.lists(st.integers(0, 5), max_size=3).map(tuple)),
                                   min_size=1, max_size=6))
    header, offset = {}, 0
    for name, (dtype, shape) in entries.items():
        n = DTYPE_SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset, entries


@QUICK
@given(safetensors_files())
def test_valid_safetensors_headers_read_back(tmp_path_factory, file):
    raw, entries = file
    p = Path(tmp_path_factory.mktemp("st")) / "w.safetensors"
    p.write_bytes(raw)
    header = read_header(p)
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == entries


@QUICK
@given(safetensors_files(), st.data())
def test_damaged_safetensors_are_refused_as_corrupt(tmp_path_factory, file, data):
    """A byte changed, the file cut short, or junk appended to the header: the header is
    read (a change that keeps it consistent) or refused as corrupt or unsafe, nothing else."""
    raw, _ = file
    kind = data.draw(st.sampled_from(["flip", "cut"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    else:
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    p = Path(tmp_path_factory.mktemp("st")) / "w.safetensors"
    p.write_bytes(raw)
    try:
        read_header(p)
    except (CorruptFileError, UnsafeFormatError):  # a first byte of 0x80 reads as a pickle's
        pass


# --------------------------------------------------------------------------- fuzz target: configs and manifests


def _fuzz_one(text: str) -> None:
    """Parse ``text`` as a manifest and as an adapter config; only our own errors may escape."""
    from adapterhub_sdk.jsontext import loads_bounded
    from adapterhub_sdk.plugins import detect_method

    try:
        Manifest.from_json(text)
    except AdapterHubError:
        pass
    try:
        config = loads_bounded(text)
    except ValueError:
        return
    if isinstance(config, dict):
        try:
            detect_method(config)
        except AdapterHubError:
            pass


json_like = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda d, inner: "[" * d + inner + "]" * d, st.integers(0, 3000), st.sampled_from(["", "1", '{"a":'])),
    st.text(alphabet='{}[]":,0123456789abcdefnulltrue \\', max_size=200),
    st.dictionaries(st.sampled_from(["peft_type", "schema", "name", "files", "r", "target_modules", "base"]),
                    json_values, max_size=6).map(json.dumps),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(json_like)
def test_fuzz_config_and_manifest_parsing(text):
    _fuzz_one(text)


@pytest.mark.extended
@settings(max_examples=20_000, deadline=None)
@given(json_like)
def test_fuzz_config_and_manifest_parsing_long(text):
    _fuzz_one(text)

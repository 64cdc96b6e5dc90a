"""Semantic versions and version specs: parsing, semver precedence, ranges, pre-release rules."""

from __future__ import annotations

import random

import pytest

from adapterhub_sdk.errors import AdapterHubError, InvalidVersionError
from adapterhub_sdk.versions import Version, VersionSpec, looks_like_spec

V = Version.parse

# --------------------------------------------------------------------------- Version.parse


@pytest.mark.parametrize(
    ("text", "major", "minor", "patch", "pre", "build"),
    [
        ("0.0.0", 0, 0, 0, (), ""),
        ("1.2.3", 1, 2, 3, (), ""),
        ("10.20.30", 10, 20, 30, (), ""),
        ("1.0.0-rc.1", 1, 0, 0, ("rc", "1"), ""),
        ("1.0.0-alpha", 1, 0, 0, ("alpha",), ""),
        ("1.0.0-0.3.7", 1, 0, 0, ("0", "3", "7"), ""),
        ("1.0.0-x-y-z.--", 1, 0, 0, ("x-y-z", "--"), ""),
        ("1.0.0+build.5", 1, 0, 0, (), "build.5"),
        ("1.0.0-beta.2+exp.sha.5114f85", 1, 0, 0, ("beta", "2"), "exp.sha.5114f85"),
    ],
)
def test_version_parse_valid(text, major, minor, patch, pre, build):
    v = V(text)
    assert (v.major, v.minor, v.patch, v.prerelease, v.build) == (major, minor, patch, pre, build)
    assert str(v) == text
    assert v.is_prerelease == bool(pre)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "-1.2.3",
        "v1.2.3",  # a spec may say v1.2.3; a published version may not
        "1.2.x",
        "1.2.3-",
        "1.2.3+",
        "1.2.3-rc..1",
        "1.2.3-01",  # numeric pre-release identifiers have no leading zeros
        "1.2.3-rc.01",
        "1.2.3-rc_1",
        "1.2.3 beta",
        "\uff11.2.3",  # fullwidth digit one
        "1.2.3\u200b",  # zero-width space
        "latest",
        "a.b.c",
    ],
)
def test_version_parse_malformed(text):
    with pytest.raises(InvalidVersionError) as info:
        V(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AdapterHubError)
    assert info.value.hint  # tells the user what a version looks like


@pytest.mark.parametrize("value", [None, 1, 1.0, b"1.2.3", ["1", "2", "3"]])
def test_version_parse_rejects_non_strings(value):
    with pytest.raises(InvalidVersionError):
        V(value)


# --------------------------------------------------------------------------- precedence

SEMVER_ORDER = [
    "0.0.1",
    "0.1.0",
    "0.9.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.2.0",
    "1.9.0",
    "1.10.0",
    "2.0.0-0",
    "2.0.0",
    "10.0.0",
]


def test_semver_precedence_total_order():
    versions = [V(t) for t in SEMVER_ORDER]
    for lo, hi in zip(versions, versions[1:], strict=False):
        assert lo < hi, f"{lo} should precede {hi}"
        assert hi > lo and lo != hi and not hi < lo
    shuffled = versions[:]
    random.Random(7).shuffle(shuffled)
    assert [str(v) for v in sorted(shuffled)] == SEMVER_ORDER


@pytest.mark.parametrize(
    ("a", "b"),
    [("1.0.0+a", "1.0.0+b"), ("1.0.0-rc.1+x", "1.0.0-rc.1"), ("1.2.3", "1.2.3+build.7")],
)
def test_build_metadata_is_ignored_for_precedence(a, b):
    assert V(a) == V(b)
    assert hash(V(a)) == hash(V(b))
    assert not V(a) < V(b) and not V(b) < V(a)
    assert len({V(a), V(b)}) == 1


def test_numeric_parts_compare_as_numbers_not_strings():
    assert V("1.10.0") > V("1.9.0")
    assert V("1.0.0-rc.10") > V("1.0.0-rc.9")
    assert V("1.0.0-alpha") > V("1.0.0-99")  # numeric identifiers sort below alphanumeric


def test_version_does_not_compare_with_strings():
    assert V("1.0.0") != "1.0.0"
    with pytest.raises(TypeError):
        _ = V("1.0.0") < "2.0.0"


# --------------------------------------------------------------------------- specs

UNIVERSE = [
    "0.0.3", "0.0.4", "0.1.0", "0.2.3", "0.2.9", "0.3.0",
    "1.0.0-rc.1", "1.0.0-rc.2", "1.0.0", "1.1.0", "1.2.0-beta.1", "1.2.0", "1.2.2", "1.2.3",
    "1.2.4", "1.2.9", "1.3.0-rc.1", "1.3.0", "1.9.0", "2.0.0-rc.1", "2.0.0", "2.1.0", "3.0.0",
]

# spec, kind, the versions of UNIVERSE it matches (in order)
SPEC_TABLE = [
    # exact pins
    ("1.2.3", "exact", ["1.2.3"]),
    ("=1.2.3", "exact", ["1.2.3"]),
    ("v1.2.3", "exact", ["1.2.3"]),
    ("1.0.0-rc.1", "exact", ["1.0.0-rc.1"]),
    # caret: the left-most non-zero part is fixed
    ("^1.2.3", "range", ["1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    ("^1.2", "range", ["1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    ("^1", "range", ["1.0.0", "1.1.0", "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    ("^0.2.3", "range", ["0.2.3", "0.2.9"]),
    ("^0.0.3", "range", ["0.0.3"]),
    ("^0.0", "range", ["0.0.3", "0.0.4"]),
    ("^0", "range", ["0.0.3", "0.0.4", "0.1.0", "0.2.3", "0.2.9", "0.3.0"]),
    # tilde: patch updates only (or minor when only the major is given)
    ("~1.2.3", "range", ["1.2.3", "1.2.4", "1.2.9"]),
    ("~1.2", "range", ["1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9"]),
    ("~1", "range", ["1.0.0", "1.1.0", "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    # comparator sets
    (">=1,<2", "range", ["1.0.0", "1.1.0", "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    (">=1.2.3, <1.3", "range", ["1.2.3", "1.2.4", "1.2.9"]),
    (">=1.2.3 <1.3.0", "range", ["1.2.3", "1.2.4", "1.2.9"]),
    (">1.2.3,<=1.9.0", "range", ["1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    (">1.2", "range", ["1.3.0", "1.9.0", "2.0.0", "2.1.0", "3.0.0"]),
    ("<=1.2", "range", ["0.0.3", "0.0.4", "0.1.0", "0.2.3", "0.2.9", "0.3.0", "1.0.0", "1.1.0",
                        "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9"]),
    ("<0.1.0", "range", ["0.0.3", "0.0.4"]),
    (">=2", "range", ["2.0.0", "2.1.0", "3.0.0"]),
    (">=1.2.0,<1.3.0,!=1.2.3", "range", ["1.2.0", "1.2.2", "1.2.4", "1.2.9"]),
    # partial versions mean "any x.y.z below that prefix"
    ("1.2", "range", ["1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9"]),
    ("1.2.x", "range", ["1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9"]),
    ("1", "range", ["1.0.0", "1.1.0", "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0"]),
    ("2.*", "range", ["2.0.0", "2.1.0"]),
    # pre-releases: only when a comparator names one of the same x.y.z
    (">=1.0.0-rc.1", "range", ["1.0.0-rc.1", "1.0.0-rc.2", "1.0.0", "1.1.0", "1.2.0", "1.2.2",
                               "1.2.3", "1.2.4", "1.2.9", "1.3.0", "1.9.0", "2.0.0", "2.1.0", "3.0.0"]),
    ("^1.0.0-rc.2", "range", ["1.0.0-rc.2", "1.0.0", "1.1.0", "1.2.0", "1.2.2", "1.2.3", "1.2.4",
                              "1.2.9", "1.3.0", "1.9.0"]),
    (">=1.2.0-beta.1,<1.2.1", "range", ["1.2.0-beta.1", "1.2.0"]),
    # latest: every release, no pre-release
    ("latest", "latest", [v for v in UNIVERSE if "-" not in v]),
    ("*", "latest", [v for v in UNIVERSE if "-" not in v]),
    # aliases resolve in the registry, never by matching
    ("prod", "alias", []),
    ("staging", "alias", []),
    ("vnext", "alias", []),  # starts like "v1" but is not a version
]


@pytest.mark.parametrize(("spec", "kind", "expected"), SPEC_TABLE, ids=[row[0] for row in SPEC_TABLE])
def test_spec_matches(spec, kind, expected):
    sp = VersionSpec.parse(spec)
    assert sp.kind == kind
    assert [v for v in UNIVERSE if sp.matches(V(v))] == expected
    best = sp.best(V(v) for v in UNIVERSE)
    assert (str(best) if best else None) == (expected[-1] if expected else None)


def test_spec_kinds_and_fields():
    exact = VersionSpec.parse(" 1.2.3 ")
    assert exact.kind == "exact" and exact.exact == V("1.2.3")
    alias = VersionSpec.parse("prod")
    assert alias.kind == "alias" and alias.alias == "prod"
    assert VersionSpec.parse("^1.2").exact is None


def test_prerelease_never_matches_a_plain_range():
    for spec in ("^1", ">=1.0.0", "1.x", "~1.3", "<2", "latest"):
        sp = VersionSpec.parse(spec)
        for pre in ("1.3.0-rc.1", "1.5.0-alpha", "2.0.0-rc.1"):
            assert not sp.matches(V(pre)), f"{spec} must not pick pre-release {pre}"


def test_upper_bound_excludes_prereleases_of_the_next_major():
    # ^1 means <2.0.0-0: not even 2.0.0-rc.1 slips in
    sp = VersionSpec.parse("^1")
    assert sp.best([V("1.4.0"), V("2.0.0-rc.1"), V("2.0.0-0")]) == V("1.4.0")


def test_best_of_nothing_is_none():
    assert VersionSpec.parse("^5").best([V("1.0.0"), V("4.9.9")]) is None
    assert VersionSpec.parse("latest").best([V("1.0.0-rc.1")]) is None
    assert VersionSpec.parse("latest").best([]) is None


def test_exact_prerelease_pin_matches_it():
    assert VersionSpec.parse("2.0.0-rc.1").best(V(v) for v in UNIVERSE) == V("2.0.0-rc.1")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        ">=",
        "^",
        "~",
        "^1.2.3.4",
        ">=1,,<2",
        ">=1,<2,",
        ",>=1",
        "1.2.3 - 2.0.0",  # hyphen ranges are not supported
        "1.2.3 || 2.0.0",
        "=>1.0.0",
        "~>1.2",
        "^1.2-rc.1",  # a pre-release needs a full version
        "1-rc.1",
        ">=01.2.3",
        "1.2.3-",
        "Prod",  # aliases are lower case
        "latest!",
        "prod alias",
        "\uff11.2.3",
        "^\u0661",  # Arabic-Indic digit one
        "a" * 300,
        ">=1.0.0;rm -rf /",
        "../1.0.0",
    ],
)
def test_malformed_specs(spec):
    with pytest.raises(InvalidVersionError) as info:
        VersionSpec.parse(spec)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 1, b"^1"])
def test_spec_rejects_non_strings(value):
    with pytest.raises(InvalidVersionError):
        VersionSpec.parse(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.2.3", True), ("^1", True), (">=1,<2", True), ("latest", True), ("1.2", True),
     ("prod", False), ("staging", False), ("not a spec", False), ("", False)],
)
def test_looks_like_spec(text, expected):
    assert looks_like_spec(text) is expected

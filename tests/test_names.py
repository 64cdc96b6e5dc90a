"""Adapter names, references and aliases: what is accepted, and that nothing path-like,
look-alike or ambiguous gets through."""

from __future__ import annotations

import pytest

from adapterhub_sdk.errors import AdapterHubError, InvalidNameError, InvalidVersionError
from adapterhub_sdk.names import AdapterRef, name_key, parse_ref, validate_alias, validate_name
from adapterhub_sdk.versions import VersionSpec

GOOD_NAMES = [
    "acme/sentiment",
    "Acme/Sentiment",
    "a/b",
    "a1/2b",
    "acme-corp/sentiment_v2.1",
    "acme/x.safetensors",
    "meta-llama/Llama-3.1-8B",
    "a" * 96 + "/" + "b" * 96,  # the Hub's 96-character limit per part
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name):
    assert validate_name(name) == name
    assert parse_ref(name) == AdapterRef(name, None)


BAD_NAMES = [
    # path traversal and path syntax
    "acme/../x",
    "../x",
    "./x",
    "acme/..",
    "acme/.",
    "../..",
    "acme/x/../../y",
    "/etc/passwd",
    "acme/x/",
    "/acme/x",
    "acme\\x",
    "acme/x\\..\\..\\y",
    "~/x",
    "C:/x",
    "acme/%2e%2e",
    "acme/x\x00",
    "acme/x\n",
    # non-ASCII look-alikes
    "\u0430cme/x",  # Cyrillic a
    "acme/\u0455entiment",  # Cyrillic dze looks like s
    "\uff41\uff43\uff4d\uff45/x",  # fullwidth acme
    "acme\uff0fx",  # fullwidth solidus
    "acme/x\u200b",  # zero-width space
    "acme/\u200bx",
    "acme/x\u00a0",  # no-break space
    "\u212a/x",  # Kelvin sign, lower-cases to 'k'
    # structure
    "",
    "acme",
    "acme/",
    "/x",
    "acme//x",
    "a/b/c",
    " acme/x",
    "acme/x ",
    "acme/my model",
    "acme/x@1.0.0",
    "acme/x:latest",
    # reserved sequences and edges
    "acme/x--y",
    "acme--corp/x",
    "acme/x..y",
    "acme/.hidden",
    "acme/x.",
    "acme/-x",
    "acme/x-",
    "acme/_x",
    "a" * 97 + "/x",
    "acme/" + "b" * 97,
    "acme/" + "b" * 10_000,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:40] for n in BAD_NAMES])
def test_bad_names(name):
    with pytest.raises(InvalidNameError) as info:
        validate_name(name)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, AdapterHubError)
    assert err.hint
    # the message is printable ASCII: a look-alike is shown escaped, not as the look-alike
    assert str(err).isascii()
    with pytest.raises(InvalidNameError):
        name_key(name)
    if "@" not in name:
        with pytest.raises(InvalidNameError):
            parse_ref(name + "@1.0.0")


@pytest.mark.parametrize("value", [None, 1, b"acme/x", ["acme", "x"]])
def test_non_string_names(value):
    with pytest.raises(InvalidNameError):
        validate_name(value)
    with pytest.raises(InvalidNameError):
        parse_ref(value)


def test_name_key_is_case_insensitive():
    assert name_key("Acme/Sentiment") == "acme/sentiment"
    assert name_key("ACME/SENTIMENT") == name_key("acme/sentiment") == name_key("aCmE/sEnTiMeNt")
    assert name_key("acme/sentiment") != name_key("acme/sentiment2")
    # validate_name keeps the spelling the user chose
    assert validate_name("Acme/Sentiment") == "Acme/Sentiment"


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "name", "spec"),
    [
        ("acme/x", "acme/x", None),
        ("acme/x@1.2.3", "acme/x", "1.2.3"),
        ("acme/x@^1.2", "acme/x", "^1.2"),
        ("acme/x@>=1,<2", "acme/x", ">=1,<2"),
        ("acme/x@latest", "acme/x", "latest"),
        ("acme/x@prod", "acme/x", "prod"),
        ("Acme/X@1.0.0-rc.1", "Acme/X", "1.0.0-rc.1"),
    ],
)
def test_parse_ref(text, name, spec):
    ref = parse_ref(text)
    assert (ref.name, ref.spec) == (name, spec)
    assert str(ref) == text


def test_parse_ref_default_spec():
    assert parse_ref("acme/x", default_spec="latest") == AdapterRef("acme/x", "latest")
    assert parse_ref("acme/x@1.0.0", default_spec="latest").spec == "1.0.0"
    with pytest.raises(InvalidVersionError):
        parse_ref("acme/x", default_spec="not a spec")


@pytest.mark.parametrize("text", ["acme/x@", "@1.0.0", "../x@1.0.0", "acme/../x@latest"])
def test_parse_ref_bad_name_part(text):
    with pytest.raises(InvalidNameError):
        parse_ref(text)


@pytest.mark.parametrize("text", ["acme/x@not a spec", "acme/x@1.2.3.4", "acme/x@^", "acme/x@1@2",
                                  "acme/x@Prod", "acme/x@\uff11.0.0"])
def test_parse_ref_bad_spec(text):
    with pytest.raises(InvalidVersionError) as info:
        parse_ref(text)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- aliases

GOOD_ALIASES = ["prod", "staging", "canary-2", "a_b", "vnext", "xray", "a" * 64]


@pytest.mark.parametrize("alias", GOOD_ALIASES)
def test_good_aliases(alias):
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("alias", GOOD_ALIASES)
def test_accepted_alias_resolves_as_alias(alias):
    """An alias that can be set must also be usable in a reference (NS/NAME@alias)."""
    validate_alias(alias)
    sp = VersionSpec.parse(alias)
    assert sp.kind == "alias" and sp.alias == alias
    assert parse_ref(f"acme/x@{alias}").spec == alias


BAD_ALIASES = [
    "",
    "Prod",
    "PROD",
    "latest",  # reserved
    "x",  # means latest
    "1",
    "1.0.0",
    "v1",
    "v1.2",
    "v2-beta",
    "1prod",
    "-prod",
    "_prod",
    "prod/x",
    "../prod",
    "prod.1",
    "pr od",
    "pr\u043ed",  # Cyrillic o
    "prod\u200b",
    "a" * 65,
]


@pytest.mark.parametrize("alias", BAD_ALIASES, ids=[ascii(a)[:30] for a in BAD_ALIASES])
def test_bad_aliases(alias):
    with pytest.raises(InvalidNameError) as info:
        validate_alias(alias)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 1, b"prod"])
def test_non_string_alias(value):
    with pytest.raises(InvalidNameError):
        validate_alias(value)

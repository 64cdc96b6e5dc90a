"""A signing-policy refusal says each finding once: an untrusted or revoked key is named with
its signer, without the check's reason saying the same thing again; a bad or tampered
signature keeps its reason (it says what was wrong); two bundles by one key are one finding.

Before: 'signed by a key this registry does not trust (carol: its key is not trusted in this
registry)', and a version signed twice by one untrusted key listed it twice."""

from __future__ import annotations

import pytest

from adapterhub_sdk.errors import SignaturePolicyError
from adapterhub_sdk.signing.checks import SignatureCheck, VersionSignatures, refuse_unless_signed


def _vs(*checks: SignatureCheck) -> VersionSignatures:
    return VersionSignatures("acme/x@1.0.0", "sha256:" + "0" * 64, list(checks))


def test_each_finding_is_said_once():
    untrusted = SignatureCheck("carol", "k1", "untrusted", "model.sig", "its key is not trusted in this registry")
    revoked = SignatureCheck("bob", "k2", "revoked", "model.bob.sig", "key 'bob' was revoked", key_name="bob")
    assert _vs(untrusted).describe() == "signed by a key this registry does not trust (carol)"
    assert _vs(revoked).describe() == "signed by a revoked key (bob)"
    assert _vs(untrusted, untrusted).describe() == "signed by a key this registry does not trust (carol)"
    tampered = SignatureCheck("alice", "k3", "tampered", "model.sig", "adapter_model.safetensors differs")
    assert _vs(tampered).describe() == "tampered (alice: adapter_model.safetensors differs)"
    with pytest.raises(SignaturePolicyError) as err:
        refuse_unless_signed("acme/x@1.0.0", _vs(untrusted, revoked), ["alice"])
    msg = err.value.message
    assert msg == ("acme/x@1.0.0 is refused: the signing policy requires a signature by alice, and it is signed "
                   "by a key this registry does not trust (carol); signed by a revoked key (bob)")

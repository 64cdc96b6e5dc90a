"""A pull whose connection dies in the middle of a layer (a real docker-registry behind a
loopback proxy that cuts the body after K bytes) is a transport failure, told as one (how
many bytes of how many arrived; retry), with nothing recorded, never the tamper message;
a whole body of other bytes still is. And the unreachable-registry hint names --insecure
only where it was not given."""

from __future__ import annotations

import pytest
from ociserver import REGISTRY, SKIP_REASON, free_port

from conftest import run_cli

pytestmark = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)


def test_the_insecure_hint_only_where_insecure_was_not_given(tmp_path):
    ref = f"oci://127.0.0.1:{free_port()}/x:1.0.0"
    given = run_cli("pull", ref, "--insecure")
    assert given.returncode == 1 and given.stderr.count("\n") == 1
    assert "is not reachable (ConnectionRefusedError)" in given.stderr and "insecure" not in given.stderr
    assert given.stderr.rstrip().endswith("check the host and port")
    https = run_cli("pull", ref)  # HTTPS: the hint may be the cure
    assert https.returncode == 1 and https.stderr.count("\n") == 1
    assert https.stderr.rstrip().endswith("a plain-HTTP registry (one on loopback) needs --insecure")

"""``oci://HOST[:PORT]/REPOSITORY[:TAG | @sha256:DIGEST | @SPEC]`` and the OCI shape of a
version: tags (``+`` is not allowed in a tag: build metadata is written after ``_``,
which a semantic version never holds, so the mapping is reversible), media types and
annotations."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import AdapterHubError, NotFoundError
from ..versions import Version, VersionSpec

SCHEME = "oci://"
ARTIFACT_TYPE = "application/vnd.adapterhub.adapter.v1"
CONFIG_TYPE = "application/vnd.adapterhub.manifest.v1+json"
FILE_TYPE = "application/vnd.adapterhub.adapter.file.v1"
SAFETENSORS_TYPE = "application/vnd.adapterhub.adapter.safetensors.v1"
SIG_ARTIFACT_TYPE = "application/vnd.adapterhub.signatures.v1"
SIG_TYPE = "application/vnd.adapterhub.signature.bundle.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
ANN = "io.adapterhub."  # our annotations' prefix
CONFIG_LIMIT = 16 << 20
SIG_LIMIT = 1 << 20

_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?", re.ASCII)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class OciRef:
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None
    spec: str | None = None

    @property
    def repo_url(self) -> str:
        return f"{SCHEME}{self.host}/{self.repo}"

    def __str__(self) -> str:
        tail = f":{self.tag}" if self.tag else f"@{self.digest}" if self.digest else f"@{self.spec}" if self.spec else ""
        return self.repo_url + tail


def parse_oci_ref(text: str) -> OciRef:
    """Parse an ``oci://`` URL; NotFoundError (one line) for anything else."""
    if not isinstance(text, str) or not text[:len(SCHEME)].lower() == SCHEME:
        raise NotFoundError(f"{text!r} is not an OCI reference (oci://HOST[:PORT]/REPOSITORY[:TAG])")
    host, _, rest = text[len(SCHEME):].partition("/")
    if not _HOST.fullmatch(host) or len(host) > 255:
        raise NotFoundError(f"{text!r}: {host!r} is not a registry host (HOST or HOST:PORT)")
    tag = digest = spec = None
    if "@" in rest:
        rest, _, after = rest.partition("@")
        if after.startswith("sha256:"):
            if not _DIGEST.fullmatch(after):
                raise NotFoundError(f"{text!r}: {after!r} is not a sha256 digest (sha256: and 64 hex digits)")
            digest = after
        elif not after:
            raise NotFoundError(f"{text!r} has an empty version after '@'")
        else:
            VersionSpec.parse(after)
            spec = after
    elif ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            hint = None
            if "+" in tag:  # a version with build metadata: its tag spells '+' as '_'
                hint = (f"OCI tags cannot hold '+': pull the tag {tag.replace('+', '_')} "
                        f"(oci://{host}/{rest}:{tag.replace('+', '_')}) or the version ({SCHEME}{host}/{rest}@{tag})")
            raise NotFoundError(f"{text!r}: {tag!r} is not an OCI tag", hint=hint)
    if not _REPO.fullmatch(rest) or len(rest) > 255:
        raise NotFoundError(f"{text!r}: {rest!r} is not an OCI repository name",
                            hint="repositories are lowercase path components: oci://HOST/team/sentiment")
    return OciRef(host.lower(), rest, tag, digest, spec)


def version_tag(version: str) -> str:
    """The tag of a version: ``1.0.0+build.5`` -> ``1.0.0_build.5``."""
    tag = str(Version.parse(version)).replace("+", "_")
    if not _TAG.fullmatch(tag):
        raise AdapterHubError(f"version {version} is too long for an OCI tag (128 characters at most)")
    return tag


def tag_version(tag: str) -> Version | None:
    """The version a tag names (``1.0.0_build.5`` -> ``1.0.0+build.5``), None for other tags."""
    if tag.startswith("sha256-"):
        return None
    try:
        v = Version.parse(tag.replace("_", "+", 1))
    except AdapterHubError:
        return None
    return v if str(v).replace("+", "_") == tag else None


def signature_tag(digest: str) -> str:
    """cosign's convention: the tag of the signatures of manifest ``sha256:HEX``."""
    return digest.replace(":", "-", 1) + ".sig"


def insecure_for(host: str, insecure: bool | None) -> bool:
    """Plain HTTP for ``host``: when asked, or listed in ADAPTERHUB_OCI_INSECURE (``1`` for
    every host, or a comma-separated list of HOST[:PORT])."""
    if insecure is not None:
        return insecure
    value = os.environ.get("ADAPTERHUB_OCI_INSECURE", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    return host.lower() in {h.strip() for h in value.split(",") if h.strip()}


def layer_type(path: str) -> str:
    return SAFETENSORS_TYPE if path.endswith(".safetensors") else FILE_TYPE

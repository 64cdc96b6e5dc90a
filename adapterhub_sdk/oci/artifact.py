"""The shape of our OCI artifacts, on both sides of the wire: the image manifest a push
writes for a version (deterministic bytes), and the checks a pull makes on what a
registry sends back (an OCI image manifest, our manifest as its config, layer titles that
are plain file names) before anything is used."""

from __future__ import annotations

from typing import Any

from ..errors import DISTRUST, AdapterHubError, IntegrityError, NotFoundError
from ..manifest import Manifest, canonical_json, check_file_path
from .refs import ANN, ARTIFACT_TYPE, CONFIG_TYPE, TITLE, layer_type

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def artifact_manifest(manifest: Manifest, config_digest: str, config_size: int) -> bytes:
    """The OCI image manifest of a version: deterministic bytes (a second push of the same
    version writes the same digest)."""
    m = manifest
    notes = {ANN + "name": m.name, ANN + "version": m.version, ANN + "manifest.digest": m.digest,
             ANN + "method": m.method.get("type", ""), ANN + "variant": m.method.get("variant") or "",
             ANN + "tasks": ",".join(m.tasks), ANN + "base.name": m.base.name or "",
             ANN + "base.fingerprint": m.base.fingerprint or "", ANN + "base.arch": m.base.arch_signature or "",
             "org.opencontainers.image.version": m.version, "org.opencontainers.image.title": m.name}
    if m.description:
        notes["org.opencontainers.image.description"] = m.description[:1000]
    if m.license:
        notes["org.opencontainers.image.licenses"] = m.license
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
           "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
           "layers": [{"mediaType": layer_type(f.path), "digest": "sha256:" + f.sha256, "size": f.size,
                       "annotations": {TITLE: f.path}} for f in m.files],
           "annotations": {k: v for k, v in notes.items() if v}}
    return canonical_json(doc)


def parse_oci(body: bytes, what: str) -> dict[str, Any]:
    from ..jsontext import loads_bounded

    try:
        doc = loads_bounded(body)
    except (ValueError, AdapterHubError) as exc:
        raise IntegrityError(f"{what}: the registry's manifest is not JSON ({exc})", hint=DISTRUST) from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2 or not isinstance(doc.get("layers"), list) \
            or not isinstance(doc.get("config"), dict):
        raise NotFoundError(f"{what} is not an OCI image manifest (schemaVersion 2)",
                            hint="push it with 'adapterhub push'; other artifacts are not adapters")
    return doc


def config_manifest(raw: bytes, what: str) -> Manifest:
    """Our manifest from an artifact's config blob; a malformed one is refused naming the
    artifact (nothing is recorded from it)."""
    try:
        return Manifest.from_json(raw)
    except (ValueError, AdapterHubError) as exc:
        msg = exc.message if isinstance(exc, AdapterHubError) else str(exc)
        raise IntegrityError(f"{what}: the artifact's config (its adapterhub manifest) is not valid: {msg}; "
                             "nothing was recorded", hint="push it again with 'adapterhub push'") from None


def artifact_layers(doc: dict[str, Any], what: str) -> list[tuple[str, str, int]]:
    """(title, digest, size) of each layer, titles checked as file names (never paths)."""
    out = []
    for layer in doc["layers"]:
        if not isinstance(layer, dict):
            raise IntegrityError(f"{what}: a layer of the manifest is not an object", hint=DISTRUST)
        title = (layer.get("annotations") or {}).get(TITLE)
        try:
            check_file_path(title if isinstance(title, str) else "")
        except AdapterHubError:
            raise IntegrityError(f"{what}: layer title {title!r} is not a plain file name; nothing was written",
                                 hint="an adapter's files are plain names (adapter_model.safetensors)") from None
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise IntegrityError(f"{what}: layer {title} has no valid digest and size", hint=DISTRUST)
        out.append((str(title), digest, size))
    if len({t for t, _, _ in out}) != len(out):
        raise IntegrityError(f"{what}: two layers have the same title", hint=DISTRUST)
    return out

"""OCI registries as a :class:`~adapterhub_sdk.interfaces.Remote` (``oci://``), a built-in
plugin registered like third-party ones.

A version is one OCI image manifest (``artifactType`` :data:`~.refs.ARTIFACT_TYPE`): the
config blob is our manifest, byte for byte (its own media type); each adapter file is a
layer whose digest is the file's sha256 (the address our blob store uses) titled with
its file name (``org.opencontainers.image.title``, the ORAS convention); the base
fingerprint, arch signature, tasks, method, name and version are annotations; the tag is
the version (``+`` written ``_``). Signatures travel as a second artifact tagged
``sha256-<manifest hex>.sig`` (cosign's convention; no referrers API needed). Tags are
immutable here: a push refuses a tag that holds other content and changes nothing when
it holds the same. A pull verifies the manifest's digest, every layer's digest and every
file against our manifest, and checks the signatures and the signing policy in force,
before anything is recorded, then records the version with its source, so it resolves
offline afterwards."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DISTRUST, AdapterHubError, IntegrityError, NotFoundError, VersionConflictError
from ..hookspecs import hookimpl
from ..manifest import Manifest, canonical_json
from ..remote_names import check_pull_name
from ..versions import Version, VersionSpec
from .artifact import OCI_MANIFEST, artifact_layers, artifact_manifest, config_manifest, parse_oci
from .refs import (
    ANN,
    ARTIFACT_TYPE,
    CONFIG_LIMIT,
    CONFIG_TYPE,
    EMPTY_TYPE,
    SIG_ARTIFACT_TYPE,
    SIG_LIMIT,
    SIG_TYPE,
    TITLE,
    OciRef,
    insecure_for,
    parse_oci_ref,
    signature_tag,
    tag_version,
    version_tag,
)

if TYPE_CHECKING:
    from ..interfaces import Remote
    from .client import OciClient

EMPTY = b"{}"


@dataclass(frozen=True)
class OciPushResult:
    repo: str  # HOST/REPOSITORY
    version: str
    commit: str  # the manifest's digest
    url: str
    tag: str
    created: bool
    signatures: int
    adapter_digest: str = ""  # the adapter manifest's digest (``digest`` in pull --json and show)

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "version": self.version, "commit": self.commit, "digest": self.commit,
                "adapter_digest": self.adapter_digest, "url": self.url, "tag": self.tag, "created": self.created,
                "signatures": self.signatures}

    @property
    def summary(self) -> str:
        state = "pushed" if self.created else "already there, unchanged:"
        sigs = f", {self.signatures} signature(s)" if self.signatures else ""
        return f"{state} oci://{self.repo}:{self.tag} ({self.commit[:19]}{sigs})"


class OciRemote:
    """``oci://HOST[:PORT]/REPOSITORY``: versions are tags, a version's files are layers."""

    scheme = "oci"

    def __init__(self, url: str | None = None, *, insecure: bool | None = None, timeout: float = 60.0):
        self.url = url
        self.insecure = insecure
        self.timeout = timeout

    def _client(self, ref: OciRef) -> OciClient:
        from .client import OciClient

        return OciClient(ref.host, insecure=insecure_for(ref.host, self.insecure), timeout=self.timeout)

    # ------------------------------------------------------------------ versions

    def _tag_versions(self, c: OciClient, ref: OciRef) -> dict[Version, str]:
        """Semantic-version tags -> tag (``1.0.0_b1`` names 1.0.0+b1)."""
        out: dict[Version, str] = {}
        for tag in c.tags(ref.repo):
            v = tag_version(tag)
            if v is not None:
                out.setdefault(v, tag)
        return out

    def versions(self, url: str) -> Mapping[Any, str]:
        ref = parse_oci_ref(url)
        with self._client(ref) as c:
            tags = self._tag_versions(c, ref)
            return {v: c.head_manifest(ref.repo, t) or "" for v, t in tags.items()}

    def _select(self, c: OciClient, ref: OciRef) -> tuple[str, str | None, tuple[bytes, str] | None]:
        """(reference to GET: a tag or a digest, the tag, the manifest where choosing among
        version tags already fetched it, else None)."""
        if ref.digest:
            return ref.digest, None, None
        if ref.tag:
            return ref.tag, ref.tag, None
        spec = VersionSpec.parse(ref.spec or "latest")
        if spec.kind == "alias":
            raise NotFoundError(f"{ref}: aliases are not stored in OCI registries; use a version, a range or a tag")
        named: dict[Version, list[str]] = {}  # tags differing only in build metadata: one version, listed together
        for t in c.tags(ref.repo):
            if (tv := tag_version(t)) is not None:
                named.setdefault(tv, []).append(t)
        if spec.kind == "exact":
            candidates = [v for v in named if v == spec.exact]
        else:  # newest first; a tag holding another kind of artifact (an image, a model) is passed over
            candidates = sorted((v for v in named if spec.matches(v)), reverse=True)
        if not candidates:
            near = ", ".join(str(v) for v in sorted(named)[-8:]) or "none"
            raise NotFoundError(f"{ref}: no version tag matches {spec.text!r} (version tags: {near})")
        others: list[str] = []
        for chosen in candidates:
            tags = named[chosen]
            if spec.kind == "exact" and spec.exact is not None and spec.exact.build:  # that build, no other
                tags = [t for t in tags if t == version_tag(str(spec.exact))]
                if not tags:
                    raise NotFoundError(f"{ref}: no tag {version_tag(str(spec.exact))} (tags of {chosen}: "
                                        f"{', '.join(named[chosen])})")
            if len(tags) > 1:
                raise VersionConflictError(f"{ref}: tags {', '.join(tags)} name the same version {spec.text!r} "
                                           "picks (they differ only in build metadata)",
                                           hint=f"pull one by its tag: {ref.repo_url}:{tags[0]}")
            if spec.kind == "exact":
                return tags[0], tags[0], None
            got = c.get_manifest(ref.repo, tags[0])
            if got is not None and self._holds_adapter(got[0], ref, tags[0]):
                return tags[0], tags[0], got
            others.append(tags[0])
        raise NotFoundError(f"{ref}: no version tag matching {spec.text!r} holds an adapter (tag"
                            f"{'s' if len(others) > 1 else ''} {', '.join(others)} hold{'' if len(others) > 1 else 's'} "
                            "another kind of artifact)",
                            hint="push one with 'adapterhub push', or pull another repository")

    @staticmethod
    def _holds_adapter(body: bytes, ref: OciRef, tag: str) -> bool:
        """Whether the manifest ``tag`` names is an image manifest of our artifact type (or with
        our config): what a range or @latest may pick; an index, an image or another tool's
        artifact is not."""
        try:
            doc = parse_oci(body, f"{ref.repo_url}:{tag}")
        except AdapterHubError:
            return False
        return doc.get("artifactType") == ARTIFACT_TYPE or doc["config"].get("mediaType") == CONFIG_TYPE

    def _not_found(self, c: OciClient, ref: OciRef, reference: str) -> NotFoundError:
        import difflib

        tags = [t for t in c.tags(ref.repo) if not t.startswith("sha256-")]
        if not tags:
            status = c.api_status()
            if status not in (200, 401):  # not the distribution API at all: another server on that port
                return NotFoundError(f"{ref}: {ref.host} does not answer as an OCI registry (GET /v2/ answered "
                                     f"{status or 'nothing'})", hint="check the registry's host and port")
            return NotFoundError(f"{ref}: the repository has no tags on {ref.host} (nothing pushed there yet?)")
        near = difflib.get_close_matches(reference, tags, n=5, cutoff=0.3) or sorted(tags)[-5:]
        return NotFoundError(f"{ref}: {reference} not found (tags: {', '.join(near)})")

    # ------------------------------------------------------------------ push

    def push(self, registry: Any, ref: str, to: str, *, private: bool | None = None) -> OciPushResult:
        from .client import sha256_digest

        target = parse_oci_ref(to)
        info = registry.show(ref)
        manifest: Manifest = info.manifest
        tag = version_tag(manifest.version)
        if target.digest or target.spec or (target.tag and target.tag != tag):
            raise NotFoundError(f"push to {to}: give the repository only (oci://HOST/REPOSITORY); the tag is the "
                                f"version ({tag})")
        config = manifest.to_json()
        body = artifact_manifest(manifest, sha256_digest(config), len(config))
        digest = sha256_digest(body)
        where = f"{target.repo_url}:{tag}"
        if info.yanked:
            raise AdapterHubError(f"{info.name}@{info.version} is yanked here: pushed, {where} would offer it as a "
                                  "version like any other (a range or @latest there could pick it)",
                                  hint=f"un-yank it first ('adapterhub yank {info.name}@{info.version} --undo'), "
                                       "or push the version that replaces it")
        with self._client(target) as c:
            existing = self._check_tag(c, target, tag, digest, manifest.version)
            created = existing is None
            if created:
                self._push_files(c, target, registry, manifest)
                c.push_blob(target.repo, sha256_digest(config), len(config), config)
                # the uploads are the long window: another push of this version may have tagged it since.
                # The registry API has no conditional PUT, so: ask again just before it, read back after it
                if self._check_tag(c, target, tag, digest, manifest.version, late=True) is None:
                    started = time.monotonic()
                    c.put_manifest(target.repo, tag, body)
                    self._read_back(c, target, tag, digest, settle=time.monotonic() - started)
                else:  # another push of the same content tagged it meanwhile: nothing of ours to add
                    created = False
            sigs = registry.signatures(f"{info.name}@{info.version}").bundles
            pushed = self._push_signatures(c, target, digest, sigs) if sigs else 0
        return OciPushResult(f"{target.host}/{target.repo}", manifest.version, digest,
                             f"{target.repo_url}@{digest}", tag, created, pushed, manifest.digest)

    def _check_tag(self, c: OciClient, target: OciRef, tag: str, digest: str, version: str, *,
                   late: bool = False) -> str | None:
        """The digest ``tag`` names (None: no such tag, and no tag of the same version under
        other build metadata); VersionConflictError where it names other content. ``late``:
        asked again after this push's uploads (another push tagged it meanwhile), the tag's
        HEAD last, so that nothing but that round trip lies between it and the PUT."""
        where = f"{target.repo_url}:{tag}"
        if late:
            self._check_twin(c, target, tag, version)
        existing = c.head_manifest(target.repo, tag)
        if existing is not None and existing != digest:
            if late:
                raise VersionConflictError(
                    f"{where} already holds other content ({existing[:19]}, not {digest[:19]}): another push of this "
                    "version tagged it while this one uploaded its files; this push tagged nothing",
                    hint=f"versions are immutable; pull {where} to see what it holds, and publish and push a new "
                         "version")
            raise VersionConflictError(f"{where} already holds other content ({existing[:19]}, not {digest[:19]})",
                                       hint="versions are immutable; publish and push a new version")
        if existing is None and not late:
            self._check_twin(c, target, tag, version)
        return existing

    @staticmethod
    def _check_twin(c: OciClient, target: OciRef, tag: str, version: str) -> None:
        """No other tag names this version under other build metadata: semver ignores it, so a
        pin or a range could not tell them apart."""
        ver = Version.parse(version)
        twin = next((t for t, v in ((t, tag_version(t)) for t in c.tags(target.repo))
                     if v is not None and v == ver and t != tag), None)
        if twin is not None:
            raise VersionConflictError(
                f"{target.repo_url}:{twin} is the same version as {version} (versions that differ only "
                "in build metadata have the same precedence)", hint="publish and push a new version number")

    #: the second read-back waits this many times as long as our manifest PUT took (at most SETTLE_MAX s)
    SETTLE = 2.0
    SETTLE_MAX = 5.0

    def _read_back(self, c: OciClient, target: OciRef, tag: str, digest: str, *, settle: float) -> None:
        """After this push's manifest PUT: the tag must name it. Another push of this version
        whose PUT landed after ours holds the tag now, and this push is told so, not "pushed".
        Read at once, and again after about twice as long as our PUT took (``settle``): a
        concurrent PUT already on its way when ours landed (the registry handles both at once)
        has landed by then too."""
        self._tag_names(c, target, tag, digest)
        time.sleep(min(self.SETTLE * settle, self.SETTLE_MAX))
        self._tag_names(c, target, tag, digest)

    @staticmethod
    def _tag_names(c: OciClient, target: OciRef, tag: str, digest: str) -> None:
        from .client import OciUnavailableError

        where = f"{target.repo_url}:{tag}"
        try:
            now = c.head_manifest(target.repo, tag)
        except OciUnavailableError as exc:
            raise OciUnavailableError(f"{where}: the manifest ({digest[:19]}) was written, but the tag could not be "
                                      f"read back to check that no other push replaced it ({exc})",
                                      hint=f"check what the tag holds ('adapterhub pull {where}'), or push "
                                           "again") from exc
        if now == digest:
            return
        if now is None:
            raise VersionConflictError(f"{where} is gone right after this push tagged it ({digest[:19]}): deleted "
                                       "meanwhile; the manifest is in the repository untagged",
                                       hint="push again, or ask who deletes tags in that repository")
        raise VersionConflictError(
            f"{where} holds other content ({now[:19]}, not {digest[:19]}): another push of this version wrote the "
            "tag at the same time, after this one; this push's manifest is in the repository untagged",
            hint=f"versions are immutable; pull {where} to see what it holds, and publish and push a new version")

    def _push_files(self, c: OciClient, target: OciRef, registry: Any, manifest: Manifest) -> None:
        blobs = registry.blobs
        path_of = getattr(blobs, "path", None)  # a local store: upload from the blob itself (hashed on the way)
        with tempfile.TemporaryDirectory(prefix="adapterhub-oci-push-") as tmp:
            for f in manifest.files:
                digest = "sha256:" + f.sha256
                if c.has_blob(target.repo, digest):
                    continue
                src = Path(path_of(f.sha256)) if callable(path_of) else None
                if src is None or not src.is_file():
                    src = Path(tmp) / f.sha256
                    with open(src, "wb") as out:
                        blobs.copy_verified(f.sha256, out)
                c.push_blob(target.repo, digest, f.size, src, missing=True)

    def _push_signatures(self, c: OciClient, target: OciRef, digest: str, sigs: list[tuple[str, str]]) -> int:
        """Add this registry's signature bundles to the ``sha256-HEX.sig`` artifact (kept: what
        is there already). A tag there that is not our artifact (cosign's own) is left alone,
        with a warning: 0 pushed."""
        from .client import sha256_digest

        tag = signature_tag(digest)
        have = self._signature_files(c, target, tag)
        if have is None:
            warnings.warn(f"{target.repo_url}:{tag} holds another tool's signature artifact (cosign?); it is left "
                          "as it is and this version's signatures were not pushed", UserWarning, stacklevel=3)
            return 0
        texts = {t for _, t in have}
        merged = list(have)
        names = {n for n, _ in have}
        for name, text in sigs:
            if text in texts:
                continue
            i = 1
            while name in names:  # another signer's file by that name: keep both
                name, i = f"model.pushed-{i}.sig", i + 1
            merged.append((name, text))
            names.add(name)
        if len(merged) > len(have):
            layers = []
            for name, text in merged:
                raw = text.encode("utf-8")
                c.push_blob(target.repo, sha256_digest(raw), len(raw), raw)
                layers.append({"mediaType": SIG_TYPE, "digest": sha256_digest(raw), "size": len(raw),
                               "annotations": {TITLE: name}})
            c.push_blob(target.repo, sha256_digest(EMPTY), len(EMPTY), EMPTY)
            doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIG_ARTIFACT_TYPE,
                   "config": {"mediaType": EMPTY_TYPE, "digest": sha256_digest(EMPTY), "size": len(EMPTY)},
                   "layers": layers, "annotations": {ANN + "signed.digest": digest}}
            c.put_manifest(target.repo, tag, canonical_json(doc))
        return len(sigs)

    def _signature_files(self, c: OciClient, ref: OciRef, tag: str) -> list[tuple[str, str]] | None:
        """(file name, bundle text) of our signature artifact at ``tag``, each layer verified;
        empty when there is none, None when the tag holds another tool's artifact (cosign's)."""
        from ..signing.bundle import is_signature_file

        got = c.get_manifest(ref.repo, tag)
        if got is None:
            return []
        what = f"{ref.repo_url}:{tag}"
        doc = parse_oci(got[0], what)
        if doc.get("artifactType") != SIG_ARTIFACT_TYPE:
            return None
        out = []
        for title, digest, size in artifact_layers(doc, what):
            if not is_signature_file(title) or size > SIG_LIMIT:
                continue
            out.append((title, c.fetch_small(ref.repo, digest, SIG_LIMIT).decode("utf-8", errors="replace")))
        return out

    # ------------------------------------------------------------------ pull

    def pull(self, registry: Any, ref: str, dest: str | os.PathLike[str] | None = None, *, base: Any = None,
             overwrite: bool = False, name: str | None = None, require_signed: Any = None) -> Any:
        """Fetch, verify and record a version; write it to ``dest`` too. Its signatures, and a
        signing policy in force (``require_signed`` adds to it), are checked before any layer
        is fetched: a refused version leaves nothing recorded and no blob stored."""
        r = parse_oci_ref(ref)
        if base is not None:
            raise AdapterHubError(f"{r}: base=PATH does not apply: an OCI artifact carries its manifest and pin",
                                  hint="omit base=PATH")
        if dest is not None:  # before anything is fetched or recorded, not after
            from ..atomic_dir import check_destination

            check_destination(Path(dest), overwrite)
        with self._client(r) as c:
            reference, tag, got = self._select(c, r)
            got = got or c.get_manifest(r.repo, reference)
            if got is None:
                raise self._not_found(c, r, reference)
            body, digest = got
            what = f"{r.repo_url}@{digest[:19]}"
            doc = parse_oci(body, what)
            cfg = doc["config"]
            if cfg.get("mediaType") != CONFIG_TYPE or not isinstance(cfg.get("digest"), str):
                raise NotFoundError(f"{r}{f' (tag {tag})' if tag and tag != r.tag else ''} is not an adapter "
                                    "pushed by adapterhub (config type "
                                    f"{cfg.get('mediaType')!r}, not {CONFIG_TYPE})")
            manifest = config_manifest(c.fetch_small(r.repo, cfg["digest"], CONFIG_LIMIT), what)
            if tag is not None and tag_version(tag) is not None and str(tag_version(tag)) != manifest.version:
                raise IntegrityError(f"{r}: tag {tag} holds the manifest of version {manifest.version}",
                                     hint=DISTRUST)
            own = registry._existing_digest(manifest.name, manifest.version) == manifest.digest
            check_pull_name(registry, str(r), r.repo_url, manifest, name, own=own)
            layers = {t: (d, s) for t, d, s in artifact_layers(doc, what)}
            listed = {f.path: ("sha256:" + f.sha256, f.size) for f in manifest.files}
            if layers != listed:
                raise IntegrityError(f"{what}: the layers do not match the files its manifest lists; nothing written",
                                     hint="push it again with 'adapterhub push'")
            found = self._signature_files(c, r, signature_tag(digest)) or []  # another tool's: not ours to read
            registry.check_incoming_signatures(manifest, found, require_signed)  # refused before anything is stored
            receive = getattr(registry.blobs, "receive", None)
            fresh: set[str] = set()
            if own and callable(getattr(registry.blobs, "path", None)) and \
                    all(registry.blobs.verify(f.sha256) is None for f in manifest.files):
                # recorded here, its blobs in the local store re-hashed intact: nothing to download,
                # but every check a first pull makes (the pin against a base known here since)
                self._check_files(registry, r, manifest, {f.path: Path(registry.blobs.path(f.sha256))
                                                          for f in manifest.files}, "", scan=False)
                fresh = {f.sha256 for f in manifest.files}  # just re-hashed: ``dest`` needs no third pass
            elif callable(receive):  # a local store: each layer is hashed once, as it arrives, and stored by rename
                self._receive(c, r, registry, manifest, listed, receive, origin=f"{r.repo_url}@{digest}",
                              scan=dest is None)
                fresh = {f.sha256 for f in manifest.files}
            else:
                with tempfile.TemporaryDirectory(prefix="adapterhub-oci-pull-") as tmp:
                    sources = {}
                    for path, (ldigest, size) in listed.items():
                        out = Path(tmp) / path
                        with open(out, "xb") as fh:
                            c.fetch_blob(r.repo, ldigest, fh, size=size)
                        sources[path] = out
                    reqs = self._check_files(registry, r, manifest, sources, tmp, scan=dest is None)
                    registry.import_version(manifest, sources, origin=f"{r.repo_url}@{digest}", requirements=reqs)
        got_ref = f"{manifest.name}@{manifest.version}"
        if found:
            registry.import_signatures(got_ref, found)
        if dest is not None:
            registry.pull(got_ref, dest, overwrite=overwrite, **({"fresh": fresh} if fresh else {}))
        return registry.show(got_ref)

    def _receive(self, c: OciClient, r: OciRef, registry: Any, manifest: Manifest,
                 listed: dict[str, tuple[str, int]], receive: Callable[..., Any], *, origin: str,
                 scan: bool) -> None:
        """Stream each layer into the blob store's staging area (verified against its digest
        as it arrives), check the files from those copies and record the version, which
        stores each copy by a rename; whatever fails, no staged copy is left behind."""
        staged: dict[str, Any] = {}
        try:
            for path, (ldigest, size) in listed.items():
                staged[path] = receive(lambda fh, d=ldigest, n=size: c.fetch_blob(r.repo, d, fh, size=n),
                                       ldigest.removeprefix("sha256:"), size)
            by_inode = {os.stat(s.path).st_ino: s for s in staged.values()}
            reqs = self._check_files(registry, r, manifest, {p: s.path for p, s in staged.items()}, "", scan=scan,
                              stage=lambda f: by_inode[os.fstat(f.fileno()).st_ino])  # the copies themselves
            registry.import_version(manifest, staged, origin=origin, requirements=reqs)
        finally:
            for s in staged.values():
                if s.path.exists():  # not stored: a failure, or a blob the store held already
                    registry.blobs.discard(s)

    @staticmethod
    def _check_files(registry: Any, r: OciRef, manifest: Manifest, sources: dict[str, Path], tmp: str, *,
                     scan: bool, stage: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The files are the adapter the manifest describes, and fit the base it pins where this
        registry knows that base (as a Hub pull checks); NaN/Inf weights are imported with a
        warning (``scan``; with a destination, the directory's write warns instead)."""
        from ..adapter_files import NonFiniteWarning, nonfinite_message
        from ..hub_checks import check_claimed_base, check_method_as_claimed
        from ..methods.base import refines, tightened

        with registry.pack_files(sources, root=tmp or None, stage=stage) as pkg:
            if not refines(pkg.requirements, manifest.requirements):
                raise IntegrityError(f"{r}: the manifest's requirements do not match its adapter files",
                                     hint=DISTRUST)
            check_method_as_claimed(r, manifest, pkg)
            check_claimed_base(r, manifest, pkg, registry)  # a pin to a base known here: the files must fit it
            bad = pkg.nonfinite() if scan else []
            if bad:
                warnings.warn(f"{r}: " + nonfinite_message("adapter_model.safetensors", bad)
                              + "; a deployment will refuse to attach it", NonFiniteWarning, stacklevel=4)
            return tightened(manifest.requirements, pkg.requirements)

    # ------------------------------------------------------------------ resolve

    def resolve(self, base: Any, *, task: str | None = None, author: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
        """Versions in this repository for a base, newest first, from each tag's manifest
        annotations (our manifest, the config blob, only where they are missing; never a
        layer): exact (same fingerprint), structural (same arch signature), incompatible (and
        so where the manifest's requirements do not fit a base given with its shapes)."""
        from ..methods.base import check_requirements
        from ..resolving import EXACT_WHY, NO_FP_WHY

        if self.url is None:
            raise NotFoundError("resolve needs the repository: oci://HOST/REPOSITORY")
        r = parse_oci_ref(self.url)
        if r.tag or r.digest or r.spec:
            raise NotFoundError(f"resolve against {self.url}: give the repository only (oci://HOST/REPOSITORY); "
                                "every version there is listed with its verdict")
        fp = base if isinstance(base, str) else base.digest
        arch = None if isinstance(base, str) else base.arch_signature
        out: list[dict[str, Any]] = []
        with self._client(r) as c:
            versions = self._tag_versions(c, r)
            if not versions and not [t for t in c.tags(r.repo) if not t.startswith("sha256-")]:
                raise self._not_found(c, r, "")  # no such repository (or nothing pushed yet): as pull says
            for v, tag in sorted(versions.items(), reverse=True):
                got = c.get_manifest(r.repo, tag)
                if got is None:
                    continue
                what = f"{r.repo_url}:{tag}"
                doc = parse_oci(got[0], what)
                notes = doc.get("annotations") or {}
                if doc.get("artifactType") != ARTIFACT_TYPE and (doc["config"].get("mediaType") != CONFIG_TYPE):
                    continue
                info = self._describe(c, r, doc, notes)  # the annotations: a cheap first filter only
                if task and task not in info["tasks"]:
                    continue
                if author and not info["name"].lower().startswith(author.lower() + "/"):
                    continue
                try:  # the verdict from the manifest a pull records (the config blob), never the annotations
                    info = self._describe(c, r, doc, {})
                except AdapterHubError:
                    continue  # not an adapter a pull would accept
                if info["version"] != str(v) or (task and task not in info["tasks"]) or \
                        (author and not info["name"].lower().startswith(author.lower() + "/")):
                    continue  # a tag holding another version's manifest, or annotations that lied
                pinned, parch = info["fingerprint"], info["arch"]
                if not isinstance(base, str):  # a base with its shapes: the verdicts local resolve gives
                    misfit = check_requirements(info["requirements"], base)
                    if misfit:
                        verdict, reasons = "incompatible", misfit
                    elif pinned and pinned == fp:
                        verdict, reasons = "exact", []
                    else:
                        verdict, reasons = "structural", list(EXACT_WHY if pinned else NO_FP_WHY)
                elif pinned and pinned == fp:  # a bare fingerprint: no shapes to check the files against
                    verdict, reasons = "exact", []
                elif arch and parch == arch:
                    verdict, reasons = "structural", ["base weights differ from the ones the adapter was trained on",
                                                      "the adapter's base has the same architecture signature"]
                else:
                    verdict = "incompatible"
                    reasons = [f"pinned to base {pinned[:12]}" + (f" (architecture {parch[:12]})" if parch else "")
                               if pinned else "not pinned to a base"]
                out.append({"name": f"{r.repo_url}:{tag}", "repo": f"{r.host}/{r.repo}", "version": str(v),
                            "digest": got[1], "adapter": info["name"], "adapter_digest": info["adapter_digest"],
                            "verdict": verdict, "reasons": reasons, "tasks": info["tasks"], "method": info["method"]})
        order = {"exact": 0, "structural": 1, "incompatible": 2}
        out.sort(key=lambda h: order[h["verdict"]])
        return out[:limit]

    @staticmethod
    def _describe(c: OciClient, r: OciRef, doc: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
        if ANN + "name" in notes:
            return {"name": str(notes.get(ANN + "name")), "fingerprint": str(notes.get(ANN + "base.fingerprint") or ""),
                    "arch": str(notes.get(ANN + "base.arch") or ""), "method": str(notes.get(ANN + "method") or ""),
                    "tasks": [t for t in str(notes.get(ANN + "tasks") or "").split(",") if t]}
        digest = doc["config"].get("digest")
        if not isinstance(digest, str):
            raise IntegrityError(f"{r}: the artifact's config has no digest")
        m = config_manifest(c.fetch_small(r.repo, digest, CONFIG_LIMIT), f"{r}")
        return {"name": m.name, "fingerprint": m.base.fingerprint or "", "arch": m.base.arch_signature or "",
                "method": m.method.get("type", ""), "tasks": list(m.tasks), "version": m.version,
                "requirements": m.requirements, "adapter_digest": m.digest}

    # ------------------------------------------------------------------ bases

    def identify_base(self, registry: Any, url: str) -> Any:
        raise NotFoundError(f"{url}: an OCI repository holds adapters here, not base models",
                            hint="give the base as a directory, a fingerprint or hf://ORG/MODEL")

    def fetch_base(self, url: str) -> Path:
        raise NotFoundError(f"{url}: an OCI repository holds adapters here, not base models",
                            hint="give the base as a directory, a fingerprint or hf://ORG/MODEL")

    def model_id(self, url: str) -> str:
        r = parse_oci_ref(url)
        return f"{r.host}/{r.repo}"


@hookimpl
def register_remotes(register: Callable[[str, Callable[[str], Any]], None]) -> None:
    register("oci", lambda url: OciRemote(url))


if TYPE_CHECKING:  # mypy checks OciRemote against the protocol
    _remote: type[Remote] = OciRemote

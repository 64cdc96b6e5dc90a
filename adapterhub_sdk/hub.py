"""The Hugging Face Hub as a registry.

A version is pushed as one commit that states its parent (so a concurrent push fails
instead of overwriting) and tagged with its version. The repo holds the PEFT files, the
manifest (``adapterhub_manifest.json``) and a model card the Hub understands. A pull
downloads through huggingface_hub's cache, verifies every file against the manifest and
records the version in the local registry, so it resolves offline afterwards. Tokens,
private repos and endpoints follow huggingface_hub's usual configuration (``HF_TOKEN``,
the login cache, ``HF_ENDPOINT``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapter_files import NonFiniteWarning, nonfinite_message
from .errors import DISTRUST, AdapterHubError, IntegrityError, NotFoundError, VersionConflictError
from .fingerprint import BaseFingerprint
from .hub_cache import _cached_file, _check_cached_files, _snapshot_files
from .hub_checks import (
    check_claimed_base,
    check_method_as_claimed,
    read_manifest,
    refuse_missing,
)
from .layouts import AmbiguousCheckpointError
from .manifest import BaseRef, Manifest
from .methods.base import tightened
from .names import validate_name
from .signing.bundle import is_signature_file
from .versions import Version, VersionSpec

if TYPE_CHECKING:
    from .package import AdapterPackage

SCHEME = "hf://"
MANIFEST = "adapterhub_manifest.json"
CARD_KEEP = "adapterhub/README.md"  # where a package's own README.md lives in the repo
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
_AMBIGUOUS = "ambiguous:"
_COMMIT = re.compile(r"[0-9a-f]{40}", re.ASCII)  # a full commit sha: a base model's revision


class HubUnavailableError(AdapterHubError, ConnectionError):
    """The Hub cannot be reached (offline mode, no network, server error)."""

    hint = "local commands keep working; retry when the Hub is reachable (unset HF_HUB_OFFLINE if set)"


@dataclass(frozen=True)
class HubRef:
    repo: str
    spec: str | None = None

    def __str__(self) -> str:
        return SCHEME + self.repo + (f"@{self.spec}" if self.spec else "")


def is_hub_ref(text: str) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse_hub_ref(text: str) -> HubRef:
    """``hf://ORG/REPO[@SPEC]``."""
    if not is_hub_ref(text):
        raise NotFoundError(f"{text!r} is not a Hub reference (hf://ORG/REPO[@VERSION])")
    body = text[len(SCHEME):]
    repo, sep, spec = body.partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo or "--" in repo:
        raise NotFoundError(f"{text!r}: {repo!r} is not a Hub repo id (ORG/REPO)")
    if sep:
        if not spec:
            raise NotFoundError(f"{text!r} has an empty version after '@'")
        if not _COMMIT.fullmatch(spec):  # hf://ORG/MODEL@<commit> names a base revision
            VersionSpec.parse(spec)
    return HubRef(repo, spec if sep else None)


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's errors into one-line adapterhub errors."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.OfflineModeIsEnabled as exc:
        raise HubUnavailableError(f"{what}: the Hub is not reachable because HF_HUB_OFFLINE is set") from exc
    except hf.RepositoryNotFoundError as exc:
        raise NotFoundError(f"{what}: repository not found on the Hub (or private without a token)",
                            hint="check the repo id; log in with 'hf auth login' or set HF_TOKEN") from exc
    except hf.RevisionNotFoundError as exc:
        raise NotFoundError(f"{what}: revision not found on the Hub") from exc
    except (hf.EntryNotFoundError, hf.LocalEntryNotFoundError) as exc:
        if "offline" in str(exc).lower() or "connection" in str(exc).lower():
            raise HubUnavailableError(f"{what}: the Hub is not reachable") from exc
        raise NotFoundError(f"{what}: file not found on the Hub ({exc})") from exc
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (409, 412):
            raise AdapterHubError(f"{what}: the repo changed while pushing (another push won the race)",
                                  hint="pull the repo's new state and push again") from exc
        if status is not None and status >= 500:
            raise HubUnavailableError(f"{what}: the Hub answered {status}") from exc
        raise AdapterHubError(f"{what}: the Hub refused the request ({status}): {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:  # a reply that is not the JSON the Hub API sends (json.JSONDecodeError)
        if type(exc).__name__ != "JSONDecodeError":
            raise
        raise HubUnavailableError(f"{what}: the server's answer is not a Hub API response ({exc})",
                                  hint="check HF_ENDPOINT: it must point at the Hugging Face Hub or a "
                                       "server that implements its API") from exc
    except Exception as exc:  # httpx connection errors and friends
        name = type(exc).__name__
        if any(k in name for k in ("Connect", "Timeout", "Network", "Protocol", "RemoteProtocol")):
            raise HubUnavailableError(f"{what}: the Hub is not reachable ({name})") from exc
        raise


def _warn_nonfinite(ref: Any, pkg: AdapterPackage) -> None:
    """A Hub version whose weights hold NaN or Inf is imported (attach refuses it), with a warning."""
    found = pkg.nonfinite()
    if found:
        warnings.warn(f"{ref}: " + nonfinite_message("adapter_model.safetensors", found)
                      + "; a deployment will refuse to attach it", NonFiniteWarning, stacklevel=3)


def model_card(manifest: Manifest, repo: str) -> str:
    """README.md with the metadata the Hub reads: library, base model, relation, tags."""
    tags = ["adapterhub", "peft", manifest.method.get("type", "")]
    variant = manifest.method.get("variant")
    if variant and variant not in tags:
        tags.append(variant)
    tags += list(manifest.tasks)
    if manifest.base.fingerprint:
        tags.append(f"base_fingerprint:{manifest.base.fingerprint}")
    if manifest.base.arch_signature:
        tags.append(f"base_arch:{manifest.base.arch_signature}")
    lines = ["---", "library_name: peft"]
    if manifest.base.name and _REPO_ID.fullmatch(manifest.base.name) and not os.path.exists(manifest.base.name):
        lines.append(f"base_model: {json.dumps(manifest.base.name)}")  # only a Hub id; never a local path
        lines.append("base_model_relation: adapter")
    if manifest.license:
        lines.append(f"license: {json.dumps(manifest.license)}")
    lines.append("tags:")
    lines += [f"- {json.dumps(t)}" for t in tags if t]
    lines += ["---", "", f"# {repo}", ""]
    if manifest.description:
        lines += [manifest.description, ""]
    lines += [
        f"A {manifest.method.get('variant') or manifest.method.get('type')} adapter published with "
        "[adapterhub_sdk](https://pypi.org/project/adapterhub-sdk/).", "",
        "| | |", "|---|---|",
        f"| version | `{manifest.version}` |",
        f"| manifest digest | `{manifest.digest}` |",
        f"| base model | `{manifest.base.name or 'unknown'}` |",
        f"| base fingerprint | `{manifest.base.fingerprint or 'not pinned'}` |",
        f"| tasks | {', '.join(manifest.tasks) or '-'} |", "",
        f"Pull and verify: `adapterhub pull hf://{repo}@{manifest.version}`", "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class PushResult:
    repo: str
    version: str
    commit: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "version": self.version, "commit": self.commit, "url": self.url}


_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _loaded_files(files: dict[str, str]) -> dict[str, str]:
    """Of a repo's top-level safetensors, the ones from_pretrained loads (the files a local
    fingerprint records, :mod:`adapterhub_sdk.layouts`): ``model.safetensors`` where there is
    one, else the standard shards; other files beside them (``consolidated.safetensors``,
    ``model.fp16.safetensors``) are not loaded and do not identify the base."""
    if "model.safetensors" in files:
        return {"model.safetensors": files["model.safetensors"]}
    shards = {k: v for k, v in files.items() if _SHARD.fullmatch(k)}
    return shards or files


class HubClient:
    """Push, pull and resolve adapters on a Hub endpoint (default: huggingface_hub's)."""

    def __init__(self, *, endpoint: str | None = None, token: str | None = None):
        from huggingface_hub import HfApi

        self.endpoint = endpoint
        self.token = token
        self.api = HfApi(endpoint=endpoint, token=token)

    # ------------------------------------------------------------------ versions

    def versions(self, repo: str) -> dict[Version, str]:
        """Semantic-version tags of ``repo`` and the commits they point at (for a version
        tagged twice, as ``1.0.0`` and ``v1.0.0``, on different commits: a marker starting
        with ``ambiguous:`` that naming it refuses)."""
        with _hub_errors(f"hf://{repo}"):
            refs = self.api.list_repo_refs(repo)
        out: dict[Version, str] = {}
        seen: dict[Version, list[tuple[str, str]]] = {}
        for tag in refs.tags:
            try:
                v = Version.parse(tag.name.removeprefix("v"))
            except AdapterHubError:
                continue
            seen.setdefault(v, []).append((tag.name, tag.target_commit))
        for v, tags in seen.items():
            commits = {c for _, c in tags}
            # '1.0.0' and 'v1.0.0' on different commits: neither may win silently
            out[v] = tags[0][1] if len(commits) == 1 else _AMBIGUOUS + ",".join(
                f"{name}={commit[:12]}" for name, commit in sorted(tags))
        return out

    def _select(self, ref: HubRef) -> tuple[Version | None, str]:
        if ref.spec and _COMMIT.fullmatch(ref.spec):
            raise NotFoundError(f"{ref}: {ref.spec[:12]} is not a version; adapters are pulled by version tag "
                                "or range (hf://ORG/REPO@1.2.0, @^1, @latest)")
        versions = self.versions(ref.repo)
        spec = VersionSpec.parse(ref.spec or "latest")
        if spec.kind == "alias":
            raise NotFoundError(f"{ref}: aliases are not stored on the Hub; use a version or a range")
        if versions:
            chosen: Version | None = None
            if spec.kind == "exact":
                chosen = next((v for v in versions if spec.pins(v)), None)
            else:
                chosen = spec.best(versions)
            if chosen is not None:
                commit = versions[chosen]
                if commit.startswith(_AMBIGUOUS):
                    raise NotFoundError(
                        f"{ref}: version {chosen} has tags on different commits "
                        f"({commit.removeprefix(_AMBIGUOUS).replace(',', ', ')}); which one is {chosen} is "
                        "not decidable", hint="delete the wrong tag on the Hub, or ask the repo's owner to")
                return chosen, commit
            raise NotFoundError(f"{ref}: no version tag matches {spec.text!r} "
                                f"(tags: {', '.join(str(v) for v in sorted(versions))})")
        if ref.spec not in (None, "latest"):
            raise NotFoundError(f"{ref}: the repo has no version tags; pull it without a version")
        with _hub_errors(str(ref)):
            info = self.api.model_info(ref.repo, revision="main")
        return None, str(info.sha)

    # ------------------------------------------------------------------ push

    def push(self, registry: Any, ref: str, to: str, *, private: bool | None = None) -> PushResult:
        """Push ``name@version`` from ``registry`` to ``hf://ORG/REPO`` as one commit + tag."""
        from huggingface_hub import CommitOperationAdd

        target = parse_hub_ref(to)
        info = registry.show(ref)
        manifest: Manifest = info.manifest
        if Version.parse(manifest.version) in self.versions_or_empty(target.repo, create=True, private=private):
            raise AdapterHubError(f"hf://{target.repo} already has version {manifest.version}",
                                  hint="versions are immutable; publish and push a new version")
        with tempfile.TemporaryDirectory(prefix="adapterhub-push-") as tmp:
            local = registry.pull(f"{info.name}@{info.version}", Path(tmp) / "pkg")
            listed = {f.path for f in manifest.files}
            ops = []
            for f in manifest.files:
                dest = CARD_KEEP if f.path == "README.md" else f.path
                ops.append(CommitOperationAdd(path_in_repo=dest, path_or_fileobj=str(local / f.path)))
            ops.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=manifest.to_json()))
            ops += [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))  # model.sig, model.NAME.sig
                    for p in sorted(local.iterdir()) if is_signature_file(p.name) and p.name not in listed]
            ops.append(CommitOperationAdd(path_in_repo="README.md",
                                          path_or_fileobj=model_card(manifest, target.repo).encode()))
            with _hub_errors(f"push to hf://{target.repo}"):
                head = self.api.model_info(target.repo, revision="main").sha
                commit = self.api.create_commit(
                    target.repo, ops, commit_message=f"{manifest.name} {manifest.version}",
                    commit_description=f"adapterhub manifest {manifest.digest}", parent_commit=head)
                oid = commit.oid
                self.api.create_tag(target.repo, tag=manifest.version, revision=oid,
                                    tag_message=f"{manifest.name} {manifest.version} {manifest.digest}")
        url = getattr(commit, "commit_url", None) or f"hf://{target.repo}@{manifest.version}"
        return PushResult(target.repo, manifest.version, oid, str(url))

    def versions_or_empty(self, repo: str, *, create: bool, private: bool | None) -> dict[Version, str]:
        from huggingface_hub import errors as hf

        try:
            return self.versions(repo)
        except NotFoundError as exc:
            if not create or not isinstance(exc.__cause__, hf.RepositoryNotFoundError):
                raise
        with _hub_errors(f"create hf://{repo}"):
            self.api.create_repo(repo, private=private, exist_ok=True)
        return {}

    # ------------------------------------------------------------------ pull

    def download(self, ref: HubRef) -> tuple[Version | None, str, Path]:
        """(version, commit, snapshot folder in the huggingface_hub cache)."""
        from huggingface_hub import snapshot_download

        version, commit = self._select(ref)
        with _hub_errors(str(ref)):
            path = snapshot_download(ref.repo, revision=commit, endpoint=self.endpoint, token=self.token)
        return version, commit, Path(path)

    def pull(self, registry: Any, text: str, *, base: Any = None, dest: str | os.PathLike[str] | None = None,
             overwrite: bool = False, name: str | None = None, require_signed: Any = None) -> Any:
        """Download, verify and record a Hub version in ``registry``; write it to ``dest`` too.
        Returns the recorded VersionInfo. A repo whose manifest names another adapter than
        the repo (``acme/sentiment`` pushed to ``hf://team/sentiment-lora``) adds to that name
        only if the name is new here or all its versions came from this same repo, unless
        ``name`` accepts it explicitly: a repo cannot slip versions into a name it does not own.
        Its signatures, and a signing policy in force (``require_signed`` adds to it), are
        checked before anything is recorded."""
        from .names import name_key

        ref = parse_hub_ref(text)
        version, commit, snap = self.download(ref)
        if not (snap / MANIFEST).is_file():
            _check_cached_files(ref, snap)  # nothing else checks the bytes of a manifest-less repo
        try:
            manifest, reqs = self._manifest_for(ref, version, commit, snap, registry, base)
        except AdapterHubError:
            _check_cached_files(ref, snap)  # a damaged cache gets its own message, with the way out
            raise
        if base is not None and (snap / MANIFEST).is_file():
            bfp = registry._as_base(base)
            pinned = manifest.base.fingerprint
            got = bfp.digest if isinstance(bfp, BaseFingerprint) else str(bfp)
            if pinned != got:
                raise AdapterHubError(
                    f"{ref}: base=PATH does not apply: the repo's manifest "
                    + (f"pins base {pinned[:12]}" if pinned else "is not pinned to a base")
                    + (f", not {got[:12]}" if pinned else " and a published manifest never changes"),
                    hint="omit base=PATH (it pins repos that PEFT pushed without a manifest)")
        from .remote_names import check_pull_name

        here = f"hf://{ref.repo}"
        check_pull_name(registry, str(ref), here, manifest, name,
                        own=name_key(manifest.name) == name_key(ref.repo))
        sources = {f.path: _cached_file(snap, CARD_KEEP if f.path == "README.md" and (snap / MANIFEST).is_file()
                                        else f.path) or snap / f.path
                   for f in manifest.files}
        listed = {f.path for f in manifest.files}
        found = [(n, c.read_text("utf-8", errors="replace")) for n in sorted(p.name for p in snap.iterdir())
                 if is_signature_file(n) and n not in listed and (c := _cached_file(snap, n)) is not None]
        # what the signatures and a policy in force would refuse, refused before anything is recorded
        registry.check_incoming_signatures(manifest, found, require_signed)
        try:
            registry.import_version(manifest, sources, origin=f"{here}@{commit}", requirements=reqs)
        except IntegrityError:
            _check_cached_files(ref, snap)  # files that differ from the manifest: the cache, or the repo?
            raise
        except VersionConflictError:
            before = registry.show(f"{manifest.name}@{manifest.version}")
            if base is not None and not before.base_fingerprint and manifest.base.fingerprint:
                raise VersionConflictError(
                    f"{manifest.name}@{manifest.version} was imported from {ref.repo} before without a base, and "
                    "versions never change, so it stays unpinned",
                    hint="resolving against a base (base=PATH) still gives it a structural verdict; to pin a base, "
                         "publish its files under a new version with base=PATH") from None
            raise
        if found:  # checked against the files the manifest lists (the repo's README may be a card)
            registry.import_signatures(f"{manifest.name}@{manifest.version}", found)
        if dest is not None:
            registry.pull(f"{manifest.name}@{manifest.version}", dest, overwrite=overwrite)
        return registry.show(f"{manifest.name}@{manifest.version}")

    def _manifest_for(self, ref: HubRef, version: Version | None, commit: str, snap: Path, registry: Any,
                      base: Any) -> tuple[Manifest, dict[str, Any] | None]:
        raw = _cached_file(snap, MANIFEST)
        if raw is not None:
            manifest = read_manifest(ref, raw, snap / MANIFEST)
            if version is not None and Version.parse(manifest.version) != version:
                raise IntegrityError(f"{ref}: tag {version} holds the manifest of version {manifest.version}",
                                     hint=DISTRUST)
            bad = []
            found = {}
            for f in manifest.files:  # the package as published: README.md back in place
                local = _cached_file(snap, CARD_KEEP if f.path == "README.md" else f.path)
                if local is None:
                    bad.append(f.path)
                else:
                    found[f.path] = local
            refuse_missing(ref, bad)
            with registry.pack_files(found, root=snap) as pkg:
                if not _consistent(pkg.requirements, manifest.requirements):
                    raise IntegrityError(f"{ref}: the manifest's requirements do not match its adapter files",
                                         hint=DISTRUST)
                check_method_as_claimed(ref, manifest, pkg)
                check_claimed_base(ref, manifest, pkg, registry)
                _warn_nonfinite(ref, pkg)
                reqs = tightened(manifest.requirements, pkg.requirements)  # never looser than the files
            return manifest, reqs
        # a repo PEFT pushed without our manifest: build one on the way
        with registry.pack_files(_snapshot_files(ref, snap), root=snap, select=True) as pkg:
            _warn_nonfinite(ref, pkg)
            name = ref.repo if _valid_name(ref.repo) else None
            if name is None:
                raise NotFoundError(f"{ref}: {ref.repo!r} cannot be used as an adapter name")
            base_ref = BaseRef(pkg.base_name, pkg.config.get("revision"))
            if base is not None:
                bfp = registry._as_base(base)
                if isinstance(bfp, BaseFingerprint):
                    pkg.require_base(bfp)
                    base_ref = BaseRef(pkg.base_name, pkg.config.get("revision"), bfp.digest, bfp.arch_signature)
            v = str(version) if version is not None else f"0.0.0-rev.g{commit[:12]}"
            return pkg.manifest(name=name, version=v, base=base_ref, tasks=(),
                                description=f"imported from hf://{ref.repo} at {commit}",
                                provenance={"source": f"hf://{ref.repo}", "commit": commit}), None

    # ------------------------------------------------------------------ bases

    def identify_base(self, registry: Any, repo: str, revision: str | None = None) -> BaseFingerprint:
        """A Hub base model's fingerprint from the Hub's file metadata (the LFS sha256 of each
        weight file in the repo tree, and the commit), without downloading weights. Known only once some
        machine sharing this registry has fingerprinted the same files."""
        with _hub_errors(f"hf://{repo}"):
            info = self.api.model_info(repo, revision=revision or "main")
            tree = list(self.api.list_repo_tree(repo, revision=str(info.sha)))
        files = {}
        names = {getattr(entry, "path", "") for entry in tree}
        if "adapter_config.json" in names and "config.json" in names:
            raise AmbiguousCheckpointError(
                f"hf://{repo} holds an adapter (adapter_config.json) beside the base weights: from_pretrained applies "
                "that adapter while loading, so the model is not the base its weight files are",
                hint="resolve against the base model's own repository")
        for entry in tree:
            path = getattr(entry, "path", "")
            lfs = getattr(entry, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            if sha is None and isinstance(lfs, dict):
                sha = lfs.get("sha256")
            if path.endswith(".safetensors") and "/" not in path and sha:
                files[path] = sha
        files = _loaded_files(files)
        found = registry.find_base(files=files or None, hub=(repo, str(info.sha)))
        if found is None:
            at = f"@{revision}" if revision else ""
            raise NotFoundError(
                f"base {repo}{at} (commit {str(info.sha)[:12]}) has not been fingerprinted with this registry",
                hint=f"fingerprint it once where it is downloaded: adapterhub fingerprint --register "
                     f"$(hf download --quiet {repo}{' --revision ' + revision if revision else ''})")
        registry.record_base_source(found, "hub", repo, str(info.sha))
        return found

    # ------------------------------------------------------------------ resolve

    def resolve(self, base: BaseFingerprint | str, *, task: str | None = None, author: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
        """Adapters on the Hub for a base: exact (tagged with its fingerprint) and
        structural (tagged with its arch signature), found through Hub tags."""
        fp = base if isinstance(base, str) else base.digest
        arch = None if isinstance(base, str) else base.arch_signature
        seen: dict[str, dict[str, Any]] = {}
        queries = [("exact", f"base_fingerprint:{fp}")]
        if arch:
            queries.append(("structural", f"base_arch:{arch}"))
        for verdict, tag in queries:
            filters = ["adapterhub", tag] + ([task] if task else [])
            with _hub_errors("Hub search"):
                models = list(self.api.list_models(filter=filters, author=author, limit=limit))
            for m in models:
                if m.id in seen:
                    continue
                reasons = [] if verdict == "exact" else [
                    "base weights differ from the ones the adapter was trained on",
                    "the adapter's base has the same architecture signature"]
                seen[m.id] = {"name": f"hf://{m.id}", "repo": m.id, "verdict": verdict, "reasons": reasons,
                              "tags": list(getattr(m, "tags", None) or [])}
        return list(seen.values())


def _valid_name(repo: str) -> bool:
    try:
        validate_name(repo)
        return True
    except AdapterHubError:
        return False


def _consistent(derived: dict[str, list[int | None]], claimed: dict[str, list[int | None]]) -> bool:
    """Every requirement derived from the files appears in the manifest, with the same
    known dimensions (a manifest pinned to a base may only be more precise)."""
    from .methods.base import refines

    return refines(derived, claimed)

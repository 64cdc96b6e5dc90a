"""Extension interfaces: what a blob store and a remote registry provide.

A leaf module: it imports nothing of ours at run time, so the core, the built-in plugins
and third-party plugins can all import it without a cycle. Plugins register
implementations by URL scheme (hooks ``register_storage`` and ``register_remotes``); the
core talks to them only through these protocols, never through a special case for a
scheme.

A blob store must provide :class:`BlobStorage`. Two capabilities are optional, each its
own protocol, checked with ``isinstance`` (the protocols are ``runtime_checkable``): a
store that lacks one is used without it, as the docs describe:

- :class:`StagingBlobStorage`: publish copies and hashes each file once (into a private
  staged copy) instead of hashing it and then copying it through ``put_file``;
- :class:`QuarantiningBlobStorage`: gc moves a blob aside before deleting it and asks the
  catalog again, so a version committed meanwhile keeps it; without it gc deletes
  directly (and a publish that reused the blob puts it back after its commit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .fingerprint import BaseFingerprint

__all__ = ["BlobStorage", "QuarantiningBlobStorage", "Remote", "StagedBlob", "StagingBlobStorage"]


@runtime_checkable
class BlobStorage(Protocol):
    """A content-addressed store of blobs named by their sha256 (64 lowercase hex digits)."""

    def put_file(self, source: str | os.PathLike[str] | BinaryIO, digest: str) -> int:
        """Store ``source`` under ``digest``; the bytes written (0 if already stored intact).
        IntegrityError, and nothing stored, if the bytes do not hash to ``digest``."""
        ...

    def copy_verified(self, digest: str, out: BinaryIO) -> int:
        """Stream a blob into ``out``; IntegrityError if its bytes no longer match."""
        ...

    def verify(self, digest: str) -> str | None:
        """None if the blob is intact, else what is wrong (``missing``, ``corrupt ...``)."""
        ...

    def size(self, digest: str) -> int:
        """Its size in bytes, 0 if absent."""
        ...

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest."""
        ...

    def age(self, digest: str) -> float:
        """Seconds since the blob was stored or last reused (gc's grace period)."""
        ...

    def delete(self, digest: str) -> int:
        """Remove it; the bytes freed."""
        ...

    def clean_temp(self, older_than: float, *, dry_run: bool = False) -> int:
        """Remove leftovers of interrupted writes older than ``older_than`` seconds; how many."""
        ...


class StagedBlob(Protocol):
    """A private, hashed copy made by :meth:`StagingBlobStorage.stage`."""

    path: Path
    sha256: str
    size: int


@runtime_checkable
class StagingBlobStorage(BlobStorage, Protocol):
    """A store that can take a private, hashed copy first and put it in place later."""

    def stage(self, source: str | os.PathLike[str] | BinaryIO) -> Any:
        """Copy ``source`` into a private temp file and hash the copy (a :class:`StagedBlob`)."""
        ...

    def put_staged(self, staged: Any) -> int:
        """Move a staged copy into place under its digest; the bytes written."""
        ...

    def discard(self, staged: Any) -> None:
        """Throw a staged copy away."""
        ...

    def holds(self, staged: Any) -> bool:
        """Whether the blob ``staged`` would write is stored intact (and refresh its age)."""
        ...

    def has(self, digest: str) -> bool:
        """Whether a blob is stored under ``digest``."""
        ...


@runtime_checkable
class QuarantiningBlobStorage(BlobStorage, Protocol):
    """A store that can move a blob out of its address and then keep or delete it."""

    def quarantine(self, digest: str) -> Any:
        """Move the blob aside (a publish looking for it now writes its own copy); a token
        for :meth:`release`, or None if it was not there."""
        ...

    def release(self, token: Any, digest: str, *, keep: bool) -> int:
        """Put the blob back (``keep``) or delete it; the bytes freed."""
        ...


@runtime_checkable
class OwnedBlobStorage(BlobStorage, Protocol):
    """A store that records which registry it belongs to (its catalog's id): gc deletes from
    a store only for the registry that owns it, since every blob no version of *its* catalog
    references looks unreferenced to another one."""

    def owner(self) -> str | None:
        """The id of the registry this store belongs to; None when none has claimed it."""
        ...

    def claim(self, owner: str, *, force: bool = False) -> str:
        """Record ``owner`` as this store's registry unless one is recorded already (``force``:
        replace it). Returns the owner recorded now."""
        ...


@runtime_checkable
class Remote(Protocol):
    """A remote registry, chosen by the scheme of its URLs (``hf://`` for the Hugging Face
    Hub; ``oci://`` for OCI registries). ``registry`` is the local
    :class:`~adapterhub_sdk.registry.Registry`, which a pull records versions in."""

    def push(self, registry: Any, ref: str, to: str, *, private: bool | None = None) -> Any:
        """Push the local version ``ref`` (``NS/NAME@VERSION``) to the remote URL ``to``.
        Returns a result with ``to_dict()`` and at least ``repo``, ``version`` and ``commit``."""
        ...

    def pull(self, registry: Any, ref: str, dest: str | os.PathLike[str] | None = None, *, base: Any = None,
             overwrite: bool = False, name: str | None = None) -> Any:
        """Download ``ref`` (a remote URL with an optional ``@SPEC``), verify it, record it in
        ``registry`` and, with ``dest``, write it there. Returns the recorded VersionInfo."""
        ...

    def versions(self, url: str) -> Mapping[Any, str]:
        """The versions at ``url``: :class:`~adapterhub_sdk.versions.Version` -> what identifies
        its content there (a commit, a digest)."""
        ...

    def resolve(self, base: BaseFingerprint | str, *, task: str | None = None, author: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
        """Adapters on the remote for a base (a fingerprint or a known base), each a dict with
        at least ``name`` (a URL ``pull`` accepts), ``verdict`` and ``reasons``."""
        ...

    def identify_base(self, registry: Any, url: str) -> BaseFingerprint:
        """The fingerprint of the base model at ``url``, from what ``registry`` knows of it
        (without downloading its weights where the remote can avoid it)."""
        ...

    def fetch_base(self, url: str) -> Path:
        """A local directory holding the files of the base model at ``url``."""
        ...

    def model_id(self, url: str) -> str:
        """The name the remote knows the model at ``url`` by (``ORG/MODEL`` on the Hub)."""
        ...

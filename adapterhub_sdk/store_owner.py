"""What the catalog and the blob store record about each other: the leases a publish in
progress holds on the blobs it is about to reference (gc keeps those), and which registry a
store belongs to (gc collects a store only for its own registry). Plain SQL through
:class:`adapterhub_sdk.catalog.Sql`, as every statement of the publish path."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .s3_errors import _absent, _precondition, _s3_errors
from .sqlrun import RowConflict

# --- blob leases ----------------------------------------------------------------------------

#: a lease older than this is a crashed publisher's, wherever it ran (one held by a process
#: that is gone from this machine is dead at once)
LEASE_SECONDS = 24 * 3600.0


def _start_time(pid: int | str) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime (the name may hold spaces)


def _machine() -> str:
    """This boot of this machine and this pid namespace: where a pid names one process."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot} {os.readlink('/proc/self/ns/pid')}"


def lease_holder() -> str:
    """Who holds a lease: ``BOOT PIDNS PID START`` on Linux (checkable on this machine), else
    ``pid PID`` (only expiry ends it)."""
    try:
        return f"{_machine()} {os.getpid()} {_start_time('self')}"
    except (OSError, IndexError):
        return f"pid {os.getpid()}"


def holder_gone(holder: str) -> bool:
    """Whether the process that took a lease is known to have ended: it ran on this machine
    (same boot and pid namespace) and its pid is now free or another process's."""
    try:
        here = _machine()
    except OSError:
        return False
    if not holder.startswith(here + " "):
        return False
    pid, _, start = holder[len(here) + 1:].partition(" ")
    try:
        os.kill(int(pid), 0)  # works where /proc hides other users' processes (hidepid)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        pass  # there (another user's), or not a pid we wrote
    try:
        return _start_time(int(pid)) != start  # the pid is another process's now
    except (OSError, IndexError, ValueError):
        return False  # hidden from us: taken for the holder


def take_lease(core: Any, digests: Iterable[str]) -> str | None:
    """Lease ``digests`` for a publish in progress, committed before it uploads any of them:
    gc keeps them until :func:`end_lease`. Returns the lease (None for no digests)."""
    shas = sorted(set(digests))
    if not shas:
        return None
    lease, holder = uuid.uuid4().hex, lease_holder()
    with core._sql(write=True) as q:
        now = q.now()
        q.many("INSERT INTO blob_leases (lease, sha256, holder, created_at) VALUES (?, ?, ?, ?)",
               [(lease, s, holder, now) for s in shas])
    return lease


def end_lease(core: Any, lease: str | None) -> None:
    """End a lease once its version is committed or its publish failed. A lease that cannot
    be removed (the database went away) only keeps its blobs until it expires."""
    if lease is None:
        return
    try:
        with core._sql(write=True) as q:
            if q.postgres:  # a removal lost in a server crash only expires later
                q.run("SET LOCAL synchronous_commit TO OFF")
            q.run("DELETE FROM blob_leases WHERE lease = ?", (lease,))
    except Exception:  # noqa: S110 - a publish's outcome never depends on it; it expires
        pass


# --- which blob store is whose --------------------------------------------------------------

REGISTRY_ID = "registry_id"


def registry_id(core: Any) -> str | None:
    """This registry's id (the catalog's, in ``settings``), made on first use; None for a
    registry this process cannot write that has none yet. A blob store records the id of the
    registry it belongs to, so that gc never deletes from another registry's store."""
    with core._sql() as q:
        got = q("SELECT value FROM settings WHERE name = ?", (REGISTRY_ID,))
    if got:
        return got[0][0]
    if core._read_only():
        return None
    try:
        with core._sql(write=True) as q:
            if not q("SELECT value FROM settings WHERE name = ?", (REGISTRY_ID,)):
                q.run("INSERT INTO settings (name, value) VALUES (?, ?)", (REGISTRY_ID, uuid.uuid4().hex))
    except RowConflict:
        pass  # another process made it first
    with core._sql() as q:
        return q("SELECT value FROM settings WHERE name = ?", (REGISTRY_ID,))[0][0]


def claim_store(core: Any) -> None:
    """Before a publish or an import writes blobs (once per registry object): record this
    registry as the owner of its blob store when none is, and warn when the store is another
    registry's, whose gc will not keep what this one publishes there."""
    import warnings

    from .errors import ForeignStoreWarning
    from .interfaces import OwnedBlobStorage

    if getattr(core, "_store_claimed", False) or not isinstance(core.blobs, OwnedBlobStorage):
        return
    core._store_claimed = True
    mine = registry_id(core)
    if mine is None:
        return
    owner = core.blobs.owner()
    if owner is None:
        owner = core.blobs.claim(mine)
    if owner != mine:
        warnings.warn(f"the blob store {core.blobs} belongs to another registry (id {owner[:12]}), not this one "
                      f"({mine[:12]}): that registry's gc deletes every blob its own catalog does not reference, "
                      "so versions recorded here can lose theirs; use the registry that owns the store "
                      "(--registry / ADAPTERHUB_REGISTRY_URL), or a blob store of this registry's own",
                      ForeignStoreWarning, stacklevel=4)


# --- the owner record in each built-in store ---------------------------------------------

#: the file (object, on S3) naming the registry a store belongs to: its catalog's id
OWNER_FILE = "OWNER"


class OwnerFile:
    """The owner record of a directory store (:class:`~adapterhub_sdk.blobs.BlobStore`)."""

    root: Path

    if TYPE_CHECKING:
        def _tmpdir(self) -> Path: ...  # provided by the store

    def owner(self) -> str | None:
        """The registry this store belongs to (see :class:`~adapterhub_sdk.interfaces.OwnedBlobStorage`):
        the id in ``OWNER``, never read through a link."""
        try:
            fd = os.open(self.root / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            text = f.read(256).decode("ascii", errors="replace").strip()
        return text or None

    def claim(self, owner: str, *, force: bool = False) -> str:
        """Record ``owner`` in ``OWNER`` unless a registry is recorded there already (an
        exclusive link, so two claimers never both win); ``force`` replaces it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmpdir(), prefix="owner-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(owner.encode("ascii") + b"\n")
            if force:
                os.replace(tmp, self.root / OWNER_FILE)
                return owner
            try:
                os.link(tmp, self.root / OWNER_FILE)
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return self.owner() or owner


class OwnerObject:
    """The owner record of an S3 store (:class:`~adapterhub_sdk.s3_blobs.S3BlobStore`)."""

    client: Any
    bucket: str
    prefix: str

    if TYPE_CHECKING:
        def _check_bucket(self) -> None: ...  # provided by the store

    @_s3_errors
    def owner(self) -> str | None:
        """The registry this store belongs to: the id in ``PREFIX/OWNER``."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}OWNER")["Body"]
        except Exception as exc:
            if _absent(exc):
                self._check_bucket()
                return None
            raise
        with body:
            text = body.read(256).decode("ascii", errors="replace").strip()
        return text or None

    @_s3_errors
    def claim(self, owner: str, *, force: bool = False) -> str:
        """Record ``owner`` in ``PREFIX/OWNER`` unless one is recorded (a conditional write:
        of two claimers, one wins); ``force`` replaces it."""
        extra = {} if force else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}OWNER", Body=owner.encode("ascii") + b"\n",
                                   **extra)
        except Exception as exc:
            if not _precondition(exc):
                raise
        return self.owner() or owner

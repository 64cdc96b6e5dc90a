"""The registry's SQL schema as SQLAlchemy Core tables: what every query reads and writes,
without loading the ORM (a CLI command pays for what it imports). ``models`` maps its typed
ORM classes onto these same tables. Changes go through Alembic migrations in
``registry/migrations``; constraint names follow ``NAMING``, so they are identical on SQLite
and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from .catalog import utcnow  # noqa: F401 - the columns' default, re-exported

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)




def _digest(name: str, *args: object, **kw: object) -> Column:
    return Column(name, String(64), *args, nullable=kw.pop("nullable", False), **kw)  # type: ignore[arg-type]


def _timestamp(name: str) -> Column:
    return Column(name, DateTime(timezone=True), nullable=False, default=utcnow)


# A base model known by its fingerprint, with its shape table (no weights).
bases = Table(
    "bases", metadata,
    _digest("fingerprint", primary_key=True),
    _digest("arch_signature", index=True),
    Column("n_tensors", Integer, nullable=False),
    Column("n_params", BigInteger, nullable=False),
    Column("total_bytes", BigInteger, nullable=False),
    Column("shapes", Text, nullable=False),  # JSON {"shapes": {...}, "tied": {...}, "dtypes": {...}}
    Column("config", Text, nullable=True),  # the model's config.json, when known
    _timestamp("created_at"),
)

# Where a fingerprint was seen: a local path, a Hub repo at a commit, ...
base_sources = Table(
    "base_sources", metadata,
    Column("id", Integer, primary_key=True),
    _digest("fingerprint", ForeignKey("bases.fingerprint", ondelete="CASCADE"), index=True),
    Column("kind", String(16), nullable=False),
    Column("locator", String(1024), nullable=False),
    Column("revision", String(128), nullable=False, default=""),
    Column("details", Text, nullable=False, default="{}"),
    _timestamp("seen_at"),
    UniqueConstraint("kind", "locator", "revision"),
)

adapters = Table(
    "adapters", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("name_key", String(200), nullable=False, unique=True),
    _timestamp("created_at"),
)

# Base tensors and shapes an adapter needs; shared by every adapter with the same needs.
requirement_sets = Table(
    "requirement_sets", metadata,
    _digest("digest", primary_key=True),
    Column("body", Text, nullable=False),
    # a key every base the set fits has (registry/probes.py): finds the candidates for a new arch
    Column("probe", String(1024), nullable=True, index=True),
)

# the columns resolve fetches, after its lookup column(s); see the covering indexes below
RESOLVE_COLUMNS = ("id", "adapter_id", "version", "digest", "method", "variant", "size", "yanked",
                   "major", "minor", "patch")

versions = Table(
    "versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("adapter_id", Integer, ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
    Column("version", String(128), nullable=False),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("patch", Integer, nullable=False),
    Column("prerelease", String(128), nullable=False, default=""),
    Column("digest", String(71), nullable=False, index=True),
    Column("manifest", Text, nullable=False),
    Column("method", String(64), nullable=False, index=True),
    Column("variant", String(64), nullable=False),
    Column("base_fingerprint", String(64), nullable=True),
    Column("base_arch", String(64), nullable=True),
    Column("base_name", String(1024), nullable=True),
    _digest("req_digest", ForeignKey("requirement_sets.digest")),
    Column("size", BigInteger, nullable=False),
    Column("yanked", Boolean, nullable=False, default=False),
    # where the version came from when it was not published here, e.g. hf://ORG/REPO@COMMIT
    Column("source", String(1024), nullable=True),
    _timestamp("created_at"),
    UniqueConstraint("adapter_id", "version"),
    Index("ix_versions_adapter_order", "adapter_id", "major", "minor", "patch"),
    # resolve reads these columns for hundreds of rows; indexes that hold them all spare a
    # visit to each table row, whose manifest (kilobytes) sits before most of them
    Index("ix_versions_resolve_fp", "base_fingerprint", *RESOLVE_COLUMNS),
    Index("ix_versions_resolve_req", "req_digest", "base_fingerprint", *RESOLVE_COLUMNS),
)

version_tasks = Table(
    "version_tasks", metadata,
    Column("version_id", Integer, ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    Column("task", String(100), primary_key=True),
    Index("ix_version_tasks_task_version", "task", "version_id"),
)

files = Table(
    "files", metadata,
    Column("version_id", Integer, ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(128), primary_key=True),
    _digest("sha256", index=True),
    Column("size", BigInteger, nullable=False),
)

aliases = Table(
    "aliases", metadata,
    Column("adapter_id", Integer, ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
    _timestamp("updated_at"),
)

# Cached structural check of a requirement set against an architecture.
fits = Table(
    "fits", metadata,
    _digest("req_digest", ForeignKey("requirement_sets.digest", ondelete="CASCADE"), primary_key=True),
    _digest("arch_signature", primary_key=True),
    Column("ok", Boolean, nullable=False),
    Column("reasons", Text, nullable=False, default="[]"),
)

# Public keys of signers this registry's users trust (signing/); private keys never live here.
signing_keys = Table(
    "signing_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    _digest("key_id", unique=True),  # sha256 of the PEM public key: the bundle's key hint
    Column("public_key", Text, nullable=False),  # PEM SubjectPublicKeyInfo
    _timestamp("created_at"),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# A version's signatures: OpenSSF model signing bundles over its files and manifest, beside the
# version (never in its manifest, never changing its digest). The first one is the publisher's.
signatures = Table(
    "signatures", metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True),
    _digest("key_id"),
    Column("signer", String(64), nullable=False),  # the key's name when it signed
    Column("bundle", Text, nullable=False),  # the Sigstore bundle JSON, as written to model.sig
    _timestamp("created_at"),
    UniqueConstraint("version_id", "key_id"),
)

# Registry-wide settings, e.g. the signing policy ("require_signed": key names, comma-separated).
settings = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Blobs a publish or an import in progress is about to reference: written in their own committed
# transaction before its uploads, removed when it commits or fails. gc never deletes a blob
# with a live lease, whatever its grace period: S3 has no mtime to refresh, so this is the one
# record that a blob not yet referenced is in use. ``holder`` names the process (boot id, pid
# namespace, pid, start time) so that a lease of a process that died on this machine is dead
# at once; elsewhere a lease ends after lifecycle.LEASE_SECONDS.
blob_leases = Table(
    "blob_leases", metadata,
    Column("id", Integer, primary_key=True),
    Column("lease", String(32), nullable=False, index=True),
    _digest("sha256", index=True),
    Column("holder", String(200), nullable=False, default=""),
    _timestamp("created_at"),
)

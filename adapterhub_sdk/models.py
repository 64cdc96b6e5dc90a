"""The registry's SQL schema (SQLAlchemy 2 typed models). Changes go through Alembic
migrations in ``registry/migrations``; constraint names follow ``NAMING``, so they are
identical on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


Digest = Annotated[str, mapped_column(String(64))]
Timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BaseModelRecord(Base):
    """A base model known by its fingerprint, with its shape table (no weights)."""

    __tablename__ = "bases"
    fingerprint: Mapped[Digest] = mapped_column(primary_key=True)
    arch_signature: Mapped[Digest] = mapped_column(index=True)
    n_tensors: Mapped[int] = mapped_column(Integer)
    n_params: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    shapes: Mapped[str] = mapped_column(Text)  # JSON {"shapes": {...}, "tied": {...}, "dtypes": {...}}
    config: Mapped[str | None] = mapped_column(Text)  # the model's config.json, when known
    created_at: Mapped[Timestamp]
    sources: Mapped[list[BaseSource]] = relationship(back_populates="base")


class BaseSource(Base):
    """Where a fingerprint was seen: a local path, a Hub repo at a commit, ..."""

    __tablename__ = "base_sources"
    __table_args__ = (UniqueConstraint("kind", "locator", "revision"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[Digest] = mapped_column(ForeignKey("bases.fingerprint", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    locator: Mapped[str] = mapped_column(String(1024))
    revision: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    seen_at: Mapped[Timestamp]
    base: Mapped[BaseModelRecord] = relationship(back_populates="sources")


class Adapter(Base):
    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[Timestamp]
    versions: Mapped[list[AdapterVersion]] = relationship(back_populates="adapter")


class RequirementSet(Base):
    """Base tensors and shapes an adapter needs; shared by every adapter with the same needs."""

    __tablename__ = "requirement_sets"
    digest: Mapped[Digest] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    # a key every base the set fits has (registry/probes.py): finds the candidates for a new arch
    probe: Mapped[str | None] = mapped_column(String(1024), index=True)


# the columns resolve fetches, after its lookup column(s); see the covering indexes below
RESOLVE_COLUMNS = ("id", "adapter_id", "version", "digest", "method", "variant", "size", "yanked",
                   "major", "minor", "patch")


class AdapterVersion(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        Index("ix_versions_adapter_order", "adapter_id", "major", "minor", "patch"),
        # resolve reads these columns for hundreds of rows; indexes that hold them all spare a
        # visit to each table row, whose manifest (kilobytes) sits before most of them
        Index("ix_versions_resolve_fp", "base_fingerprint", *RESOLVE_COLUMNS),
        Index("ix_versions_resolve_req", "req_digest", "base_fingerprint", *RESOLVE_COLUMNS),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(128))
    major: Mapped[int] = mapped_column(Integer)
    minor: Mapped[int] = mapped_column(Integer)
    patch: Mapped[int] = mapped_column(Integer)
    prerelease: Mapped[str] = mapped_column(String(128), default="")
    digest: Mapped[str] = mapped_column(String(71), index=True)
    manifest: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(64), index=True)
    variant: Mapped[str] = mapped_column(String(64))
    base_fingerprint: Mapped[str | None] = mapped_column(String(64))
    base_arch: Mapped[str | None] = mapped_column(String(64))
    base_name: Mapped[str | None] = mapped_column(String(1024))
    req_digest: Mapped[Digest] = mapped_column(ForeignKey("requirement_sets.digest"))
    size: Mapped[int] = mapped_column(BigInteger)
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    # where the version came from when it was not published here, e.g. hf://ORG/REPO@COMMIT
    source: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[Timestamp]
    adapter: Mapped[Adapter] = relationship(back_populates="versions")


class VersionTask(Base):
    __tablename__ = "version_tasks"
    __table_args__ = (Index("ix_version_tasks_task_version", "task", "version_id"),)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[str] = mapped_column(String(100), primary_key=True)


class VersionFile(Base):
    __tablename__ = "files"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(128), primary_key=True)
    sha256: Mapped[Digest] = mapped_column(index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AliasRecord(Base):
    __tablename__ = "aliases"
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    updated_at: Mapped[Timestamp]


class Fit(Base):
    """Cached structural check of a requirement set against an architecture."""

    __tablename__ = "fits"
    req_digest: Mapped[Digest] = mapped_column(ForeignKey("requirement_sets.digest", ondelete="CASCADE"),
                                               primary_key=True)
    arch_signature: Mapped[Digest] = mapped_column(primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[str] = mapped_column(Text, default="[]")

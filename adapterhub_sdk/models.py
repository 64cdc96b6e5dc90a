"""The registry's schema as typed ORM classes, mapped onto the Core tables of
:mod:`adapterhub_sdk.tables` (the one definition of the schema; queries use those tables, so
nothing on the read path loads the ORM). Alembic's autogenerate and anyone who wants the
mapped classes import this module. Changes go through migrations in ``registry/migrations``."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from . import tables
from .tables import NAMING, RESOLVE_COLUMNS, utcnow

__all__ = ["NAMING", "RESOLVE_COLUMNS", "Adapter", "AdapterVersion", "AliasRecord", "Base", "BaseModelRecord",
           "BaseSource", "BlobLease", "Fit", "RequirementSet", "VersionFile", "VersionTask", "utcnow"]


class Base(DeclarativeBase):
    metadata = tables.metadata


class BaseModelRecord(Base):
    """A base model known by its fingerprint, with its shape table (no weights)."""

    __table__ = tables.bases
    sources: Mapped[list[BaseSource]] = relationship(back_populates="base")


class BaseSource(Base):
    """Where a fingerprint was seen: a local path, a Hub repo at a commit, ..."""

    __table__ = tables.base_sources
    base: Mapped[BaseModelRecord] = relationship(back_populates="sources")


class Adapter(Base):
    __table__ = tables.adapters
    versions: Mapped[list[AdapterVersion]] = relationship(back_populates="adapter")


class RequirementSet(Base):
    """Base tensors and shapes an adapter needs; shared by every adapter with the same needs."""

    __table__ = tables.requirement_sets


class AdapterVersion(Base):
    __table__ = tables.versions
    adapter: Mapped[Adapter] = relationship(back_populates="versions")


class VersionTask(Base):
    __table__ = tables.version_tasks


class VersionFile(Base):
    __table__ = tables.files


class AliasRecord(Base):
    __table__ = tables.aliases


class Fit(Base):
    """Cached structural check of a requirement set against an architecture."""

    __table__ = tables.fits


class SigningKey(Base):
    """The public key of a signer this registry's users trust (or revoked)."""

    __table__ = tables.signing_keys


class Signature(Base):
    """A version's signature: an OpenSSF model signing bundle over its files and manifest."""

    __table__ = tables.signatures


class Setting(Base):
    """A registry-wide setting, such as the signing policy."""

    __table__ = tables.settings


class BlobLease(Base):
    """A blob a publish in progress is about to reference: gc keeps it while the lease lives."""

    __table__ = tables.blob_leases

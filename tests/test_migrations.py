"""Schema migrations: a new database is created at head; an older one is refused until
`adapterhub db upgrade`, which keeps its data. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

import adapterhub_sdk as ah
from adapterhub_sdk import db as dbmod

from conftest import run_cli


def _upgrade_to(url: str, revision: str) -> None:
    engine = dbmod.make_engine(url)
    with engine.connect() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(dbmod.migrations_dir()))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    engine.dispose()


def test_new_database_is_created_at_head(registry_url, tmp_path):
    reg = ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    with reg.engine.connect() as conn:
        assert dbmod.current_revision(conn) == dbmod.head_revision()
        assert "config" in {c["name"] for c in inspect(conn).get_columns("bases")}
    reg.close()


def test_old_schema_is_refused_then_upgraded_keeping_data(registry_url, tmp_path):
    _upgrade_to(registry_url, "0001")
    engine = dbmod.make_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO adapters (name, name_key, created_at) VALUES ('acme/x', 'acme/x', CURRENT_TIMESTAMP)"))
    engine.dispose()

    with pytest.raises(ah.RegistryError, match="at 0001") as refused_py:
        ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    assert "adapterhub db upgrade" in refused_py.value.hint
    refused = run_cli("--registry", registry_url, "list")
    assert refused.returncode == 1 and "adapterhub db upgrade" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    done = run_cli("--registry", registry_url, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert f"at {dbmod.head_revision()}" in done.stdout and "was 0001" in done.stdout
    reg = ah.Registry.open(registry_url, blobs=tmp_path / "blobs")
    assert reg.stats()["adapters"] == 1
    reg.close()
    again = run_cli("--registry", registry_url, "db", "current")
    assert again.stdout.strip() == f"current {dbmod.head_revision()}, head {dbmod.head_revision()}"


def test_foreign_database_is_not_touched(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = dbmod.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    with pytest.raises(ah.RegistryError, match="no adapterhub schema"):
        ah.Registry.open(url, blobs=tmp_path / "blobs")


def test_migrations_and_models_agree(registry_url):
    """A new database is created from the models in one transaction; an old one is upgraded
    by the migrations. Both must give the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from adapterhub_sdk.models import Base

    _upgrade_to(registry_url, "head")
    engine = dbmod.make_engine(registry_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_a_new_database_is_stamped_as_alembic_stamps_it(registry_url, tmp_path):
    """create_fresh writes the alembic_version table itself (importing Alembic cost the first
    command in a new home ~0.2 s): the table, its key and its row must be what Alembic's own
    stamp writes, so that Alembic upgrades it later."""
    from alembic.runtime.migration import MigrationContext

    ah.Registry.open(registry_url, blobs=tmp_path / "blobs").close()
    engine = dbmod.make_engine(registry_url)
    with engine.connect() as conn:
        ours = inspect(conn)
        ours_cols = [(c["name"], str(c["type"]), c["nullable"]) for c in ours.get_columns("alembic_version")]
        ours_pk = ours.get_pk_constraint("alembic_version")
        assert MigrationContext.configure(conn).get_current_revision() == dbmod.head_revision()
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        # Alembic's own stamp, written into a scratch table name on the same database
        ctx = MigrationContext.configure(conn, opts={"version_table": "alembic_version_ref"})
        ctx.stamp(dbmod._scripts(), "head")
        ref = inspect(conn)
        ref_cols = [(c["name"], str(c["type"]), c["nullable"]) for c in ref.get_columns("alembic_version_ref")]
        ref_pk = ref.get_pk_constraint("alembic_version_ref")
        conn.rollback()
    engine.dispose()
    assert ours_cols == ref_cols
    assert ours_pk["constrained_columns"] == ref_pk["constrained_columns"] == ["version_num"]
    if registry_url.startswith("postgresql"):  # SQLite does not keep the constraint's name
        assert ours_pk["name"] == "alembic_version_pkc"
        assert ref_pk["name"] == "alembic_version_ref_pkc"


def test_creating_a_registry_does_not_load_alembic(tmp_path):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'new.db'}"
    code = (f"import sys\nfrom adapterhub_sdk import Registry\nRegistry.open({url!r}).close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako', 'pygments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    done = run_cli("--registry", url, "db", "current")  # and Alembic reads what it wrote
    assert done.stdout.strip() == f"current {dbmod.head_revision()}, head {dbmod.head_revision()}"

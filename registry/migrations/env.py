"""Alembic environment for the adapterhub registry. Run through ``adapterhub db upgrade``
(or automatically on a new database); the connection comes from the SDK."""

from alembic import context

from adapterhub_sdk.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through 'adapterhub db upgrade'")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

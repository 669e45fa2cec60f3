"""Alembic environment: runs on the connection `SqlStore.upgrade()` hands over."""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "fs_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

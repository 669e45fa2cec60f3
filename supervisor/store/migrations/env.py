"""Alembic environment: runs on the connection `SqlStore.upgrade()` hands over."""

from __future__ import annotations

from alembic import context

from supervisor.store.compat import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

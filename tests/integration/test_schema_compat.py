"""Migrations only add: what a release that the schema admits reads and writes is still
there, and still takes what it writes.

`fs_schema_info.min_release` says which releases can use the schema (store/compat.py);
these tests hold every migration since the oldest such release to that promise, by the
schema the database reports (SQLAlchemy's inspector), not by reading the migrations'
code: every table and column of that release's schema is still there, no column became
NOT NULL, and each column added since is nullable or has a server default (an older
release's INSERT does not name it). A migration that must break this raises
min_release, and then these tests start from the new oldest release.
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select

from supervisor.store.compat import VERSION_TABLE, known_head, release_at_least
from supervisor.store.schema import schema_info
from supervisor.store.sql import SqlStore
from tests.integration.test_store_cron import migrate

# The oldest release the head schema admits, and the schema revision it created.
OLDEST = ("0.1.0", "0005")


def shape(url: str) -> dict[str, dict[str, dict[str, Any]]]:
    """table -> column -> {nullable, default}, as the database reports them."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {table: {col["name"]: {"nullable": col["nullable"],
                                      "default": col.get("default")}
                        for col in found.get_columns(table)}
                for table in found.get_table_names() if table != VERSION_TABLE}
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_backend", ["sqlite", "postgresql", "mariadb"])
def test_every_migration_since_the_oldest_admitted_release_only_adds(database_url) -> None:
    release, revision = OLDEST
    migrate(database_url, command.upgrade, revision)
    before = shape(database_url)
    store = SqlStore(database_url)
    try:
        assert store.upgrade().revision == known_head()
        with store._txn() as conn:
            minimum = conn.execute(select(schema_info.c.value)
                                   .where(schema_info.c.name == "min_release")).scalar_one()
    finally:
        store.close()
    assert release_at_least(release, minimum), (
        f"the head schema no longer admits {release}: update OLDEST")
    after = shape(database_url)
    problems = []
    for table, columns in before.items():
        if table not in after:
            problems.append(f"table {table} dropped")
            continue
        for name, old in columns.items():
            new = after[table].get(name)
            if new is None:
                problems.append(f"column {table}.{name} dropped")
            elif old["nullable"] and not new["nullable"]:
                problems.append(f"column {table}.{name} became NOT NULL")
        for name in after[table].keys() - columns.keys():
            new = after[table][name]
            if not new["nullable"] and new["default"] is None:
                problems.append(f"column {table}.{name} added NOT NULL without a default:"
                                f" {release}'s inserts do not name it")
    assert not problems, problems
    assert set(after) > set(before)  # the check saw the tables added since (0006)


@pytest.mark.parametrize("database_backend", ["postgresql", "pgbouncer", "mariadb"])
def test_a_schema_created_while_it_is_being_inspected_is_read_not_an_error(
        database_url, monkeypatch) -> None:
    """A node reading the schema's revision while another node's first migration commits:
    its query fails (no table yet), and by the time it looks in the catalog the table is
    there. It reads the new revision instead of raising. (Not SQLite: there the reading
    transaction holds the write lock, so no migration can commit in between.)"""
    from supervisor.store import compat

    real_inspect = compat.inspect

    def migration_lands_first(conn: Any) -> Any:  # the other node commits just now
        migrate(database_url, command.upgrade, known_head())
        return real_inspect(conn)

    monkeypatch.setattr(compat, "inspect", migration_lands_first)
    store = SqlStore(database_url)
    try:
        assert store.schema_state().revision == known_head()
    finally:
        store.close()

"""Which schema revisions this release can use: rolling upgrades without guessing.

A fleet is upgraded node by node, so for a while old and new supervisors share one
database, and the first new node migrates the schema under the old ones. Migrations only
add (tables, nullable columns, indexes), and the schema records in `fs_schema_info` the
oldest release that can still use it ("min_release", migration 0006). So a node finds one
of three things before it coordinates:

- a revision it knows: it upgrades to its own head, if it is behind (`SqlStore.upgrade`);
- a newer revision whose "min_release" is at most this release: it keeps running, and
  says so once;
- a newer revision that needs a later release: `SchemaNewer`, and the node refuses to
  coordinate (its every-node workers run on, /readyz says not ready) rather than write
  rows it does not understand.

Only imported where a schema is checked or upgraded (it loads Alembic's script directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from supervisor import __version__
from supervisor.errors import SchemaNewer
from supervisor.store.schema import schema_info

VERSION_TABLE = "fs_alembic_version"  # also named in migrations/env.py


@dataclass(frozen=True)
class SchemaState:
    """What a node found: the database's revision and, when newer than this release
    knows, the oldest release that can use it."""

    revision: str | None  # None: no schema at all
    head: str  # this release's newest revision
    newer: bool = False
    min_release: str | None = None

    def describe(self) -> str:
        if not self.newer:
            return f"revision {self.revision}"
        return (f"revision {self.revision}, newer than this release ({__version__}) knows;"
                f" usable from release {self.min_release}")


@cache
def _script() -> tuple[frozenset[str], str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "supervisor.store:migrations")
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    if head is None:  # the package ships its migrations: only a broken install gets here
        raise RuntimeError("no migration head found in supervisor.store:migrations")
    return frozenset(rev.revision for rev in script.walk_revisions()), head


def known_head() -> str:
    return _script()[1]


def inspect_schema(conn: Connection) -> SchemaState:
    """The schema's revision as this release sees it; raises `SchemaNewer` when the
    database needs a later release. Reads only: one small query in steady state (each
    node repeats it now and then, so a migration landing under it is noticed)."""
    known, head = _script()
    revisions = _scalars(conn, text(f"SELECT version_num FROM {VERSION_TABLE}"), VERSION_TABLE)
    if not revisions:
        return SchemaState(None, head)
    unknown = [r for r in revisions if r not in known]
    if not unknown:
        return SchemaState(max(revisions), head)
    revision = ", ".join(sorted(unknown))
    found = _scalars(conn, select(schema_info.c.value).where(schema_info.c.name == "min_release"),
                     schema_info.name)
    minimum = found[0] if found else None
    if minimum is None or not release_at_least(__version__, minimum):
        raise SchemaNewer(revision=revision, min_release=minimum, release=__version__)
    return SchemaState(revision, head, newer=True, min_release=minimum)


def _scalars(conn: Connection, query: Any, table: str) -> list[str]:
    """The query's values; [] when `table` does not exist (asked only then: a catalog
    lookup costs more than the query). In a savepoint, so a failure leaves the
    transaction usable on PostgreSQL."""
    try:
        with conn.begin_nested():
            return [str(value) for value in conn.execute(query).scalars()]
    except DBAPIError:
        if table not in inspect(conn).get_table_names():
            return []
    # The table exists now: a node's first migration created it between the query and the
    # lookup (or the query failed for another reason, which asking again raises).
    with conn.begin_nested():
        return [str(value) for value in conn.execute(query).scalars()]


def release_at_least(release: str, minimum: str) -> bool:
    """PEP 440 order; a record this release cannot parse counts as not satisfied."""
    try:
        return Version(release) >= Version(minimum)
    except InvalidVersion:
        return False


"""Names compare byte for byte on MariaDB/MySQL too: every fs_* table in a binary NO PAD collation.

The tables of 0001-0007 took the database's default collation, on MariaDB often
utf8mb4_general_ci (latin1_swedish_ci on old servers), which ignores case, accents and
trailing spaces: workers `Job` and `job` shared one lease, groups `EU` and `eu` one
group-leader and one coordinated membership, cron workers `Tick` and `tick` one run set.
PostgreSQL (deterministic collations) and SQLite (BINARY) already compare bytes; there this
migration does nothing. On MariaDB/MySQL each table is converted to utf8mb4 with
`utf8mb4_nopad_bin` (MariaDB) or `utf8mb4_0900_bin` (MySQL 8): bytes, and trailing spaces
count (`utf8mb4_bin` is PAD SPACE, 'x' = 'x '). It becomes each table's default, so a column
added later inherits it; a table created by a later migration must name it itself. A table
already converted is skipped, so a second run costs a few catalogue reads.

Before a table is converted, the names its old collation had already merged are reported:
one WARNING on the "supervisor" logger per key column holding two spellings of one name,
naming them, saying what those workers, groups or nodes shared and that they are separate
from now on. A primary-key column (fs_leases.name, fs_coord_state.worker_key ...) can hold
one spelling only; the spellings show in the history and membership columns (KEY_COLUMNS).

How long the tables are held, measured on MariaDB 10.11.19 (one local server, default
128 MiB buffer pool; a 0007 schema with N fs_terms rows and N fs_cron_runs rows, a writer
inserting into fs_terms and updating fs_cron_runs, fs_members and fs_leases every 25 ms
meanwhile; throwaway script, not in tests/):

    from utf8mb4_general_ci   fs_terms          fs_cron_runs      longest write   upgrade
    N = 100,000               0.19 s LOCK=NONE  0.70 s LOCK=NONE  0.01 s          1.25 s
    N = 1,000,000             2.28 s LOCK=NONE  7.42 s LOCK=NONE  0.09 s          12.7 s
    from latin1 (old servers)
    N = 100,000               0.70 s COPY       1.15 s COPY       1.15 s          2.57 s
    N = 1,000,000             6.96 s COPY       11.0 s COPY       11.0 s          20.3 s

    the eight live tables (tens of rows): 0.00-0.07 s each, COPY; fs_coord_generations
    (empty there): 0.01 s. The merge check reads an index: about 0.5 s per million rows.

Each table is its own ALTER, tried first with LOCK=NONE, else with LOCK=SHARED:

- LOCK=NONE: MariaDB 10.11 rebuilds in place, reads and writes go on (the "longest write"
  above: 90 ms at a million rows), when only the collation changes and no string column
  is in the primary key: the history tables fs_terms, fs_cron_runs, fs_coord_generations,
  the only large ones.
- LOCK=SHARED (ALGORITHM=COPY): reads go on, writes to that table wait until the copy
  ends. MariaDB 10.11 refuses LOCK=NONE for a table with a string primary key (fs_leases,
  fs_members, the fs_coord_* state tables: "Cannot change column type"), which hold live
  rows only and copy in milliseconds; and for any table whose character set changes
  (latin1 or utf8mb3 to utf8mb4, every table but fs_coord_generations), so on an old
  latin1 schema the history tables' writers wait about 1.1 s per 100,000 rows. A node
  whose sync waits longer than its renew_deadline (5 s by default) steps its leaders
  down, safely, and they start again once the ALTER ends: upgrade such a schema with a
  short history (history.keep) or in a quiet hour. MariaDB 11.2 and later can copy
  online (LOCK=NONE with COPY) and will take the first branch; MySQL 8, not measured
  here, copies for a collation change of an indexed column.

Each ALTER waits at most LOCK_WAIT seconds for its table's metadata lock (while it waits,
new statements on that table queue behind it), then lets them through and tries again,
so a long transaction elsewhere delays the upgrade instead of stalling the fleet. The
store's connection gives up reading after its timeout (a few seconds); during the
conversion it waits for the server instead.

No downgrade: going back to a collation that merges names could break unique keys that now
hold both spellings, and older releases work on this schema as they are.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

from alembic import op
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from supervisor.errors import StoreError

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("supervisor")

MARIADB_COLLATION = "utf8mb4_nopad_bin"
MYSQL_COLLATION = "utf8mb4_0900_bin"

# Every table of the schema, the small live ones first, the history tables last.
TABLES = (
    "fs_alembic_version", "fs_schema_info", "fs_leases", "fs_members", "fs_coord_state",
    "fs_coord_slots", "fs_coord_members", "fs_coord_assignments", "fs_terms", "fs_cron_runs",
    "fs_coord_generations",
)

_LEASES = ("one lease: at most one of those workers ran at a time, fleet-wide; "
           "from now on each has its own lease")
_GROUPS = ("one group: one group-leader instance and one coordinated membership between "
           "them; from now on they are separate groups")
_NODES = ("one node: their cron runs counted together against max_per_node; "
          "from now on they are separate nodes")
_CRON = ("one cron worker: their runs counted together against max_run; "
         "from now on each has its own runs")
_COORD = ("one coordinated key: one membership, index and count between them; "
          "from now on each key is partitioned on its own")

# Key columns that can hold two spellings of one name, and what sharing it meant. Each is
# the first column of an index (read in index order, no sort: 0.5 s per million rows), or
# in a table of live rows only. Node and group names are read from the live nodes'
# membership rows: a node or group that is gone shares nothing any more.
KEY_COLUMNS = {
    "fs_members": (("node_id", _NODES), ("group_name", _GROUPS)),
    "fs_coord_members": (("worker_key", _COORD),),
    "fs_terms": (("lease", _LEASES),),
    "fs_cron_runs": (("worker", _CRON),),
    "fs_coord_generations": (("worker_key", _COORD),),
}

MAX_LISTED = 20  # merged names listed per column; the rest are counted
LOCK_WAIT = 2  # seconds an ALTER waits for a table's metadata lock, per try
LOCK_TRIES = 30
_NOT_ONLINE = 1846  # ER_ALTER_OPERATION_NOT_SUPPORTED_REASON
_LOCK_WAIT_TIMEOUT = 1205


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name not in ("mysql", "mariadb"):
        return  # PostgreSQL and SQLite compare bytes already
    collation = _collation(conn)
    current = _collations(conn)
    pending = [table for table in TABLES if current.get(table, {collation}) != {collation}]
    if not pending:
        return
    with _patient(conn):
        for table in pending:
            _report_merged(conn, table)
            _convert(conn, table, collation)


def downgrade() -> None:
    """Nothing: see the module's docstring."""


def _collation(conn: Connection) -> str:
    """The binary NO PAD utf8mb4 collation of this server."""
    version = str(conn.execute(text("SELECT VERSION()")).scalar_one())
    wanted = MARIADB_COLLATION if "mariadb" in version.lower() else MYSQL_COLLATION
    known = conn.execute(text(
        "SELECT COUNT(*) FROM information_schema.COLLATIONS WHERE COLLATION_NAME = :c"),
        {"c": wanted}).scalar_one()
    if not known:
        raise StoreError(
            f"the database server ({version}) has no {wanted} collation, which names need "
            "to compare byte for byte: use MariaDB 10.2 or later, or MySQL 8.0 or later")
    return wanted


def _collations(conn: Connection) -> dict[str, set[str]]:
    """Each table's default collation and its string columns' collations."""
    found: dict[str, set[str]] = defaultdict(set)
    ours = {"tables": list(TABLES)}
    for table, name in conn.execute(text(
            "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :tables"
    ).bindparams(bindparam("tables", expanding=True)), ours):
        found[table].add(name)
    for table, name in conn.execute(text(
            "SELECT TABLE_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :tables"
            " AND COLLATION_NAME IS NOT NULL"
    ).bindparams(bindparam("tables", expanding=True)), ours):
        found[table].add(name)
    return found


def _report_merged(conn: Connection, table: str) -> None:
    """Warn about names the table's current collation treats as one (before it changes)."""
    for column, meaning in KEY_COLUMNS.get(table, ()):
        merged = _merged(conn, table, column)
        if not merged:
            continue
        old = conn.execute(text(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
            " DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = :c"),
            {"t": table, "c": column}).scalar_one_or_none()
        shown = "; ".join(" = ".join(repr(name) for name in names)
                          for names in merged[:MAX_LISTED])
        more = f" (and {len(merged) - MAX_LISTED} more)" if len(merged) > MAX_LISTED else ""
        log.warning(
            "schema upgrade: %s.%s holds names that its old collation %s treated as one: "
            "%s%s. Each of these was %s. Names now compare byte for byte (case, accents and "
            "trailing spaces count); if they were meant to be one, spell them alike on "
            "every node.", table, column, old, shown, more, meaning)


def _merged(conn: Connection, table: str, column: str) -> list[list[str]]:
    """Groups of byte-distinct values of `column` that its collation compares equal."""
    raw = f"CAST(t.{column} AS BINARY)"
    rows = conn.execute(text(
        f"SELECT m.k, MIN(t.{column}) FROM {table} t JOIN ("
        f"SELECT MIN(t.{column}) AS k FROM {table} t GROUP BY t.{column}"
        f" HAVING MIN({raw}) <> MAX({raw})) m ON t.{column} = m.k GROUP BY m.k, {raw}"))
    groups: dict[str, list[str]] = defaultdict(list)
    for key, value in rows:
        groups[key].append(value)
    return [sorted(names) for _, names in sorted(groups.items())]


def _convert(conn: Connection, table: str, collation: str) -> None:
    """One ALTER for the table: online where the server can, else with writes waiting."""
    alter = f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"
    row_format = conn.execute(text(
        "SELECT ROW_FORMAT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = :t"), {"t": table}).scalar_one()
    if str(row_format).lower() in ("compact", "redundant"):
        alter += ", ROW_FORMAT=DYNAMIC"  # 255 characters of 4 bytes outgrow a 767-byte key
    for lock in ("NONE", "SHARED"):
        started = time.monotonic()
        try:
            _alter(conn, table, f"{alter}, LOCK={lock}")
        except OperationalError as exc:
            if lock == "NONE" and _code(exc) == _NOT_ONLINE:
                continue
            raise
        log.info("schema upgrade: %s converted to %s in %.2f s (LOCK=%s)",
                 table, collation, time.monotonic() - started, lock)
        return


def _alter(conn: Connection, table: str, statement: str) -> None:
    """Run the ALTER, trying again while another transaction holds the table too long."""
    for attempt in range(LOCK_TRIES):
        try:
            conn.execute(text(statement))
            return
        except OperationalError as exc:
            if _code(exc) != _LOCK_WAIT_TIMEOUT or attempt == LOCK_TRIES - 1:
                raise
        log.info("schema upgrade: %s is held by another transaction; trying again in %d s",
                 table, LOCK_WAIT)
        time.sleep(LOCK_WAIT)  # let the statements that queued behind it through


def _code(exc: OperationalError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


@contextlib.contextmanager
def _patient(conn: Connection) -> Iterator[None]:
    """Bounded metadata-lock waits and no client read timeout, for this migration only."""
    dbapi = conn.connection.dbapi_connection
    read_timeout = getattr(dbapi, "_read_timeout", None)  # PyMySQL's, per read
    conn.execute(text(f"SET SESSION lock_wait_timeout = {LOCK_WAIT}"))
    if read_timeout is not None:
        setattr(dbapi, "_read_timeout", None)  # noqa: B010 (a private attribute, on purpose)
    try:
        yield
    finally:
        if read_timeout is not None:
            setattr(dbapi, "_read_timeout", read_timeout)  # noqa: B010
        conn.execute(text("SET SESSION lock_wait_timeout = DEFAULT"))

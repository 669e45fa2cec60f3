"""The SQL that differs between SQLite, PostgreSQL and MariaDB/MySQL, written once.

The entity stores (store/sql_leases.py, sql_nodes.py, sql_cron.py, sql_coord*.py) are
given a `Dialect` and never branch on the database themselves. What differs:

- the database's clock: `clock(now)` compiles to `clock_timestamp()` on PostgreSQL (not
  `now()`, which is frozen at the start of the transaction), `UTC_TIMESTAMP(6)` on
  MariaDB/MySQL (whose sessions run in UTC, store/engine.py), the host's clock on SQLite;
  a pinned `now` (tests) is a literal instead;
- insert-if-absent: ON CONFLICT DO NOTHING, or INSERT IGNORE;
- upsert: ON CONFLICT DO UPDATE (the proposed row is `excluded`), or ON DUPLICATE KEY
  UPDATE (the proposed row is `inserted`, assignments applied left to right);
- write-then-read-back: every write that can lose stamps a fresh random `claim`
  (`new_claim()`), and what it really changed is read back with RETURNING where the
  database has it, else by re-selecting that claim in the same transaction. Row counts
  are never trusted;
- a byte-exact prefix match, and the notification of a released lease.

Invariant: an INSERT IGNORE turns strict mode's "data too long" into a warning and cuts
the value, so every insert-if-absent first refuses an over-long value (`fit`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Double, Table, func, literal, select, text
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from supervisor.store.refusals import fit

Rows = Sequence[Mapping[str, Any]]
# The assignments of an upsert to a row that exists, given the proposed row's columns.
Assign = Callable[[Any], list[tuple[str, Any]]]


class _DbNow(FunctionElement[float]):
    """The database's clock as epoch seconds (DOUBLE)."""

    type = Double()
    inherit_cache = True


@compiles(_DbNow, "postgresql")
def _pg_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(_DbNow, "mysql")
@compiles(_DbNow, "mariadb")
def _mysql_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "(UNIX_TIMESTAMP(UTC_TIMESTAMP(6)) + 0e0)"


@compiles(_DbNow, "sqlite")
def _sqlite_now(element: _DbNow, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def clock(now: float | None = None) -> ColumnElement[float]:
    """Pinned time for tests, else the database's clock in the statement itself."""
    return literal(now, Double()) if now is not None else _DbNow()


def new_claim() -> str:
    """A fresh stamp for one write, by which the write is read back."""
    return secrets.token_hex(16)


class Dialect:
    """The statements that differ per database, for the database `backend` names."""

    def __init__(self, backend: str, *, update_returning: bool) -> None:
        self.backend = backend
        self._update_returning = update_returning
        # INSERT ... ON CONFLICT (PostgreSQL, SQLite); None: ON DUPLICATE KEY (MariaDB/MySQL)
        self._insert: Callable[[Table], Any] | None = {
            "postgresql": pg_insert, "sqlite": sqlite_insert}.get(backend)

    def insert_if_absent(self, conn: Connection, table: Table, rows: Rows) -> None:
        """Insert each row unless one with its key exists (that one is left as it is)."""
        fit(table, rows)
        if self._insert is not None:
            conn.execute(self._insert(table).values(list(rows)).on_conflict_do_nothing())
        else:
            conn.execute(mysql_insert(table).values(list(rows)).prefix_with("IGNORE"))

    def insert_and_hold(self, conn: Connection, table: Table, rows: Rows, touch: str) -> None:
        """Insert each row if absent and hold its key until commit, either way: on
        MariaDB an existing row's column `touch` is set to itself, for ON DUPLICATE KEY
        takes an exclusive lock where INSERT IGNORE would share one (several callers
        then queue instead of deadlocking)."""
        fit(table, rows)
        if self._insert is not None:
            conn.execute(self._insert(table).values(list(rows)).on_conflict_do_nothing())
        else:
            conn.execute(mysql_insert(table).values(list(rows))
                         .on_duplicate_key_update({touch: table.c[touch]}))

    def upsert(self, conn: Connection, table: Table, rows: Rows, keys: Sequence[str],
               assign: Assign, *, read: Sequence[Any] = ()) -> list[Row[Any]]:
        """Insert the rows, or update the existing row of each key with `assign(new)`,
        `new` being the proposed row's columns. With `read`: those columns of the rows
        written (RETURNING, else a re-select by key; `keys` then names one column)."""
        if self._insert is not None:
            stmt = self._insert(table).values(list(rows))
            upsert = stmt.on_conflict_do_update(index_elements=list(keys),
                                                set_=dict(assign(stmt.excluded)))
            if read:
                return list(conn.execute(upsert.returning(*read)))
            conn.execute(upsert)
            return []
        my = mysql_insert(table).values(list(rows))
        conn.execute(my.on_duplicate_key_update(assign(my.inserted)))
        if not read:
            return []
        (key,) = keys
        return list(conn.execute(select(*read).where(table.c[key].in_([r[key] for r in rows]))))

    def read_back(self, conn: Connection, stmt: Any, cols: Sequence[Any],
                  where: Sequence[Any], *, lock: bool = False) -> list[Row[Any]]:
        """Run a claim-stamping UPDATE and read back the rows it really changed:
        RETURNING `cols`, else a re-select of `cols` by `where` (the claim, and a key
        that limits it to the rows meant), FOR UPDATE with `lock`."""
        if self._update_returning:
            return list(conn.execute(stmt.returning(*cols)))
        conn.execute(stmt)
        query = select(*cols).where(*where)
        return list(conn.execute(query.with_for_update() if lock else query))

    def starts_with(self, column: Any, prefix: str) -> Any:
        """`column` begins with `prefix`, byte for byte. LIKE on SQLite ignores the case of
        ASCII letters (`history Job` listed `job`'s rows too), so there the prefix is
        compared as a substring; elsewhere LIKE (which an index serves) is exact."""
        if self.backend == "sqlite":
            return func.substr(column, 1, len(prefix)) == prefix
        return column.startswith(prefix, autoescape=True)

    def notify_released(self, conn: Connection, lease: str) -> None:
        """Wake the nodes that LISTEN (PostgreSQL only; elsewhere they poll)."""
        if self.backend == "postgresql":
            conn.execute(text("SELECT pg_notify('fs_lease_released', :name)"), {"name": lease})


"""The store's SQLAlchemy engine, set up per database: one connection, every call bounded.

Invariants, whatever the database:

- one pooled connection, never more: every call of a running node goes through its one
  database lane (coordination/dblane.py), and one-shot commands call one at a time; a
  checkout that would wait for the connection fails after the store's timeout instead;
- bounded calls: driver connect/read timeouts and server-side statement and lock
  timeouts, all the store's timeout;
- orphaned transactions: the server ends a transaction idle for the store's timeout
  (PostgreSQL `idle_in_transaction_session_timeout`, MariaDB `idle_transaction_timeout`),
  so a node cut off mid-transaction (its packets dropped, its process stopped) does not
  hold rows every other node's sync needs until TCP gives up; a live node has cut its
  own call by then (the lane abandons it at its bound), so this ends orphans only;
- PostgreSQL, direct or through a transaction-mode PgBouncer alike: no startup
  `options`, no prepared statements, settings per transaction (SET LOCAL), one
  application_name for every node;
- MariaDB/MySQL: UTC sessions, strict SQL mode, READ COMMITTED (no gap locks between
  nodes' upserts);
- SQLite: WAL, a busy timeout, and `BEGIN IMMEDIATE` for every transaction, so
  concurrent writers queue instead of failing with "database is locked".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection

_MYSQL_SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                   "NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO")


def store_engine(parsed: URL, timeout: float) -> Engine:
    """The engine for `parsed`, every call bounded by `timeout` seconds."""
    backend = parsed.get_backend_name()
    ms = max(1, int(timeout * 1000))
    secs = max(1, int(timeout + 0.999))
    one = {"pool_size": 1, "max_overflow": 0, "pool_timeout": timeout}
    kwargs: dict[str, Any] = {**one, "pool_recycle": 1800}
    if backend == "postgresql":
        kwargs["connect_args"] = _pg_connect_args(ms, secs)
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = _mysql_connect_args(secs)
        kwargs["isolation_level"] = "READ COMMITTED"  # no gap locks between nodes' upserts
    elif backend == "sqlite":
        kwargs = {"connect_args": {"timeout": timeout, "check_same_thread": False}}
        if parsed.database not in (None, "", ":memory:"):
            kwargs.update(one)
    engine = create_engine(parsed, **kwargs)
    if backend == "sqlite":
        _sqlite_immediate(engine, ms)
    elif backend in ("mysql", "mariadb"):
        _mariadb_idle_hold(engine, secs)
    elif backend == "postgresql":
        _pg_timeouts(engine, ms)
    return engine


def _pg_connect_args(ms: int, secs: int) -> dict[str, Any]:
    # No startup `options` and no prepared statements: a pooler in transaction mode
    # (PgBouncer) refuses unknown startup parameters and may run each transaction on
    # another server connection, where a prepared statement does not exist. The
    # server-side timeouts are set per transaction instead (`_pg_timeouts`).
    return {
        "connect_timeout": secs,
        "prepare_threshold": None,
        "tcp_user_timeout": ms,
        "keepalives_idle": secs,
        # One name for every node, never the node's own: a transaction-mode pooler
        # re-SETs application_name on its server connection whenever the next client's
        # differs, one more server transaction per transaction.
        "application_name": "fleet-supervisor",
    }


def _mysql_connect_args(secs: int) -> dict[str, Any]:
    return {
        "connect_timeout": secs,
        "read_timeout": secs,
        "write_timeout": secs,
        # Strict on every connection, whatever the server's default: an over-long or
        # invalid value is an error, never silently truncated or coerced.
        "init_command": f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {secs},"
                        f" sql_mode = '{_MYSQL_SQL_MODE}'",
    }


def _pg_timeouts(engine: Engine, ms: int) -> None:
    """Bound every PostgreSQL transaction on the server: statement, lock and idle timeouts.

    Set with `set_config(..., is_local => true)` (SET LOCAL) at the start of each transaction,
    direct or through PgBouncer alike: a session setting would leak into whichever client a
    transaction-mode pooler hands the server connection to next. One round trip, one statement.
    """

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "SELECT set_config('statement_timeout', %(ms)s, true),"
            " set_config('lock_timeout', %(ms)s, true),"
            " set_config('idle_in_transaction_session_timeout', %(ms)s, true)",
            {"ms": str(ms)},
        )


def _mariadb_idle_hold(engine: Engine, secs: int) -> None:
    """MariaDB ends a transaction left idle for `secs` (whole seconds, its granularity).
    MySQL has no such setting (error 1193, unknown variable): there an orphaned
    transaction keeps its rows until TCP keepalive or `wait_timeout` ends the session."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            try:
                cur.execute(f"SET SESSION idle_transaction_timeout = {int(secs)}")
            except Exception as exc:  # the driver's own error type; 1193: no such variable
                if not exc.args or exc.args[0] != 1193:
                    raise


def _sqlite_immediate(engine: Engine, busy_ms: int) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE: writers queue instead of failing."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

"""One database for the store: transactions on its one connection, cut when callers give up.

What every entity store (store/sql_*.py) is given, with the `Dialect` of its database:

- `run(work)`: `work` in one transaction, tried again when the database broke a
  deadlock; `txn()`: one transaction, as a context;
- errors translated at this seam (store/classify.py), with `raise ... from`: nothing
  above the store sees a driver's exception;
- `interrupt()` shuts down the sockets of calls in flight, so a caller that gave up (a
  swallowed packet, a dead server) gets its thread back; a connection left by an error,
  or cut, is invalidated, never handed out again;
- PostgreSQL with no separate listen URL: the query connection itself LISTENs for lease
  releases, heard between calls (`notify_fd`, `take_notified`);
- `migration_lock()`: schema upgrades serialised across the fleet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from supervisor.errors import StoreError
from supervisor.store.classify import Deadlock, translate
from supervisor.store.dialect import Dialect
from supervisor.store.engine import store_engine

T = TypeVar("T")
MIGRATE_LOCK = 0x46535550  # "FSUP": the advisory lock id around schema upgrades
# The migration lock's name on MariaDB/MySQL (at most 64 characters): one per database.
MYSQL_MIGRATE_LOCK = "CONCAT('fs_migrate_', SHA1(DATABASE()))"
_DEADLOCK_TRIES = 3


class Database:
    """The store's engine and its one connection, tracked so calls can be cut."""

    def __init__(self, parsed: URL, masked_url: str, timeout: float, *,
                 listen_inline: bool) -> None:
        self.masked_url = masked_url
        self.backend = parsed.get_backend_name()
        self._in_flight: dict[int, Any] = {}
        self._cut: set[int] = set()  # threads whose connection `interrupt()` cut
        self._lock = threading.Lock()
        # `_listening` is the psycopg connection that LISTENs, `_heard` is set by
        # notifications psycopg reads during queries.
        self._listening: Any = None
        self._heard = threading.Event()
        self.engine = store_engine(parsed, timeout)
        if listen_inline:
            event.listen(self.engine, "connect", self._listen_inline)
        self.dialect = Dialect(self.backend,
                               update_returning=bool(self.engine.dialect.update_returning))

    # --- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def tracked(self, conn: Connection) -> Iterator[Connection]:
        """Register `conn` so that `interrupt()` can cut it while this thread uses it; a
        connection left by an error, or cut (even as its call was ending well), is
        invalidated: never handed out again, and not reset on a dead socket (the pool
        would log that failure with a traceback)."""
        ident = threading.get_ident()
        with self._lock:
            self._in_flight[ident] = conn.connection.dbapi_connection
        try:
            yield conn
        except BaseException:
            conn.invalidate()
            raise
        finally:
            with self._lock:
                self._in_flight.pop(ident, None)
                cut = ident in self._cut
                self._cut.discard(ident)
            if cut and not conn.invalidated:
                conn.invalidate()

    @contextlib.contextmanager
    def txn(self) -> Iterator[Connection]:
        """One transaction on the pooled connection, tracked so `interrupt()` can cut it."""
        try:
            with self.engine.connect() as conn, self.tracked(conn), conn.begin():
                yield conn
        except DBAPIError as exc:
            raise translate(exc, self.masked_url) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error on {self.masked_url}: {type(exc).__name__}") from exc

    def run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, tried again when the database broke a deadlock."""
        for attempt in range(_DEADLOCK_TRIES):
            try:
                with self.txn() as conn:
                    return work(conn)
            except Deadlock:
                if attempt == _DEADLOCK_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def interrupt(self) -> None:
        """Cut the connections of calls in flight (their callers gave up on them)."""
        with self._lock:
            conns = list(self._in_flight.values())
            self._cut.update(self._in_flight)
        for dbapi_conn in conns:
            _shutdown_socket(dbapi_conn)

    def close(self) -> None:
        self.engine.dispose()

    # --- notifications on the query connection (PostgreSQL) ------------------------------

    def _listen_inline(self, dbapi_conn: Any, record: Any) -> None:
        """Each new pooled connection LISTENs for lease releases (a session setting that
        outlives transactions; a new connection after a cut one LISTENs again)."""
        dbapi_conn.add_notify_handler(lambda _notify: self._heard.set())
        dbapi_conn.execute("LISTEN fs_lease_released")
        dbapi_conn.commit()
        self._listening = dbapi_conn

    def notify_fd(self) -> int | None:
        """The socket to watch between calls for notifications, if the query connection
        LISTENs and is open (None: nothing to watch)."""
        conn = self._listening
        if conn is None:
            return None
        try:
            return int(conn.pgconn.socket) if not conn.closed else None
        except Exception:  # closed or broken: the next call reconnects and LISTENs again
            self._listening = None
            return None

    def take_notified(self) -> bool:
        """Did a lease release arrive since the last look? Reads what the idle connection
        has received without blocking (only between calls, from the lane's thread)."""
        conn = self._listening
        if conn is not None and not conn.closed:
            try:
                pgconn = conn.pgconn
                pgconn.consume_input()
                while pgconn.notifies() is not None:
                    self._heard.set()
            except Exception:  # the server closed it: stop watching until a reconnect
                self._listening = None
        heard = self._heard.is_set()
        self._heard.clear()
        return heard

    # --- schema upgrades ---------------------------------------------------------------------

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[Connection]:
        """Serialise upgrades across nodes: an advisory lock, or a file lock for SQLite.

        PostgreSQL: the whole upgrade is one transaction holding a transaction-scoped advisory
        lock (DDL is transactional there; alembic joins the open transaction instead of
        committing its own). A session lock would not work through a transaction-mode pooler,
        which may run the unlock on another server connection than the lock. It conflicts with
        the session lock older versions took on the same key, so mixed versions still queue.
        """
        try:
            with self.engine.connect() as conn, self.tracked(conn):  # interruptible too
                if self.backend == "postgresql":
                    with conn.begin():  # commits the upgrade, or rolls all of it back
                        # Waiting for another node's upgrade is fine; for ever is not.
                        conn.execute(text(
                            "SELECT set_config('statement_timeout', '120s', true),"
                            " set_config('lock_timeout', '120s', true)"))
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
                        yield conn
                elif self.backend in ("mysql", "mariadb"):
                    with self._mysql_lock(conn):
                        yield conn
                else:
                    with _file_lock(self.engine.url.database):
                        yield conn
                conn.commit()
        except DBAPIError as exc:
            raise translate(exc, self.masked_url) from exc

    @contextlib.contextmanager
    def _mysql_lock(self, conn: Connection) -> Iterator[None]:
        # Named after the database: lock names are server-wide, and fleets on other
        # databases of the server must not queue behind this one.
        got = conn.execute(text(f"SELECT GET_LOCK({MYSQL_MIGRATE_LOCK}, 120)"))
        if got.scalar() != 1:  # 0: timed out; NULL: an error. Never go on without it
            raise StoreError(f"database {self.masked_url}: another node's schema"
                             " upgrade held the migration lock for 120 s")
        try:
            yield
        finally:
            conn.execute(text(f"SELECT RELEASE_LOCK({MYSQL_MIGRATE_LOCK})"))


@contextlib.contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    path = Path(f"{database or 'supervisor.db'}-migrate.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _shutdown_socket(dbapi_conn: Any) -> None:
    """Unblock a thread stuck in recv() on this connection."""
    fd = None
    with contextlib.suppress(Exception):
        pgconn = getattr(dbapi_conn, "pgconn", None)
        if pgconn is not None:
            fd = pgconn.socket
        elif getattr(dbapi_conn, "_sock", None) is not None:
            fd = dbapi_conn._sock.fileno()
    if fd is None or fd < 0:
        return
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()

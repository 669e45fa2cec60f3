"""The coordination store on SQL: SQLite, PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL).

The only module that imports SQLAlchemy and the drivers. Contracts are in
`supervisor.store`; the details that make them hold here:

- Database time: `_db_now()` compiles to `clock_timestamp()` on PostgreSQL (not
  `now()`, which is frozen at the start of the transaction), `UTC_TIMESTAMP(6)` in
  a UTC session on MariaDB/MySQL, and the host clock on SQLite.
- Every write that can lose (acquire, renew, release, sync) is one guarded UPDATE
  that also stamps a fresh random `claim`; the outcome is read back with RETURNING
  where the dialect has it (PostgreSQL, SQLite), else by a locking re-select of
  that claim in the same transaction (MariaDB/MySQL). Row counts are never trusted.
- SQLite: WAL, a busy timeout, and `BEGIN IMMEDIATE` for every transaction, so
  concurrent writers queue instead of failing with "database is locked".
- Bounded calls: server-side statement and lock timeouts, driver connect/read
  timeouts, and `interrupt()`, which shuts down the sockets of calls in flight so a
  caller that gave up (a swallowed packet, a dead server) gets its thread back.
- Errors are translated at this seam: unreachable -> StoreUnavailable, else
  StoreError; messages are built from the masked URL, never the driver's text
  about the URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from supervisor.errors import StoreError, StoreUnavailable
from supervisor.model import mask_url
from supervisor.store import (
    CoordSlot,
    CronRun,
    Holder,
    Lease,
    LeaseState,
    Member,
    SyncResult,
    TermRecord,
)
from supervisor.store.dbclock import _claim, _DbNow, _now
from supervisor.store.schema import leases, members, terms
from supervisor.store.sql_coord import CoordSql
from supervisor.store.sql_cron import CronSql

MIGRATE_LOCK = 0x46535550  # "FSUP": the advisory lock id around schema upgrades
_DEADLOCK_TRIES = 3
T = TypeVar("T")


class _Deadlock(StoreError):
    """The database chose this transaction as a deadlock victim; it is safe to retry."""


class SqlStore(CronSql, CoordSql):
    """`CoordinationStore` over one SQLAlchemy engine of its own."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.masked_url = mask_url(url)
        self.timeout = timeout
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError):
            raise StoreError(f"invalid database URL {self.masked_url}") from None
        self.backend = parsed.get_backend_name()
        self._in_flight: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.engine = self._create_engine(parsed)
        self._returning = bool(self.engine.dialect.update_returning)

    # --- engine and connections ------------------------------------------------------------

    def _create_engine(self, parsed: Any) -> Engine:
        ms = max(1, int(self.timeout * 1000))
        secs = max(1, int(self.timeout + 0.999))
        kwargs: dict[str, Any] = {"pool_size": 2, "max_overflow": 4, "pool_recycle": 1800}
        if self.backend == "postgresql":
            kwargs["connect_args"] = {
                "connect_timeout": secs,
                "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
                "-c idle_in_transaction_session_timeout=60000",
                "tcp_user_timeout": ms,
                "keepalives_idle": secs,
                "application_name": "fleet-supervisor",
            }
        elif self.backend in ("mysql", "mariadb"):
            kwargs["connect_args"] = {
                "connect_timeout": secs,
                "read_timeout": secs,
                "write_timeout": secs,
                "init_command": f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {secs}",
            }
            kwargs["isolation_level"] = "READ COMMITTED"  # no gap locks between nodes' upserts
        elif self.backend == "sqlite":
            kwargs = {"connect_args": {"timeout": self.timeout, "check_same_thread": False}}
        engine = create_engine(parsed, **kwargs)
        if self.backend == "sqlite":
            _sqlite_immediate(engine, ms)
        return engine

    @contextlib.contextmanager
    def _txn(self) -> Iterator[Connection]:
        """One transaction on a pooled connection, tracked so `interrupt()` can cut it."""
        ident = threading.get_ident()
        try:
            with self.engine.connect() as conn:
                with self._lock:
                    self._in_flight[ident] = conn.connection.dbapi_connection
                try:
                    with conn.begin():
                        yield conn
                except BaseException:
                    conn.invalidate()  # its state is unknown: never hand it out again
                    raise
                finally:
                    with self._lock:
                        self._in_flight.pop(ident, None)
        except DBAPIError as exc:
            raise self._translate(exc) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error on {self.masked_url}: {type(exc).__name__}") from exc

    def _run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, tried again when the database broke a deadlock."""
        for attempt in range(_DEADLOCK_TRIES):
            try:
                with self._txn() as conn:
                    return work(conn)
            except _Deadlock:
                if attempt == _DEADLOCK_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: DBAPIError) -> StoreError:
        kind = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
        if _is_deadlock(exc):
            return _Deadlock(f"database {self.masked_url} aborted a deadlock ({kind})")
        if exc.connection_invalidated or _is_unreachable(exc):
            return StoreUnavailable(f"database {self.masked_url} unreachable ({kind})")
        return StoreError(f"database error on {self.masked_url} ({kind})")

    def interrupt(self) -> None:
        """Cut the connections of calls in flight (their callers gave up on them)."""
        with self._lock:
            conns = list(self._in_flight.values())
        for dbapi_conn in conns:
            _shutdown_socket(dbapi_conn)

    def close(self) -> None:
        self.engine.dispose()

    # --- schema ------------------------------------------------------------------------------

    def upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", "supervisor.store:migrations")
        with self._migration_lock() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        """Serialise upgrades across nodes: an advisory lock, or a file lock for SQLite."""
        try:
            with self.engine.connect() as conn:
                if self.backend == "postgresql":
                    # Waiting for another node's upgrade is fine; for ever is not.
                    conn.execute(text("SET statement_timeout = '120s'"))
                    conn.execute(text("SET lock_timeout = '120s'"))
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK})
                    conn.commit()
                    try:
                        yield conn
                    finally:
                        conn.rollback()
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK})
                        conn.commit()
                elif self.backend in ("mysql", "mariadb"):
                    conn.execute(text("SELECT GET_LOCK('fleet_supervisor_migrate', 120)"))
                    try:
                        yield conn
                    finally:
                        conn.execute(text("SELECT RELEASE_LOCK('fleet_supervisor_migrate')"))
                else:
                    with _file_lock(self.engine.url.database):
                        yield conn
                conn.commit()
        except DBAPIError as exc:
            raise self._translate(exc) from exc

    # --- leases ------------------------------------------------------------------------------

    def db_now(self) -> float:
        with self._txn() as conn:
            return float(conn.execute(select(_DbNow())).scalar_one())

    def lease_ensure(self, names: Sequence[str]) -> None:
        if names:
            self._run(lambda conn: self._ensure(conn, names))

    def _ensure(self, conn: Connection, names: Sequence[str]) -> None:
        rows = [{"name": name, "term": 0, "expires_at": 0.0} for name in names]
        if self.backend == "postgresql":
            conn.execute(pg_insert(leases).on_conflict_do_nothing(), rows)
        elif self.backend == "sqlite":
            conn.execute(sqlite_insert(leases).on_conflict_do_nothing(), rows)
        else:
            conn.execute(mysql_insert(leases).prefix_with("IGNORE"), rows)

    def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        # The row is created in a transaction of its own: on MariaDB an INSERT IGNORE and
        # the UPDATE in one transaction deadlock against a competitor doing the same.
        self.lease_ensure([name])
        return self._run(lambda conn: self._acquire(conn, [name], holder, ttl, now)).get(name)

    def _acquire(
        self, conn: Connection, names: Sequence[str], holder: Holder, ttl: float,
        now: float | None,
    ) -> dict[str, Lease]:
        claim = _claim()
        clock = _now(now)
        stmt = (
            update(leases)
            .where(leases.c.name.in_(names))
            .where(or_(leases.c.holder_nonce.is_(None), leases.c.expires_at <= clock))
            .values(
                term=leases.c.term + 1, holder_node=holder.node_id, holder_group=holder.group,
                holder_pid=holder.pid, holder_nonce=holder.nonce, claim=claim,
                acquired_at=clock, renewed_at=clock, expires_at=clock + ttl,
            )
        )
        rows = self._written(conn, stmt, claim)
        won = {row.name: Lease(row.name, holder, int(row.term), float(row.expires_at))
               for row in rows}
        for lease in won.values():
            self._record_term(conn, lease, now)
        return won

    def _record_term(self, conn: Connection, lease: Lease, now: float | None) -> None:
        clock = _now(now)
        conn.execute(
            update(terms)
            .where(terms.c.lease == lease.name, terms.c.term < lease.term,
                   terms.c.ended_at.is_(None))
            .values(ended_at=clock, outcome="expired", reason="lease expired")
        )
        h = lease.holder
        conn.execute(insert(terms).values(
            lease=lease.name, term=lease.term, holder_node=h.node_id, holder_group=h.group,
            holder_pid=h.pid, holder_nonce=h.nonce, acquired_at=clock,
        ))

    def _written(self, conn: Connection, stmt: Any, claim: str) -> list[Any]:
        """Run a claim-stamping UPDATE and read back the rows it really changed."""
        cols = (leases.c.name, leases.c.term, leases.c.expires_at)
        if self._returning:
            return list(conn.execute(stmt.returning(*cols)))
        conn.execute(stmt)
        return list(conn.execute(select(*cols).where(leases.c.claim == claim).with_for_update()))

    def lease_renew(self, lease: Lease, ttl: float, *, now: float | None = None) -> Lease | None:
        held = {lease.name: lease.term}
        return self._run(lambda conn: self._renew(conn, lease.holder, held, ttl, now)).get(
            lease.name)

    def _renew(
        self, conn: Connection, holder: Holder, held: dict[str, int], ttl: float,
        now: float | None,
    ) -> dict[str, Lease]:
        if not held:
            return {}
        claim = _claim()
        clock = _now(now)
        stmt = (
            update(leases)
            .where(tuple_(leases.c.name, leases.c.term).in_(list(held.items())),
                   leases.c.holder_nonce == holder.nonce, leases.c.expires_at > clock)
            .values(claim=claim, renewed_at=clock, expires_at=clock + ttl)
        )
        rows = self._written(conn, stmt, claim)
        return {row.name: Lease(row.name, holder, int(row.term), float(row.expires_at))
                for row in rows}

    def lease_release(
        self, lease: Lease, *, reason: str = "released", now: float | None = None
    ) -> bool:
        """Only an unexpired lease can be released: an expired one was lost, not given back
        (its term is closed as "expired" by `maintain` or the next acquire)."""
        return self._run(lambda conn: self._release(conn, lease, reason, now))

    def _release(self, conn: Connection, lease: Lease, reason: str, now: float | None) -> bool:
        claim = _claim()
        clock = _now(now)
        stmt = (
            update(leases)
            .where(leases.c.name == lease.name, leases.c.term == lease.term,
                   leases.c.holder_nonce == lease.holder.nonce, leases.c.expires_at > clock)
            .values(holder_node=None, holder_group=None, holder_pid=None,
                    holder_nonce=None, claim=claim, expires_at=clock)
        )
        if not self._written(conn, stmt, claim):
            return False
        conn.execute(
            update(terms)
            .where(terms.c.lease == lease.name, terms.c.term == lease.term,
                   terms.c.ended_at.is_(None))
            .values(ended_at=clock, outcome="released", reason=reason[:255])
        )
        if self.backend == "postgresql":
            conn.execute(text("SELECT pg_notify('fs_lease_released', :name)"),
                         {"name": lease.name})
        return True

    # --- the node's round trip -------------------------------------------------------------

    def node_sync(
        self,
        holder: Holder,
        *,
        held: Sequence[Lease],
        wanted: Sequence[str],
        ttl: float,
        runs: Sequence[CronRun] = (),
        coord_members: Sequence[str] = (),
        coord_slots: Sequence[CoordSlot] = (),
        coord_watch: Sequence[str] | None = None,
        now: float | None = None,
    ) -> SyncResult:
        def work(conn: Connection) -> SyncResult:
            db_now = self._heartbeat(conn, holder, ttl, now)
            kept = self._renew(conn, holder, {lease.name: lease.term for lease in held}, ttl, now)
            acquired = self._acquire(conn, wanted, holder, ttl, now) if wanted else {}
            lost = tuple(lease.name for lease in held if lease.name not in kept)
            runs_kept, runs_stop = self._renew_runs(conn, holder, runs, ttl, now)
            runs_lost = tuple(run.token for run in runs if run.token not in runs_kept)
            coord, slots_kept, slots_lost = self._coord_sync(
                conn, holder, coord_members, coord_watch, coord_slots, ttl, now)
            return SyncResult(db_now=db_now, kept=kept, lost=lost, acquired=acquired,
                              runs_kept=runs_kept, runs_lost=runs_lost, runs_stop=runs_stop,
                              coord=coord, slots_kept=slots_kept, slots_lost=slots_lost)

        return self._run(work)

    def _heartbeat(self, conn: Connection, holder: Holder, ttl: float, now: float | None) -> float:
        """Upsert this process's membership row; returns the database clock it used
        (read back with RETURNING where the dialect has it, else one more SELECT)."""
        clock = _now(now)
        values = {"heartbeat_at": clock, "expires_at": clock + ttl}
        row = {"nonce": holder.nonce, "node_id": holder.node_id, "group_name": holder.group,
               "pid": holder.pid, "started_at": clock, **values}
        if self.backend in ("postgresql", "sqlite"):
            upsert = (pg_insert if self.backend == "postgresql" else sqlite_insert)(members)
            stmt = upsert.values(row).on_conflict_do_update(index_elements=["nonce"], set_=values)
            return float(conn.execute(stmt.returning(members.c.heartbeat_at)).scalar_one())
        my = mysql_insert(members).values(row)
        conn.execute(my.on_duplicate_key_update(
            heartbeat_at=my.inserted.heartbeat_at, expires_at=my.inserted.expires_at))
        return float(conn.execute(select(members.c.heartbeat_at)
                                  .where(members.c.nonce == holder.nonce)).scalar_one())

    def node_leave(self, holder: Holder) -> None:
        def work(conn: Connection) -> None:
            conn.execute(delete(members).where(members.c.nonce == holder.nonce))
            self._coord_leave_all(conn, holder)

        self._run(work)

    def listen_released(self, wake: Callable[[], None], stop: threading.Event) -> bool:
        """PostgreSQL: call `wake` on every lease release until `stop`; False elsewhere."""
        if self.backend != "postgresql":
            return False
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        with psycopg.connect(conninfo, autocommit=True,
                             connect_timeout=max(1, int(self.timeout))) as conn:
            conn.execute("LISTEN fs_lease_released")
            while not stop.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    wake()
        return True

    # --- reading -------------------------------------------------------------------------------

    def members(self, *, now: float | None = None) -> list[Member]:
        with self._txn() as conn:
            rows = conn.execute(
                select(members).where(members.c.expires_at > _now(now))
                .order_by(members.c.node_id, members.c.started_at)
            )
            return [Member(Holder(r.node_id, r.group_name, r.pid, r.nonce),
                           float(r.started_at), float(r.expires_at)) for r in rows]

    def leases(self, *, now: float | None = None) -> list[LeaseState]:
        with self._txn() as conn:
            left = (leases.c.expires_at - _now(now)).label("left")
            rows = conn.execute(select(leases, left).order_by(leases.c.name))
            return [LeaseState(
                r.name, int(r.term),
                Holder(r.holder_node, r.holder_group, r.holder_pid, r.holder_nonce)
                if r.holder_nonce is not None else None,
                float(r.expires_at), float(r.left),
            ) for r in rows]

    def terms(self, *, lease: str | None = None, limit: int = 100) -> list[TermRecord]:
        query = select(terms).order_by(terms.c.acquired_at.desc(), terms.c.id.desc()).limit(limit)
        if lease is not None:  # the lease itself, or its per-group leases "lease/group"
            query = query.where(or_(terms.c.lease == lease,
                                    terms.c.lease.startswith(f"{lease}/", autoescape=True)))
        with self._txn() as conn:
            rows = conn.execute(query)
            return [TermRecord(
                r.lease, int(r.term),
                Holder(r.holder_node, r.holder_group, r.holder_pid, r.holder_nonce),
                float(r.acquired_at), None if r.ended_at is None else float(r.ended_at),
                r.outcome, r.reason,
            ) for r in rows]

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        """Close terms whose holder stopped renewing (outcome "expired") and cron runs
        whose node stopped renewing ("lost"); delete terms, runs and coordinated
        generations that ended more than `keep` seconds ago, at most `batch` of each, and
        expired coordinated memberships. Returns how many history rows were deleted."""
        clock = _now(now)
        current = leases.alias("current")
        same_term = and_(current.c.name == terms.c.lease, current.c.term == terms.c.term)
        with self._txn() as conn:
            conn.execute(
                update(terms)
                .where(terms.c.ended_at.is_(None))
                .where(~exists().where(same_term, current.c.holder_nonce.is_not(None),
                                       current.c.expires_at > clock))
                .values(
                    ended_at=func.coalesce(
                        select(current.c.expires_at).where(same_term).scalar_subquery(), clock),
                    outcome="expired", reason="the holder stopped renewing",
                )
            )
            old = conn.execute(
                select(terms.c.id).where(terms.c.ended_at.is_not(None),
                                         terms.c.ended_at < clock - keep).limit(batch)
            ).scalars().all()
            if old:
                conn.execute(delete(terms).where(terms.c.id.in_(old)))
            self._close_lost_runs(conn, now)
            pruned = self._prune_runs(conn, keep, now, batch)
            return len(old) + pruned + self._coord_maintain(conn, keep, now, batch)


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


@contextlib.contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    path = Path(f"{database or 'supervisor.db'}-migrate.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_MYSQL_UNREACHABLE = {2003, 2006, 2013, 2055, 1205, 1927, 3024}  # no route, gone, lost, timeouts
_MYSQL_DEADLOCK = {1213}


def _is_unreachable(exc: DBAPIError) -> bool:
    """The server could not be reached or did not answer in time (not: a bad query)."""
    orig = exc.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None) or ""
        # No SQLSTATE: the connection failed or timed out; 57014 statement timeout,
        # 55P03 lock timeout, 57P01-3 the server is shutting down, 08xxx connection.
        return sqlstate == "" or sqlstate[:2] == "08" or sqlstate in (
            "57014", "55P03", "57P01", "57P02", "57P03")
    if module.startswith("pymysql") and orig is not None:
        return bool(orig.args) and orig.args[0] in _MYSQL_UNREACHABLE
    if module.startswith("sqlite3"):
        text_ = str(orig).lower()
        return "locked" in text_ or "unable to open" in text_ or "disk i/o" in text_
    return isinstance(orig, OSError | TimeoutError)


def _is_deadlock(exc: DBAPIError) -> bool:
    orig = exc.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) in ("40P01", "40001")
    if module.startswith("pymysql") and orig is not None:
        return bool(orig.args) and orig.args[0] in _MYSQL_DEADLOCK
    return False


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

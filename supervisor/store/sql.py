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
- Fencing tokens survive rows deleted or set back by hand: a term granted is above the
  history's highest for the lease too, a vanished row is restored from the history
  (`lease_ensure`), and pruning keeps each lease's newest term. A row the database
  refuses fails only its own part of `node_sync` (store/refusals.py).
- SQLite: WAL, a busy timeout, and `BEGIN IMMEDIATE` for every transaction, so
  concurrent writers queue instead of failing with "database is locked".
- Bounded calls: server-side statement and lock timeouts, driver connect/read
  timeouts, and `interrupt()`, which shuts down the sockets of calls in flight so a
  caller that gave up (a swallowed packet, a dead server) gets its thread back.
- Orphaned transactions: the server ends a transaction idle for the store's timeout
  (PostgreSQL `idle_in_transaction_session_timeout`, MariaDB `idle_transaction_timeout`),
  so a node cut off mid-transaction does not hold rows every other node's sync needs.
- Errors are translated at this seam (store/classify.py): a failed connection ->
  TooManyClients, AuthenticationFailed, DatabaseMissing or StoreUnavailable,
  unreachable -> StoreUnavailable, else StoreError; messages are built from the masked
  URL, never the driver's text about the URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Engine,
    and_,
    case,
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

from supervisor.errors import StoreError, StoreRefused
from supervisor.model import mask_url, per_group_prefix
from supervisor.store import (
    CoordSlot,
    CronRun,
    Holder,
    Lease,
    LeaseState,
    Member,
    NodeFacts,
    SyncResult,
    TermRecord,
)
from supervisor.store.classify import Deadlock, refusal_cause, refusal_reason, translate
from supervisor.store.dbclock import _claim, _DbNow, _now
from supervisor.store.refusals import Apart, RowRefused, fit, guarded, in_parts
from supervisor.store.schema import leases, members, terms
from supervisor.store.sql_coord import CoordSql, starts_with
from supervisor.store.sql_cron import CronSql

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState

MIGRATE_LOCK = 0x46535550  # "FSUP": the advisory lock id around schema upgrades
_DEADLOCK_TRIES = 3
_TERM_MAX = 2**63 - 1  # BIGINT: a fencing token must fit every database's column
_NO_HOLDER: dict[str, Any] = dict.fromkeys(
    ("holder_node", "holder_group", "holder_pid", "holder_nonce", "claim", "acquired_at",
     "renewed_at"))
T = TypeVar("T")


class SqlStore(CronSql, CoordSql):
    """`CoordinationStore` over one SQLAlchemy engine of its own."""

    def __init__(self, url: str, *, timeout: float = 5.0, listen_url: str = "") -> None:
        """`listen_url` is where `listen_released` LISTENs: "" the same database as `url`,
        "none" nowhere (polling only, e.g. behind a transaction-mode PgBouncer with no
        direct route), else a postgresql+psycopg URL of the same database, direct."""
        self.url = url
        self.listen_url = listen_url
        self.masked_url = mask_url(url)
        self.timeout = timeout
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError):
            raise StoreError(f"invalid database URL {self.masked_url}") from None
        self.backend = parsed.get_backend_name()
        self._in_flight: dict[int, Any] = {}
        self._cut: set[int] = set()  # threads whose connection `interrupt()` cut
        self._lock = threading.Lock()
        # PostgreSQL, listen_url "": the pooled connection itself LISTENs (one session for
        # queries and notifications); `_listening` is its psycopg connection, `_heard` is
        # set by notifications psycopg reads during queries.
        self._listens_inline = self.backend == "postgresql" and listen_url == ""
        self._listening: Any = None
        self._heard = threading.Event()
        self.engine = self._create_engine(parsed)
        self._returning = bool(self.engine.dialect.update_returning)

    # --- engine and connections ------------------------------------------------------------

    def _create_engine(self, parsed: Any) -> Engine:
        ms = max(1, int(self.timeout * 1000))
        secs = max(1, int(self.timeout + 0.999))
        # The longest a transaction may sit idle holding row locks before the server ends
        # it: the store's timeout, the bound of every call. A node cut off mid-transaction
        # (its packets dropped, its process stopped) must not hold rows every other node's
        # sync waits for (the coordinated state row, its own membership) until TCP gives
        # up; a live node has cut its own call by then (the lane abandons it at its bound),
        # so this ends orphans only. Others waiting on an orphan's rows wait at most this.
        # (`_pg_timeouts`, `_mariadb_idle_hold`)
        # One connection, never more: every call of a running node goes through its one
        # database lane (coordination/dblane.py), and one-shot commands call one at a time.
        # A checkout that would wait for the slot fails after the store's timeout instead.
        one = {"pool_size": 1, "max_overflow": 0, "pool_timeout": self.timeout}
        kwargs: dict[str, Any] = {**one, "pool_recycle": 1800}
        if self.backend == "postgresql":
            # No startup `options` and no prepared statements: a pooler in transaction mode
            # (PgBouncer) refuses unknown startup parameters and may run each transaction on
            # another server connection, where a prepared statement does not exist. The
            # server-side timeouts are set per transaction instead (`_pg_timeouts`).
            kwargs["connect_args"] = {
                "connect_timeout": secs,
                "prepare_threshold": None,
                "tcp_user_timeout": ms,
                "keepalives_idle": secs,
                # One name for every node, never the node's own: a transaction-mode
                # pooler re-SETs application_name on its server connection whenever the
                # next client's differs, one more server transaction per transaction.
                "application_name": "fleet-supervisor",
            }
        elif self.backend in ("mysql", "mariadb"):
            kwargs["connect_args"] = {
                "connect_timeout": secs,
                "read_timeout": secs,
                "write_timeout": secs,
                # Strict on every connection, whatever the server's default: an over-long
                # or invalid value is an error, never silently truncated or coerced.
                "init_command": f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {secs},"
                                f" sql_mode = '{_MYSQL_SQL_MODE}'",
            }
            kwargs["isolation_level"] = "READ COMMITTED"  # no gap locks between nodes' upserts
        elif self.backend == "sqlite":
            kwargs = {"connect_args": {"timeout": self.timeout, "check_same_thread": False}}
            if parsed.database not in (None, "", ":memory:"):
                kwargs.update(one)
        engine = create_engine(parsed, **kwargs)
        if self.backend == "sqlite":
            _sqlite_immediate(engine, ms)
        elif self.backend in ("mysql", "mariadb"):
            _mariadb_idle_hold(engine, secs)
        elif self.backend == "postgresql":
            _pg_timeouts(engine, ms)
            if self._listens_inline:
                event.listen(engine, "connect", self._listen_inline)
        return engine

    # --- notifications on the query connection (PostgreSQL) ------------------------------

    def _listen_inline(self, dbapi_conn: Any, record: Any) -> None:
        """Each new pooled connection LISTENs for lease releases (a session setting that
        outlives transactions; a new connection after a cut one LISTENs again)."""
        dbapi_conn.add_notify_handler(lambda _notify: self._heard.set())
        dbapi_conn.execute("LISTEN fs_lease_released")
        dbapi_conn.commit()
        self._listening = dbapi_conn

    def notify_fd(self) -> int | None:
        """The socket to watch between calls for notifications, if this store LISTENs on
        its query connection and that connection is open (None: nothing to watch)."""
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

    @contextlib.contextmanager
    def _tracked(self, conn: Connection) -> Iterator[Connection]:
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
    def _txn(self) -> Iterator[Connection]:
        """One transaction on a pooled connection, tracked so `interrupt()` can cut it."""
        try:
            with self.engine.connect() as conn, self._tracked(conn), conn.begin():
                yield conn
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
            except Deadlock:
                if attempt == _DEADLOCK_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: DBAPIError) -> StoreError:
        return translate(exc, self.masked_url)

    def interrupt(self) -> None:
        """Cut the connections of calls in flight (their callers gave up on them)."""
        with self._lock:
            conns = list(self._in_flight.values())
            self._cut.update(self._in_flight)
        for dbapi_conn in conns:
            _shutdown_socket(dbapi_conn)

    def close(self) -> None:
        self.engine.dispose()

    # --- schema ------------------------------------------------------------------------------

    def upgrade(self) -> SchemaState:
        """Bring the schema to this release's head, under the fleet-wide migration lock.

        A schema newer than this release knows is left alone: returned as is when its
        recorded min_release admits this release, else `SchemaNewer` (store/compat.py)."""
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError

        from supervisor.store.compat import SchemaState, inspect_schema

        cfg = Config()
        cfg.set_main_option("script_location", "supervisor.store:migrations")
        with self._migration_lock() as conn:
            state = inspect_schema(conn)
            if state.newer or state.revision == state.head:
                return state
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:  # Alembic's own refusal: no traceback for it
                raise StoreError(f"schema upgrade of {self.masked_url} refused: {exc}") from exc
            return SchemaState(state.head, state.head)

    def schema_state(self) -> SchemaState:
        """The schema as this release sees it, without changing it (`SchemaNewer` when
        it needs a later release; revision None when there is none)."""
        from supervisor.store.compat import inspect_schema

        with self._txn() as conn:
            return inspect_schema(conn)

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        """Serialise upgrades across nodes: an advisory lock, or a file lock for SQLite.

        PostgreSQL: the whole upgrade is one transaction holding a transaction-scoped advisory
        lock (DDL is transactional there; alembic joins the open transaction instead of
        committing its own). A session lock would not work through a transaction-mode pooler,
        which may run the unlock on another server connection than the lock. It conflicts with
        the session lock older versions took on the same key, so mixed versions still queue.
        """
        try:
            with self.engine.connect() as conn, self._tracked(conn):  # interruptible too
                if self.backend == "postgresql":
                    with conn.begin():  # commits the upgrade, or rolls all of it back
                        # Waiting for another node's upgrade is fine; for ever is not.
                        conn.execute(text(
                            "SELECT set_config('statement_timeout', '120s', true),"
                            " set_config('lock_timeout', '120s', true)"))
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
                        yield conn
                elif self.backend in ("mysql", "mariadb"):
                    # Named after the database: lock names are server-wide, and fleets on
                    # other databases of the server must not queue behind this one.
                    got = conn.execute(text(f"SELECT GET_LOCK({MYSQL_MIGRATE_LOCK}, 120)"))
                    if got.scalar() != 1:  # 0: timed out; NULL: an error. Never go on without it
                        raise StoreError(f"database {self.masked_url}: another node's schema"
                                         " upgrade held the migration lock for 120 s")
                    try:
                        yield conn
                    finally:
                        conn.execute(text(f"SELECT RELEASE_LOCK({MYSQL_MIGRATE_LOCK})"))
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

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        if not names:
            return
        try:
            self._run(lambda conn: self._ensure(conn, names, now))
        except StoreError as exc:
            cause = refusal_cause(exc)
            if cause is None:
                raise
            raise StoreRefused(
                f"database {self.masked_url} refused the rows of leases {', '.join(names)}:"
                f" {refusal_reason(cause, self._password())}") from exc

    def _ensure(self, conn: Connection, names: Sequence[str], now: float | None) -> None:
        """Insert the rows of `names` that are missing: one SELECT when none is.

        A row that vanished is restored from the history (see `lease_ensure`): its last
        term, and unless that term was released its holder, with `renewed_at` and
        `expires_at` now and no claim, which `_acquire` reads as held for one more TTL."""
        have = set(conn.execute(select(leases.c.name).where(leases.c.name.in_(names))).scalars())
        rows = {name: {"name": name, "term": 0, "expires_at": 0.0, **_NO_HOLDER}
                for name in names if name not in have}
        if not rows:
            return
        last = (select(terms.c.lease, func.max(terms.c.term).label("term"))
                .where(terms.c.lease.in_(list(rows))).group_by(terms.c.lease).subquery())
        found = conn.execute(select(terms).join(
            last, and_(terms.c.lease == last.c.lease, terms.c.term == last.c.term))).all()
        clock = float(conn.execute(select(_now(now))).scalar_one()) if found else 0.0
        for r in found:
            row = rows[r.lease]
            row["term"] = int(r.term)
            if r.outcome != "released":  # it may still run: its renewal fails, then it stops
                row.update(holder_node=r.holder_node, holder_group=r.holder_group,
                           holder_pid=r.holder_pid, holder_nonce=r.holder_nonce,
                           acquired_at=r.acquired_at, renewed_at=clock, expires_at=clock)
        self._insert_leases(conn, list(rows.values()))

    def _insert_leases(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        fit(leases, rows)
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
        self.lease_ensure([name], now=now)
        return self._run(lambda conn: self._acquire(conn, [name], holder, ttl, now)).get(name)

    def _acquire(
        self, conn: Connection, names: Sequence[str], holder: Holder, ttl: float,
        now: float | None,
    ) -> dict[str, Lease]:
        claim = _claim()
        clock = _now(now)
        # A row `_ensure` restored (a holder, no claim) is held until a TTL after that.
        restored_over = or_(leases.c.claim.is_not(None),
                            func.coalesce(leases.c.renewed_at, 0.0) + ttl <= clock)
        # The next term is above the history's too (evaluated only for rows taken here):
        # a row set back or re-created by hand never grants a term twice.
        recorded = func.coalesce(select(func.max(terms.c.term))
                                 .where(terms.c.lease == leases.c.name).scalar_subquery(), 0)
        stmt = (
            update(leases)
            .where(leases.c.name.in_(names))
            .where(or_(leases.c.holder_nonce.is_(None),
                       and_(leases.c.expires_at <= clock, restored_over)))
            .values(
                term=case((recorded > leases.c.term, recorded), else_=leases.c.term) + 1,
                holder_node=holder.node_id, holder_group=holder.group,
                holder_pid=holder.pid, holder_nonce=holder.nonce, claim=claim,
                acquired_at=clock, renewed_at=clock, expires_at=clock + ttl,
            )
        )
        rows = self._written(conn, stmt, claim)
        for row in rows:
            if type(row.term) is not int or row.term > _TERM_MAX:  # SQLite overflows to REAL
                raise RowRefused(f"the term of lease {row.name} is out of range ({row.term})")
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
        """One transaction, no savepoints; if a refused row failed it, once more with each
        lease, run and coordinated key apart, so that one bad row fails only its own part
        (supervisor/store/refusals.py)."""

        def work(conn: Connection, apart: Apart | None) -> SyncResult:
            db_now = self._heartbeat(conn, holder, ttl, now)
            kept, acquired = self._sync_leases(conn, apart, holder, held, wanted, ttl, now)
            runs_kept, runs_stop = self._sync_runs(conn, apart, holder, runs, ttl, now)
            coord, slots_kept = self._coord_sync_parts(
                conn, apart, holder, coord_members, coord_watch, coord_slots, ttl, now)
            slots = dict.fromkeys((slot.worker_key, slot.index) for slot in coord_slots)
            return SyncResult(
                db_now=db_now, kept=kept, acquired=acquired,
                lost=tuple(lease.name for lease in held if lease.name not in kept),
                runs_kept=runs_kept, runs_stop=runs_stop,
                runs_lost=tuple(run.token for run in runs if run.token not in runs_kept),
                coord=coord, slots_kept=slots_kept,
                slots_lost=tuple(key for key in slots if key not in slots_kept),
                refused=() if apart is None else tuple(apart.refused))

        try:
            return self._run(lambda conn: work(conn, None))
        except StoreError as exc:
            if refusal_cause(exc) is None:
                raise
        return self._run(lambda conn: work(conn, Apart(self._password())))

    def _sync_leases(
        self, conn: Connection, apart: Apart | None, holder: Holder, held: Sequence[Lease],
        wanted: Sequence[str], ttl: float, now: float | None,
    ) -> tuple[dict[str, Lease], dict[str, Lease]]:
        """Renew `held` and try `wanted`: one statement each, or apart one per lease."""
        kept: dict[str, Lease] = {}
        for part in in_parts(held, apart):
            with guarded(apart, conn, "lease", part[0].name):
                kept.update(self._renew(conn, holder, {lease.name: lease.term for lease in part},
                                        ttl, now))
        acquired: dict[str, Lease] = {}
        for names in in_parts(wanted, apart):
            with guarded(apart, conn, "lease", names[0]):
                acquired.update(self._acquire(conn, names, holder, ttl, now))
        return kept, acquired

    def _password(self) -> str | None:
        """What a refusal's reason must never show (databases do not quote it; belt and
        braces)."""
        password = make_url(self.url).password
        return None if password is None else str(password)

    def _heartbeat(self, conn: Connection, holder: Holder, ttl: float, now: float | None) -> float:
        """Upsert this process's membership row; returns the database clock it used
        (read back with RETURNING where the dialect has it, else one more SELECT). The
        holder's facts (release, time-zone data) go in with the insert only: they do not
        change while the process lives, so a heartbeat writes nothing more than before."""
        clock = _now(now)
        values = {"heartbeat_at": clock, "expires_at": clock + ttl}
        facts = holder.facts or NodeFacts()
        row = {"nonce": holder.nonce, "node_id": holder.node_id, "group_name": holder.group,
               "pid": holder.pid, "started_at": clock, **values,
               "release": _fits(facts.release), "tz_source": _fits(facts.tz_source),
               "tz_version": _fits(facts.tz_version)}
        fit(members, [row])
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
        """With a direct listen_url (a pooler in transaction mode in front of `url`): call
        `wake` on every lease release until `stop`, on a second connection of its own.
        False elsewhere: with listen_url "" the query connection LISTENs itself
        (`notify_fd`, `take_notified`), with "none" nobody does (polling only; LISTEN
        needs a session, which a pooler in transaction mode does not give)."""
        if self.backend != "postgresql" or self.listen_url in ("", "none"):
            return False
        import psycopg

        url = make_url(self.listen_url)
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
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
                           float(r.started_at), float(r.expires_at),
                           r.release, r.tz_source, r.tz_version) for r in rows]

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
                                    starts_with(terms.c.lease, per_group_prefix(lease),
                                                self.backend)))
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
            # Never a lease's newest term: a lease row that vanished is restored from it
            # (lease_ensure), so its fencing tokens go on growing after any pruning.
            newer = terms.alias("newer")
            old = conn.execute(
                select(terms.c.id).where(terms.c.ended_at.is_not(None),
                                         terms.c.ended_at < clock - keep,
                                         exists().where(newer.c.lease == terms.c.lease,
                                                        newer.c.term > terms.c.term))
                .limit(batch)
            ).scalars().all()
            if old:
                conn.execute(delete(terms).where(terms.c.id.in_(old)))
            # Members whose node stopped heartbeating (killed, crashed): the table keeps
            # live nodes only, so it stays small and needs no index on expires_at.
            conn.execute(delete(members).where(members.c.expires_at <= clock))
            self._close_lost_runs(conn, now)
            pruned = self._prune_runs(conn, keep, now, batch)
            return len(old) + pruned + self._coord_maintain(conn, keep, now, batch)


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


# The migration lock's name on MariaDB/MySQL (at most 64 characters): one per database.
MYSQL_MIGRATE_LOCK = "CONCAT('fs_migrate_', SHA1(DATABASE()))"

_MYSQL_SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                   "NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO")


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


def _fits(fact: str | None, width: int = 32) -> str | None:
    """A node fact cut to its column's width (fs_members' String(32)): a strict MariaDB
    refuses a longer value, and a fact is worth less than the node's heartbeat."""
    return None if fact is None else fact[:width]

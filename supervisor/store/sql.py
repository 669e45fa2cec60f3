"""The coordination store on SQL: SQLite, PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL).

`SqlStore` is a facade: it holds one `Database` (store/database.py: the engine, its one
connection, transactions, interruption, errors translated) and composes the entity
stores, each given that database and its `Dialect` (store/dialect.py, the SQL that
differs per database):

    sql_leases.py  LeaseSql   leases and their terms
    sql_nodes.py   NodeSql    node membership (the heartbeat)
    sql_cron.py    CronSql    cron runs
    sql_coord.py   CoordSql   coordinated memberships, generations and assignments
    sql_coord_slots.py  CoordSlotSql  coordinated slots, behind the barrier
    sql_control.py ControlSql fleet control: pauses, drains, handovers, the control log

Contracts are in `supervisor.store`; what this module adds:

- `node_sync` is one transaction for everything a node holds, without savepoints; if a
  refused row failed it, it runs once more with each lease, run and coordinated key
  apart, so that one bad row fails only its own part (store/refusals.py);
- `maintain` is one transaction of small batches over every entity;
- schema upgrades run under the fleet-wide migration lock (`Database.migration_lock`),
  and a schema newer than this release is judged by store/compat.py;
- errors are translated at this seam (store/classify.py): nothing above the store sees a
  driver's exception or text; messages are built from the masked URL.

The store modules are the only ones that import SQLAlchemy and the drivers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from supervisor.errors import SchemaMissing, StoreError
from supervisor.model import mask_url
from supervisor.store import (
    ClaimOutcome,
    ControlAction,
    ControlEntry,
    ControlState,
    CoordGeneration,
    CoordSlot,
    CoordStatus,
    CronRecorded,
    CronRun,
    CronRunRecord,
    Holder,
    Lease,
    LeaseState,
    NodeMember,
    NodeReport,
    SyncResult,
    TermRecord,
    TriggerRequest,
)
from supervisor.store.classify import refusal_cause
from supervisor.store.database import MIGRATE_LOCK, MYSQL_MIGRATE_LOCK, Database
from supervisor.store.dialect import clock
from supervisor.store.drivers import require_driver
from supervisor.store.refusals import Apart
from supervisor.store.sql_control import ControlSql
from supervisor.store.sql_coord import CoordSql
from supervisor.store.sql_coord_slots import CoordSlotSql
from supervisor.store.sql_cron import CronSql
from supervisor.store.sql_leases import LeaseSql
from supervisor.store.sql_nodes import NodeSql
from supervisor.store.sql_triggers import TriggerSql

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState

__all__ = ["MIGRATE_LOCK", "MYSQL_MIGRATE_LOCK", "SqlStore"]


class SqlStore:
    """`CoordinationStore` over one SQLAlchemy engine of its own."""

    def __init__(self, url: str, *, timeout: float = 5.0, listen_url: str = "") -> None:
        """`listen_url` is where `listen_released` LISTENs: "" the same database as `url`,
        "none" nowhere (polling only, e.g. behind a transaction-mode PgBouncer with no
        direct route), else a postgresql+psycopg URL of the same database, direct."""
        self.url = url
        self.listen_url = listen_url
        self.masked_url = mask_url(url)
        self.timeout = timeout
        require_driver(url)  # DriverMissing, naming the extra, rather than an ImportError
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError):
            raise StoreError(f"invalid database URL {self.masked_url}") from None
        self.backend = parsed.get_backend_name()
        # PostgreSQL, listen_url "": the pooled connection itself LISTENs (one session for
        # queries and notifications).
        self._db = Database(parsed, self.masked_url, timeout,
                            listen_inline=self.backend == "postgresql" and listen_url == "")
        self.engine = self._db.engine
        secret = None if parsed.password is None else str(parsed.password)
        self._secret = secret  # what a refusal's reason must never show
        self._leases = LeaseSql(self._db, secret)
        self._nodes = NodeSql(self._db)
        self._cron = CronSql(self._db)
        self._triggers = TriggerSql(self._db, self._cron)
        self._slots = CoordSlotSql(self._db)
        self._coord = CoordSql(self._db, self._slots)
        self._control = ControlSql(self._db)

    # --- connections -------------------------------------------------------------------------

    def _txn(self) -> contextlib.AbstractContextManager[Connection]:
        """One transaction (tests use it to look at rows)."""
        return self._db.txn()

    def notify_fd(self) -> int | None:
        """The socket to watch between calls for lease releases, if this store LISTENs on
        its query connection and that connection is open (None: nothing to watch)."""
        return self._db.notify_fd()

    def take_notified(self) -> bool:
        """Did a lease release arrive since the last look? (between calls only)"""
        return self._db.take_notified()

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

    def interrupt(self) -> None:
        """Cut the connections of calls in flight (their callers gave up on them)."""
        self._db.interrupt()

    def close(self) -> None:
        self._db.close()

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
        with self._db.migration_lock() as conn:
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

        with self._db.txn() as conn:
            return inspect_schema(conn)

    def require_schema(self) -> SchemaState:
        """`schema_state`, or `SchemaMissing` when the database has no schema of ours."""
        state = self.schema_state()
        if state.revision is None:
            raise SchemaMissing(f"database {self.masked_url} has no fleet-supervisor"
                                " schema yet: run `supervisor db upgrade` or start a node")
        return state

    # --- the node's round trip ---------------------------------------------------------------

    def db_now(self) -> float:
        with self._db.txn() as conn:
            return float(conn.execute(select(clock())).scalar_one())

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
        cron_workers: Sequence[str] = (),
        control_since: int | None = None,
        report: NodeReport | None = None,
        now: float | None = None,
    ) -> SyncResult:
        """One transaction, no savepoints; if a refused row failed it, once more with each
        lease, run and coordinated key apart, so that one bad row fails only its own part
        (supervisor/store/refusals.py)."""

        def work(conn: Connection, apart: Apart | None) -> SyncResult:
            db_now = self._nodes.heartbeat(conn, holder, ttl, now)
            if report is not None:
                self._control.report(conn, holder, report)
            kept, acquired = self._leases.sync(conn, apart, holder, held, wanted, ttl, now)
            runs_kept, runs_stop = self._cron.sync(conn, apart, holder, runs, ttl, now)
            coord, slots_kept = self._coord.sync(
                conn, apart, holder, coord_members, coord_watch, coord_slots, ttl, now)
            slots = dict.fromkeys((slot.worker_key, slot.index) for slot in coord_slots)
            return SyncResult(
                db_now=db_now, kept=kept, acquired=acquired,
                lost=tuple(lease.name for lease in held if lease.name not in kept),
                runs_kept=runs_kept, runs_stop=runs_stop,
                runs_lost=tuple(run.token for run in runs if run.token not in runs_kept),
                coord=coord, slots_kept=slots_kept,
                slots_lost=tuple(key for key in slots if key not in slots_kept),
                refused=() if apart is None else tuple(apart.refused),
                triggers=self._triggers.pending(conn, cron_workers, now),
                control=None if control_since is None else self._control.state(conn,
                                                                                control_since))

        try:
            return self._db.run(lambda conn: work(conn, None))
        except StoreError as exc:
            if refusal_cause(exc) is None:
                raise
        return self._db.run(lambda conn: work(conn, Apart(self._secret)))

    def node_leave(self, holder: Holder) -> None:
        def work(conn: Connection) -> None:
            self._nodes.leave(conn, holder)
            self._coord.leave_all(conn, holder)

        self._db.run(work)

    def members(self, *, now: float | None = None) -> list[NodeMember]:
        return self._nodes.members(now=now)

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        """Close terms whose holder stopped renewing (outcome "expired") and cron runs
        whose node stopped renewing ("lost"); delete terms, runs and coordinated
        generations that ended more than `keep` seconds ago, at most `batch` of each, and
        expired memberships. Returns how many history rows were deleted."""
        with self._db.txn() as conn:
            pruned = self._leases.maintain(conn, keep, now, batch)
            self._nodes.prune(conn, now)
            self._cron.close_lost(conn, now)
            pruned += self._triggers.maintain(conn, keep, now, batch)
            pruned += self._cron.prune(conn, keep, now, batch)
            return pruned + self._coord.maintain(conn, keep, now, batch)

    # --- leases ------------------------------------------------------------------------------

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        self._leases.lease_ensure(names, now=now)

    def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        return self._leases.lease_acquire(name, holder, ttl, now=now)

    def lease_renew(self, lease: Lease, ttl: float, *, now: float | None = None) -> Lease | None:
        return self._leases.lease_renew(lease, ttl, now=now)

    def lease_release(
        self, lease: Lease, *, reason: str = "released", now: float | None = None
    ) -> bool:
        return self._leases.lease_release(lease, reason=reason, now=now)

    def leases(self, *, now: float | None = None) -> list[LeaseState]:
        return self._leases.leases(now=now)

    def terms(self, *, lease: str | None = None, limit: int = 100) -> list[TermRecord]:
        return self._leases.terms(lease=lease, limit=limit)

    # --- cron --------------------------------------------------------------------------------

    def cron_claim(
        self, worker: str, tick: float, *, holder: Holder, max_run: int,
        max_per_node: int = 1, ttl: float, grace: float, forbid_overlap: bool = False,
        replace_earlier: bool = False, now: float | None = None,
    ) -> ClaimOutcome:
        return self._cron.cron_claim(
            worker, tick, holder=holder, max_run=max_run, max_per_node=max_per_node, ttl=ttl,
            grace=grace, forbid_overlap=forbid_overlap, replace_earlier=replace_earlier,
            now=now)

    def cron_earlier_running(self, worker: str, tick: float, *,
                             now: float | None = None) -> int:
        return self._cron.cron_earlier_running(worker, tick, now=now)

    def cron_finish(
        self, run: CronRun, state: str, *, exit_code: int | None = None,
        reason: str | None = None, child_pid: int | None = None, now: float | None = None,
    ) -> bool:
        return self._cron.cron_finish(run, state, exit_code=exit_code, reason=reason,
                                      child_pid=child_pid, now=now)

    def cron_trigger(
        self, worker: str, key: str, *, actor_user: str, actor_host: str,
        reason: str | None = None, grace: float, now: float | None = None,
    ) -> TriggerRequest:
        return self._triggers.cron_trigger(worker, key, actor_user=actor_user,
                                           actor_host=actor_host, reason=reason, grace=grace,
                                           now=now)

    def cron_claim_trigger(
        self, trigger_id: int, *, holder: Holder, max_run: int, max_per_node: int = 1,
        ttl: float, forbid_overlap: bool = False, replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        return self._triggers.cron_claim_trigger(
            trigger_id, holder=holder, max_run=max_run, max_per_node=max_per_node, ttl=ttl,
            forbid_overlap=forbid_overlap, replace_earlier=replace_earlier, now=now)

    def cron_trigger_blocking(self, worker: str, trigger_id: int, *,
                              now: float | None = None) -> int:
        return self._triggers.cron_trigger_blocking(worker, trigger_id, now=now)

    def lease_child_pid(self, lease: Lease, pid: int) -> None:
        self._leases.lease_child_pid(lease, pid)

    def cron_runs(self, *, worker: str | None = None, limit: int = 100) -> list[CronRunRecord]:
        return self._cron.cron_runs(worker=worker, limit=limit)

    def cron_recorded(self, worker: str, since: float) -> CronRecorded:
        return self._cron.cron_recorded(worker, since)

    def cron_record_missed(
        self, worker: str, ticks: Sequence[float], *, grace: float, reason: str,
        state: str = "missed", now: float | None = None,
    ) -> list[float]:
        return self._cron.cron_record_missed(worker, ticks, grace=grace, reason=reason,
                                             state=state, now=now)

    # --- coordinated -------------------------------------------------------------------------

    def coord_publish(
        self, worker_key: str, *, expected: int, members: Sequence[Holder], count: int,
        indexes: Sequence[int | None] | None = None, now: float | None = None,
    ) -> int | None:
        return self._coord.coord_publish(worker_key, expected=expected, members=members,
                                         count=count, indexes=indexes, now=now)

    def coord_acquire_slot(
        self, worker_key: str, index: int, generation: int, holder: Holder, ttl: float, *,
        now: float | None = None,
    ) -> CoordSlot | None:
        return self._slots.coord_acquire_slot(worker_key, index, generation, holder, ttl,
                                              now=now)

    def coord_release_slot(self, slot: CoordSlot, *, now: float | None = None) -> bool:
        return self._slots.coord_release_slot(slot, now=now)

    def coord_leave(self, worker_key: str, holder: Holder) -> None:
        self._coord.coord_leave(worker_key, holder)

    def coord_view(self, worker_key: str, *, now: float | None = None) -> CoordStatus:
        return self._coord.coord_view(worker_key, now=now)

    def coord_generations(
        self, *, worker_key: str | None = None, limit: int = 100
    ) -> list[CoordGeneration]:
        return self._coord.coord_generations(worker_key=worker_key, limit=limit)


    # --- fleet control -------------------------------------------------------------------------

    def control_set(self, kind: str, target: str, group: str, *, user: str, host: str,
                    reason: str, stop_running: bool = False, hold_out: float | None = None,
                    holder_nonce: str | None = None, now: float | None = None
                    ) -> ControlEntry:
        return self._control.control_set(kind, target, group, user=user, host=host,
                                         reason=reason, stop_running=stop_running,
                                         hold_out=hold_out, holder_nonce=holder_nonce,
                                         now=now)

    def control_clear(self, kind: str, target: str, group: str, *, user: str, host: str,
                      reason: str, now: float | None = None) -> bool:
        return self._control.control_clear(kind, target, group, user=user, host=host,
                                           reason=reason, now=now)

    def control_state(self) -> ControlState:
        return self._control.control_state()

    def control_log(self, *, limit: int = 100) -> list[ControlAction]:
        return self._control.control_log(limit=limit)

"""The coordination store in memory: the same contracts as SqlStore, for fast tests.

Like apscheduler's memory data store, `MemoryStore` implements every contract of the
`CoordinationStore` protocol (supervisor/store/__init__.py) and passes the same
conformance suite as SqlStore (tests/integration/test_store*.py, backend "memory"). It
is pure Python and imports no SQLAlchemy; nothing in production uses it yet.

What stands for the database:
- Time: a call's `now=` when given, else the injected `clock` (default `time.time`),
  read once per call, so one call decides by one instant as one SQL statement does.
- Transactions: one lock around every call; each call is one atomic step, so what SQL
  needs row locks, guarded UPDATEs and re-checks for holds here by construction.
- Tables: one object per entity, composed (memory/leases.py, cron.py, coord.py).
- Refusals: there are no column constraints to break, so `SyncResult.refused` is
  always empty; the store is never unreachable, and `interrupt()` has nothing to cut.
- Schema: there is none; `upgrade()` and `schema_state()` return None, as the protocol
  allows for a store without schema revisions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from supervisor.store import (
    ClaimOutcome,
    ControlAction,
    ControlEntry,
    ControlState,
    CoordGeneration,
    CoordinationStore,
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
from supervisor.store.memory import control
from supervisor.store.memory.coord import CoordTables
from supervisor.store.memory.cron import CronTables
from supervisor.store.memory.leases import LeaseTables
from supervisor.store.memory.triggers import TriggerTables
from supervisor.store.records import publish_indexes, require_final

__all__ = ["MemoryStore"]


class MemoryStore:
    """`CoordinationStore` in this process's memory; thread-safe under one lock."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        """`clock`: the store's "database clock", epoch seconds (tests pin or step it)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._leases = LeaseTables()
        self._cron = CronTables()
        self._triggers = TriggerTables(self._cron)
        self._coord = CoordTables()
        self._control = control.ControlTables()

    def _at(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # --- schema, clock, connections --------------------------------------------------------

    def upgrade(self) -> None:
        """No schema to create: None, a store without schema revisions."""
        return None

    def schema_state(self) -> None:
        """No schema to find: None, a store without schema revisions."""
        return None

    def db_now(self) -> float:
        return self._clock()

    def interrupt(self) -> None:
        """Nothing is ever in flight long enough to cut: calls only wait for the lock."""

    def close(self) -> None:
        """Nothing to release; the store stays usable, as a SqlStore reconnects."""

    # --- leases ----------------------------------------------------------------------------

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        with self._lock:
            self._leases.ensure(names)

    def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        with self._lock:
            self._leases.ensure([name])
            return self._leases.acquire([name], holder, ttl, self._at(now)).get(name)

    def lease_renew(self, lease: Lease, ttl: float, *, now: float | None = None) -> Lease | None:
        with self._lock:
            return self._leases.renew(lease.holder, {lease.name: lease.term}, ttl,
                                      self._at(now)).get(lease.name)

    def lease_release(
        self, lease: Lease, *, reason: str = "released", now: float | None = None
    ) -> bool:
        with self._lock:
            return self._leases.release(lease, reason, self._at(now))

    def leases(self, *, now: float | None = None) -> list[LeaseState]:
        with self._lock:
            return self._leases.states(self._at(now))

    def terms(self, *, lease: str | None = None, limit: int = 100) -> list[TermRecord]:
        with self._lock:
            return self._leases.term_records(lease, limit)

    # --- the node's round trip and membership ----------------------------------------------

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
        """Heartbeat, renew `held` and `runs`, try `wanted` (existing rows only), renew
        coordinated memberships and slots: one atomic step, as one transaction."""
        with self._lock:
            clock = self._at(now)
            self._leases.heartbeat(holder, ttl, clock)
            if report is not None:
                control.report(self._leases.members.get(holder.nonce), report)
            kept = self._leases.renew(holder, {lease.name: lease.term for lease in held},
                                      ttl, clock)
            acquired = self._leases.acquire(wanted, holder, ttl, clock)
            runs_kept, runs_stop = self._cron.renew(holder, runs, ttl, clock)
            coord, slots_kept = self._coord.sync(holder, coord_members, coord_watch,
                                                 coord_slots, ttl, clock)
            triggers = self._triggers.pending(cron_workers, clock)
            seen = None if control_since is None else self._control.state(control_since)
        slots = dict.fromkeys((slot.worker_key, slot.index) for slot in coord_slots)
        return SyncResult(
            db_now=clock, kept=kept, acquired=acquired,
            lost=tuple(lease.name for lease in held if lease.name not in kept),
            runs_kept=runs_kept, runs_stop=runs_stop,
            runs_lost=tuple(run.token for run in runs if run.token not in runs_kept),
            coord=coord, slots_kept=slots_kept,
            slots_lost=tuple(key for key in slots if key not in slots_kept),
            triggers=triggers,
            control=seen)

    def node_leave(self, holder: Holder) -> None:
        with self._lock:
            self._leases.leave(holder)
            self._coord.leave(holder)

    def members(self, *, now: float | None = None) -> list[NodeMember]:
        with self._lock:
            return self._leases.live_members(self._at(now))

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        """Close expired terms, mark expired runs lost, drop expired memberships, and
        prune up to `batch` each of old terms, runs and generations; how many pruned."""
        with self._lock:
            clock = self._at(now)
            return (self._leases.maintain(keep, clock, batch)
                    + self._triggers.maintain(keep, clock, batch)
                    + self._cron.maintain(keep, clock, batch)
                    + self._coord.maintain(keep, clock, batch))

    # --- cron ------------------------------------------------------------------------------

    def cron_claim(
        self,
        worker: str,
        tick: float,
        *,
        holder: Holder,
        max_run: int,
        max_per_node: int = 1,
        ttl: float,
        grace: float,
        forbid_overlap: bool = False,
        replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        if forbid_overlap and replace_earlier:
            raise ValueError("overlap is either forbidden or replaced, not both")
        with self._lock:
            return self._cron.claim(
                worker, tick, holder, max_run=max_run, max_per_node=max_per_node, ttl=ttl,
                grace=grace, forbid_overlap=forbid_overlap, replace_earlier=replace_earlier,
                clock=self._at(now))

    def cron_earlier_running(self, worker: str, tick: float, *,
                             now: float | None = None) -> int:
        with self._lock:
            return self._cron.earlier_running(worker, tick, self._at(now))

    def cron_finish(
        self,
        run: CronRun,
        state: str,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        child_pid: int | None = None,
        now: float | None = None,
    ) -> bool:
        require_final(state)
        with self._lock:
            return self._cron.finish(run, state, exit_code, reason, self._at(now), child_pid)

    def cron_runs(self, *, worker: str | None = None, limit: int = 100) -> list[CronRunRecord]:
        with self._lock:
            return self._cron.history(worker, limit, self._triggers.rows)

    def cron_trigger(
        self, worker: str, key: str, *, actor_user: str, actor_host: str,
        reason: str | None = None, grace: float, now: float | None = None,
    ) -> TriggerRequest:
        with self._lock:
            return self._triggers.request(worker, key, actor_user, actor_host, reason, grace,
                                          self._at(now))

    def cron_claim_trigger(
        self, trigger_id: int, *, holder: Holder, max_run: int, max_per_node: int = 1,
        ttl: float, forbid_overlap: bool = False, replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        with self._lock:
            return self._triggers.claim(
                trigger_id, holder, max_run=max_run, max_per_node=max_per_node, ttl=ttl,
                forbid_overlap=forbid_overlap, replace_earlier=replace_earlier,
                clock=self._at(now))

    def cron_trigger_blocking(self, worker: str, trigger_id: int, *,
                              now: float | None = None) -> int:
        with self._lock:
            return self._triggers.blocking(worker, trigger_id, self._at(now))

    def lease_child_pid(self, lease: Lease, pid: int) -> None:
        with self._lock:
            self._leases.child_pid(lease, pid)

    def cron_recorded(self, worker: str, since: float) -> CronRecorded:
        with self._lock:
            return self._cron.recorded(worker, since)

    def cron_record_missed(
        self,
        worker: str,
        ticks: Sequence[float],
        *,
        grace: float,
        reason: str,
        state: str = "missed",
        now: float | None = None,
    ) -> list[float]:
        if state not in ("missed", "skipped"):
            raise ValueError(f"a tick-level record is missed or skipped, not {state!r}")
        with self._lock:
            return self._cron.record_missed(worker, ticks, grace, reason, self._at(now), state)

    # --- coordinated workers ---------------------------------------------------------------

    def coord_publish(
        self,
        worker_key: str,
        *,
        expected: int,
        members: Sequence[Holder],
        count: int,
        indexes: Sequence[int | None] | None = None,
        now: float | None = None,
    ) -> int | None:
        given = publish_indexes(expected, members, count, indexes)
        with self._lock:
            return self._coord.publish(worker_key, expected, members, count, given,
                                       self._at(now))

    def coord_acquire_slot(
        self,
        worker_key: str,
        index: int,
        generation: int,
        holder: Holder,
        ttl: float,
        *,
        now: float | None = None,
    ) -> CoordSlot | None:
        with self._lock:
            return self._coord.acquire_slot(worker_key, index, generation, holder, ttl,
                                            self._at(now))

    def coord_release_slot(self, slot: CoordSlot, *, now: float | None = None) -> bool:
        with self._lock:
            return self._coord.release_slot(slot, self._at(now))

    def coord_leave(self, worker_key: str, holder: Holder) -> None:
        with self._lock:
            self._coord.leave(holder, worker_key)

    def coord_view(self, worker_key: str, *, now: float | None = None) -> CoordStatus:
        with self._lock:
            return self._coord.status(worker_key, self._at(now))

    def coord_generations(
        self, *, worker_key: str | None = None, limit: int = 100
    ) -> list[CoordGeneration]:
        with self._lock:
            return self._coord.history(worker_key, limit)

    # --- fleet control ---------------------------------------------------------------------

    def control_set(self, kind: str, target: str, group: str, *, user: str, host: str,
                    reason: str, stop_running: bool = False, hold_out: float | None = None,
                    holder_nonce: str | None = None, now: float | None = None
                    ) -> ControlEntry:
        with self._lock:
            return self._control.set(kind, target, group, user=user, host=host, reason=reason,
                                     stop_running=stop_running, hold_out=hold_out,
                                     holder_nonce=holder_nonce, clock=self._at(now))

    def control_clear(self, kind: str, target: str, group: str, *, user: str, host: str,
                      reason: str, now: float | None = None) -> bool:
        with self._lock:
            return self._control.clear(kind, target, group, user=user, host=host,
                                       reason=reason, clock=self._at(now))

    def control_state(self) -> ControlState:
        with self._lock:
            state = self._control.state(None)
        if state is None:  # pragma: no cover - `since` None never matches a version
            raise RuntimeError("no control state")
        return state

    def control_log(self, *, limit: int = 100) -> list[ControlAction]:
        with self._lock:
            return self._control.history(limit)


def _conforms(store: MemoryStore) -> CoordinationStore:
    """Never called: mypy checks here that MemoryStore implements the whole protocol."""
    return store

"""The coordination store: the one small protocol every mode is built on.

Contracts (every implementation passes the same conformance suite,
tests/integration/test_store.py, on SQLite, PostgreSQL and MariaDB):

- Time is the database's. Expiry is computed and compared by the database in the
  statement that needs it, as seconds since the Unix epoch on the database's clock
  (PostgreSQL `clock_timestamp()`, MariaDB/MySQL `UTC_TIMESTAMP(6)` in a UTC
  session, SQLite the host clock). No caller compares its own wall clock with a
  stored time. Methods take an optional `now` (epoch seconds) only so tests can pin
  time; production leaves it None.
- A lease is a row per name with a holder and a term. The term only grows, across
  release and re-acquire, across every holder and every restart of the fleet: it is
  the fencing token. Releasing keeps the row (holder cleared, term kept).
- A lease is free when it has no holder or its expiry is at or before `now`:
  `expires_at <= now` means expired, so a lease taken at t with ttl 10 is held at
  t + 9.999 and free at t + 10.
- Acquire, renew and release are single guarded statements scoped to holder and
  term; the outcome is read back from the database (RETURNING, or a locking
  re-select in the same transaction on MySQL), never from an affected-row count.
  Losing is a return value (`None` / `False` / absence from a result), not an
  exception.
- `node_sync` is the node's one round trip per renew interval: it heartbeats the
  node's membership row, renews every lease the node holds and tries every lease it
  wants, in one transaction, so the cost per node does not grow with its workers.
- Every term is recorded in the history (who, term, acquired, ended, how, why).
- Coordinated workers (guarantee 5): a worker key (`worker`, or `worker/group` for
  scope group) has members (processes renewing a row in node_sync), published
  generations (a number that only grows, each with a count and the index of each
  member) and slots (index i of a generation, held like a lease). A slot of a
  generation is acquired only while no slot of an older generation of the key is
  held and unexpired: no instance of a new generation starts while one of an older
  generation may still run.
- Failure to reach the database raises `StoreUnavailable`; other database failures
  `StoreError`, chained from the driver's exception. Messages never contain the
  database password.
- Implementations are synchronous and thread-safe; the async coordination layer
  runs them in its own threads, bounded by timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from supervisor.store.records import (
    ClaimOutcome,
    ControlAction,
    ControlEntry,
    ControlState,
    CoordAssigned,
    CoordGeneration,
    CoordMember,
    CoordSlot,
    CoordStatus,
    CoordView,
    CronRecorded,
    CronRun,
    CronRunRecord,
    CronTrigger,
    Holder,
    Lease,
    LeaseState,
    NodeFacts,
    NodeMember,
    NodeReport,
    SyncRefusal,
    SyncResult,
    TermRecord,
    TriggerRequest,
)

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState


class CoordinationStore(Protocol):
    def upgrade(self) -> SchemaState | None:
        """Create or migrate the schema; safe when many nodes call it at once. Returns
        what was found (None: a store without schema revisions); raises SchemaNewer when
        the schema needs a later release."""

    def schema_state(self) -> SchemaState | None:
        """The schema as this release sees it, unchanged (SchemaNewer: needs a later
        release); asked now and then by a running node."""

    def db_now(self) -> float:
        """The database's clock, epoch seconds."""

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        """Create free rows (term 0) for leases that do not exist yet; idempotent.

        A lease whose row vanished (deleted by hand) but whose terms are in the history
        is restored, never restarted: its term is the highest recorded one, and unless
        that term was released, the row comes back held by that term's holder, free only
        one lease TTL (the acquirer's) after it was restored, so that a holder that may
        still run is never overtaken before its renewal fails and its child stops."""

    def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        """Take the lease if free, with term + 1; None if someone else holds it."""

    def lease_renew(
        self, lease: Lease, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        """Extend a lease still held, unexpired, by the same holder and term; else None."""

    def lease_release(
        self, lease: Lease, *, reason: str = "released", now: float | None = None
    ) -> bool:
        """Free the lease at once if still held by this holder and term; False if not."""

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
        """Heartbeat, renew `held` leases and running cron `runs`, and try `wanted`, in
        one transaction.

        `wanted` rows must exist (`lease_ensure`, once per lease, not per call). The term
        granted is one above both the row's and the highest the history records for the
        lease, so a row set back or re-created by hand never grants a term twice.

        A part the database refuses because of a row (IntegrityError, DataError: one
        lease, one run, one coordinated key with its slots) fails only itself: it is
        rolled back alone and reported in `SyncResult.refused`, and the rest commits.
        Unreachable or timed out is no such refusal: the call fails as a whole.

        Coordinated workers, in the same transaction and at a cost that does not grow
        with their number: renew this holder's membership of each key in
        `coord_members` (expiry now + ttl; `joined_at` is kept while the row is
        unexpired, and starts again at now when it had expired: a rejoin), and report
        each such key in `SyncResult.coord`: the published generation, its count and
        this holder's index in it. Live members are listed for the keys in
        `coord_watch` (None: every key of `coord_members`), so that only whoever
        publishes reads the whole membership. Renew each slot of `coord_slots` still
        held by this holder in the same generation and unexpired (`slots_kept`, by
        (worker_key, index)); the others are `slots_lost`. A slot is renewed even when a
        newer generation was published: it covers a child that still runs.

        Cron triggers: the open triggers (`cron_trigger`) of the workers in
        `cron_workers` are read in the same transaction, inside their grace, oldest
        first, into `SyncResult.triggers` (one indexed read; nothing when empty).
        Fleet control, in the same transaction: with `control_since` (a version the node
        last saw, -1 at first) the control state is read and returned in
        `SyncResult.control` when its version differs, else None (a point read of one
        version row: cheap while nothing changes). `report`, when given, is written to
        this holder's membership row (the node sends it only when it changed).
        """

    def node_leave(self, holder: Holder) -> None:
        """Remove this process's membership rows, of the node and of every coordinated
        worker key (clean stop): its place in the next generation goes at once."""

    def members(self, *, now: float | None = None) -> list[NodeMember]:
        """Live members, unexpired by the database's clock."""

    def leases(self, *, now: float | None = None) -> list[LeaseState]:
        """Every lease row, with time left by the database's clock."""

    def terms(self, *, lease: str | None = None, limit: int = 100) -> list[TermRecord]:
        """Leadership terms, newest first."""

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        """Close terms whose holder stopped renewing ("expired") and cron runs whose
        holder stopped renewing ("lost"): nothing is left running for ever. Delete up to
        `batch` terms and runs that ended more than `keep` seconds ago (never a lease's
        newest term, which a vanished lease row is restored from), and up to `batch`
        coordinated generations superseded more than `keep` seconds ago (the current
        generation of a key is never deleted). Expired memberships, of nodes and of
        coordinated workers, are removed (a node that comes back heartbeats its row in
        again)."""

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
        """Claim a free slot of the tick, in database time: due (`tick <= now`) and within
        grace (`now < tick + grace`). At most max_run runs per tick fleet-wide, each a row
        unique on (worker, tick, slot); at most max_per_node of them for this node. A tick
        with a tick-level record (missed, skipped) is never claimed.

        `forbid_overlap` (overlap = forbid): while a run of an earlier tick of the worker
        is still running and unexpired, the tick is recorded skipped instead.
        `replace_earlier` (overlap = replace): when the claim acquires a slot, in the same
        transaction every running, unexpired run of the worker with an earlier tick is
        asked to stop (`ClaimOutcome.replaced`, and `SyncResult.runs_stop` for its
        holder); the new run starts its child once `cron_earlier_running` is 0. A tick
        earlier than one that already has runs is superseded: `overlap`, never started.
        Both flags at once is a ValueError."""

    def cron_earlier_running(
        self, worker: str, tick: float, *, now: float | None = None
    ) -> int:
        """How many runs of the worker with a tick before `tick` are still running and
        unexpired (`expires_at > now`, database time): a replacing run waits for 0."""

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
        """Record how a run ended (succeeded, failed, timed_out, stopped) and the pid of
        its child (None: none started); False if the run is no longer this holder's
        running run (it was marked lost meanwhile)."""

    def cron_trigger(
        self,
        worker: str,
        key: str,
        *,
        actor_user: str,
        actor_host: str,
        reason: str | None = None,
        grace: float,
        now: float | None = None,
    ) -> TriggerRequest:
        """Ask for one extra run of a cron worker now (`supervisor trigger`), requested at
        the database's now, with who asked (as the client declares it) and why. Unique
        on (worker, key): a second request with a used key creates nothing and returns
        the first (`created` False), so a retried request never runs twice. The trigger
        is open, delivered by node_sync, until it is decided; a trigger nobody ran within
        `grace` is recorded missed (by the late claim, or by `maintain`)."""

    def cron_claim_trigger(
        self,
        trigger_id: int,
        *,
        holder: Holder,
        max_run: int,
        max_per_node: int = 1,
        ttl: float,
        forbid_overlap: bool = False,
        replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        """Claim a slot of a trigger's run, as `cron_claim` claims a tick's, within the
        trigger's grace. Its runs are keyed apart from every schedule tick (the run's
        `tick` is the request time, `trigger` the id); at most max_run per trigger, at
        most max_per_node of them for this node. A triggered run counts as earlier than
        every tick (a tick's forbid skips, its replace stops it). `forbid_overlap`: while
        another run of the worker is running and unexpired, the trigger is recorded
        skipped. `replace_earlier`: the claim asks every other running run of the worker
        to stop (`ClaimOutcome.replaced`); the run starts once `cron_trigger_blocking` is
        0. The trigger is closed once its max_run slots are taken, or it is decided."""

    def cron_trigger_blocking(self, worker: str, trigger_id: int, *,
                              now: float | None = None) -> int:
        """How many runs of the worker other than the trigger's own are still running and
        unexpired (database time): a replacing triggered run waits for 0."""

    def lease_child_pid(self, lease: Lease, pid: int) -> None:
        """Record the pid of the child the holder of `lease` started on its term (the
        latest one when a term restarts its child); nothing if the term is not its."""

    def cron_runs(self, *, worker: str | None = None, limit: int = 100) -> list[CronRunRecord]:
        """Cron history, newest tick first."""

    def cron_recorded(self, worker: str, since: float) -> CronRecorded:
        """The worker's earliest tick with any row, and its distinct ticks after `since`
        (`tick > since`) with any row, run or tick-level: at startup or after an outage,
        the ticks in between that have none are the ones nobody touched."""

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
        """Record each of `ticks` that is past its grace (`tick + grace <= now`, database
        time) and has neither a run nor a tick-level record as `state` (slot -1, with
        `reason`), in one transaction: `missed`, or `skipped` (a paused worker's ticks,
        recorded with grace 0 as they come, so that nothing claims or replays them); ticks
        still inside their grace are left alone.
        Returns the ticks this call recorded, sorted. Safe when many nodes call it at once
        and while others claim: a tick gets at most one tick-level record, and never one
        beside a run."""

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
        """Publish generation `expected + 1` of the key if its current generation is
        still `expected` (0: none yet): a compare-and-set, so each generation number is
        published once, by one caller. `members[i]` gets index `indexes[i]` (None: it
        stands by); without `indexes`, index i for i < count and the rest stand by. An
        index nobody gets is vacant: its slot is not taken in this generation.
        The assignment, the key's slot rows 0..count-1 and the history record are
        written in the same transaction. Returns the new generation, or None if the
        current generation is not `expected` (someone published first). Who publishes,
        and when, is the caller's: whoever holds the worker's coordination lease.
        ValueError for a negative `expected` or `count`, a member listed twice, or
        `indexes` not one per member, distinct, each in 0..count-1 or None."""

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
        """Hold slot `index` of `generation` until now + ttl (database time), if in one
        transaction: `generation` is the key's current one, its assignment gives this
        holder `index`, the slot is free, expired or already this holder's in this
        generation, and no slot of the key with an older generation is held and
        unexpired (the barrier). None otherwise: a slot of generation g blocks every
        slot of g + 1 until it is released or expires."""

    def coord_release_slot(self, slot: CoordSlot, *, now: float | None = None) -> bool:
        """Free the slot at once if still held by this holder in this generation and
        unexpired; False if not (an expired slot was lost, not given back)."""

    def coord_leave(self, worker_key: str, holder: Holder) -> None:
        """Remove this holder's membership of one worker key (the worker was removed)."""

    def coord_view(self, worker_key: str, *, now: float | None = None) -> CoordStatus:
        """The key's current generation, assignment, live members and held slots."""

    def coord_generations(
        self, *, worker_key: str | None = None, limit: int = 100
    ) -> list[CoordGeneration]:
        """Published generations, newest first; `worker_key` selects the key itself and
        its per-group keys (`worker_key/group`)."""

    def control_set(self, kind: str, target: str, group: str, *, user: str, host: str,
                    reason: str, stop_running: bool = False, hold_out: float | None = None,
                    holder_nonce: str | None = None, now: float | None = None
                    ) -> ControlEntry:
        """Stand a control request (kind pause, drain or handover; see `ControlEntry`),
        replacing the one of the same (kind, target, group), requested now (database
        time); a handover's `until` is now + `hold_out`. In one transaction it also logs
        the action (`control_log`: the kind as the action, `user` and `host` as the
        client declared them) and bumps the control version, so every node's next sync
        reads it. ValueError for another kind; a value too long for its column is
        refused (StoreRefused) before anything is written."""

    def control_clear(self, kind: str, target: str, group: str, *, user: str, host: str,
                      reason: str, now: float | None = None) -> bool:
        """Lift the request of (kind, target, group), logging the action (`resume`,
        `undrain`) and bumping the version even when there was none; True if one stood."""

    def control_state(self) -> ControlState:
        """Every standing control request, with the current version."""

    def control_log(self, *, limit: int = 100) -> list[ControlAction]:
        """Recorded control actions, newest first."""

    def interrupt(self) -> None:
        """Cut the calls in flight (from another thread): their callers gave up on them.
        Each cut call fails at once and its connection is discarded."""

    def close(self) -> None:
        """Release connections."""


__all__ = [
    "ClaimOutcome",
    "ControlAction",
    "ControlEntry",
    "ControlState",
    "CoordAssigned",
    "CoordGeneration",
    "CoordMember",
    "CoordSlot",
    "CoordStatus",
    "CoordView",
    "CoordinationStore",
    "CronRecorded",
    "CronRun",
    "CronRunRecord",
    "CronTrigger",
    "Holder",
    "Lease",
    "LeaseState",
    "NodeFacts",
    "NodeMember",
    "NodeReport",
    "SyncRefusal",
    "SyncResult",
    "TermRecord",
    "TriggerRequest",
]

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState


@dataclass(frozen=True)
class NodeFacts:
    """What a node computes with, written into its membership row when it joins: its
    release and the time-zone data its cron schedules use (`supervisor.tzinfo_source`).
    None: not reported (a node of an older release leaves the columns NULL)."""

    release: str | None = None
    tz_source: str | None = None  # "system:/usr/share/zoneinfo", "tzdata", "none"
    tz_version: str | None = None  # "2024a", "unknown"

    @classmethod
    def of_this_process(cls) -> NodeFacts:
        from supervisor import __version__
        from supervisor.tzinfo_source import this_process

        zone = this_process()
        return cls(__version__, zone.source, zone.version)


@dataclass(frozen=True)
class Holder:
    """Who holds something: a supervisor process, unique even among two on one host.

    `facts` ride along for the membership row (node_sync's heartbeat writes them when the
    row is inserted); they are no part of the identity: holders compare and hash by node,
    group, pid and nonce, and a holder read back from a row has facts None."""

    node_id: str
    group: str
    pid: int
    nonce: str  # random per start of a supervisor
    facts: NodeFacts | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Lease:
    """A lease as its holder sees it after a successful acquire or renew."""

    name: str
    holder: Holder
    term: int  # the fencing token
    expires_at: float  # database time, epoch seconds


@dataclass(frozen=True)
class LeaseState:
    """A lease row as anyone sees it (for `supervisor status`)."""

    name: str
    term: int
    holder: Holder | None  # None when free
    expires_at: float
    seconds_left: float  # by the database's clock; <= 0 when expired


@dataclass(frozen=True)
class Member:
    """A live supervisor process, and what it computes with (None: not reported)."""

    holder: Holder
    started_at: float
    expires_at: float
    release: str | None = None
    tz_source: str | None = None
    tz_version: str | None = None


@dataclass(frozen=True)
class TermRecord:
    """One leadership term, from acquire to its end (or still running)."""

    lease: str
    term: int
    holder: Holder
    acquired_at: float
    ended_at: float | None
    outcome: str | None  # released | expired | None while held
    reason: str | None


@dataclass(frozen=True)
class CronRun:
    """A claimed slot of one cron tick, as its holder sees it: a leased row."""

    token: int  # the claim's fencing token: only grows, fleet-wide
    worker: str
    tick: float  # the scheduled instant, epoch seconds (UTC); with worker and slot the key
    slot: int  # 0 <= slot < max_run
    holder: Holder
    expires_at: float  # database time; renewed by node_sync while the run goes on


@dataclass(frozen=True)
class ClaimOutcome:
    """What a claim attempt got: `acquired` (with the run), or why not:
    `early` (the tick is not due by the database's clock), `missed` (past
    misfire_grace, or already recorded missed: recorded once, never run late), `full`
    (max_run slots taken, or this node has max_per_node of them), `overlap` (forbidden:
    a run of an earlier tick is still going fleet-wide; or, replacing, a later tick
    already has runs, so this one is superseded; the tick is recorded `skipped` unless
    it has runs, and a skip is final).

    `replaced`: with `replace_earlier`, the tokens of the earlier runs this claim asked
    to stop (their holders learn it from `SyncResult.runs_stop`)."""

    result: str
    run: CronRun | None = None
    replaced: tuple[int, ...] = ()


@dataclass(frozen=True)
class CronRecorded:
    """Which ticks of a worker the database has any row for (runs or tick-level records)."""

    first_tick: float | None  # the smallest tick with any row; None when the worker has none
    ticks: frozenset[float]  # the distinct ticks with any row, after `since`


@dataclass(frozen=True)
class CronRunRecord:
    """One row of cron history (a run, or a tick nobody ran)."""

    token: int
    worker: str
    tick: float
    slot: int  # -1 for a tick-level record (missed, skipped)
    holder: Holder | None
    state: str  # running | succeeded | failed | timed_out | stopped | lost | missed | skipped
    claimed_at: float
    ended_at: float | None
    exit_code: int | None
    reason: str | None


@dataclass(frozen=True)
class CoordMember:
    """A member of a coordinated worker key: a supervisor process renewing its row."""

    holder: Holder
    joined_at: float  # database time of its first renewal since it was last live
    expires_at: float


@dataclass(frozen=True)
class CoordView:
    """A coordinated worker key as one member sees it after node_sync."""

    worker_key: str
    generation: int  # the published generation; 0 while none is
    count: int  # its count: indexes 0..count-1
    index: int | None  # this holder's index in it; None: standing by, or not in it
    published_at: float | None  # database time; None while none is published
    # Live members (unexpired), by joined_at then nonce; None for a key not watched.
    members: tuple[CoordMember, ...] | None = None


@dataclass(frozen=True)
class CoordSlot:
    """Index `index` of generation `generation` of a worker key, held like a lease."""

    worker_key: str
    index: int
    generation: int
    holder: Holder
    expires_at: float  # database time; renewed by node_sync while the child runs


@dataclass(frozen=True)
class CoordAssigned:
    """One member of a published generation and its index (None: it stands by)."""

    holder: Holder
    index: int | None


@dataclass(frozen=True)
class CoordStatus:
    """A coordinated worker key as anyone sees it (for `supervisor status`)."""

    worker_key: str
    db_now: float  # the database's clock when read: what `expires_at`s compare with
    generation: int  # 0 while none is published
    count: int
    published_at: float | None
    assigned: tuple[CoordAssigned, ...]  # the current generation's members, in order
    members: tuple[CoordMember, ...]  # live members, by joined_at then nonce
    slots: tuple[CoordSlot, ...]  # slots with a holder (expired ones too), by index


@dataclass(frozen=True)
class CoordGeneration:
    """One published generation of a worker key, from publish to the next one."""

    worker_key: str
    generation: int
    count: int
    members: tuple[Holder, ...]
    published_at: float
    ended_at: float | None  # when the next generation was published; None while current
    indexes: tuple[int | None, ...] = ()  # members[i] had index indexes[i]; None: standby

    def index_of(self, position: int) -> int | None:
        if self.indexes:
            return self.indexes[position]
        return position if position < self.count else None  # the default assignment


@dataclass(frozen=True)
class SyncResult:
    db_now: float  # the database's clock during the transaction
    kept: dict[str, Lease] = field(default_factory=dict)  # held leases, renewed
    lost: tuple[str, ...] = ()  # held leases that could not be renewed
    acquired: dict[str, Lease] = field(default_factory=dict)  # wanted leases now held
    runs_kept: dict[int, CronRun] = field(default_factory=dict)  # cron runs renewed, by token
    runs_lost: tuple[int, ...] = ()  # cron runs that could not be renewed (expired or ended)
    # Renewed runs a later tick replaces (overlap = replace): the holder stops their
    # children and ends them with cron_finish(..., "stopped"); until then they stay
    # running (and renewed), or expire and are marked lost by maintain.
    runs_stop: tuple[int, ...] = ()
    coord: dict[str, CoordView] = field(default_factory=dict)  # per key of coord_members
    slots_kept: dict[tuple[str, int], CoordSlot] = field(default_factory=dict)  # renewed
    slots_lost: tuple[tuple[str, int], ...] = ()  # (worker_key, index) no longer held
    # Parts the database refused because of a row (a constraint, a value out of range),
    # left out so that the rest went through; their leases, runs and slots are also in
    # `lost`, `runs_lost` and `slots_lost` (or simply not acquired).
    refused: tuple[SyncRefusal, ...] = ()


@dataclass(frozen=True)
class SyncRefusal:
    """One part of a node's sync that the database refused because of a row, not because
    it could not be reached: the part is rolled back alone, the rest of the sync commits."""

    kind: str  # "lease" (held or wanted), "run" (a cron run), "coord" (a coordinated key)
    key: str  # the lease name, the run's token, the worker key
    reason: str  # the database's words (a constraint, a value): never the URL or password


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
        """

    def node_leave(self, holder: Holder) -> None:
        """Remove this process's membership rows, of the node and of every coordinated
        worker key (clean stop): its place in the next generation goes at once."""

    def members(self, *, now: float | None = None) -> list[Member]:
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
        now: float | None = None,
    ) -> bool:
        """Record how a run ended (succeeded, failed, timed_out, stopped); False if the run
        is no longer this holder's running run (it was marked lost meanwhile)."""

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
        now: float | None = None,
    ) -> list[float]:
        """Record each of `ticks` that is past its grace (`tick + grace <= now`, database
        time) and has neither a run nor a tick-level record as `missed` (slot -1, with
        `reason`), in one transaction; ticks still inside their grace are left alone.
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

    def interrupt(self) -> None:
        """Cut the calls in flight (from another thread): their callers gave up on them.
        Each cut call fails at once and its connection is discarded."""

    def close(self) -> None:
        """Release connections."""

"""What the coordination store takes and returns: plain frozen records, no behaviour
beyond reading themselves. The contracts they carry are the protocol's
(supervisor/store/__init__.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


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
class NodeMember:
    """A live supervisor process, and what it computes with (None: not reported)."""

    holder: Holder
    started_at: float
    expires_at: float
    release: str | None = None
    tz_source: str | None = None
    tz_version: str | None = None
    # What the node last reported (fleet control, migration 0009): "" not draining,
    # "acknowledged" (draining, still holding something), "drained" (holding nothing).
    drain: str = ""
    summary: str | None = None  # its workers' states, compact JSON (None: not reported)


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
    child_pid: int | None = None  # the pid of the leader's latest child (migration 0010)


@dataclass(frozen=True)
class CronRun:
    """A claimed slot of one cron tick, as its holder sees it: a leased row."""

    token: int  # the claim's fencing token: only grows, fleet-wide
    worker: str
    tick: float  # the scheduled instant, epoch seconds (UTC); with worker and slot the key
    slot: int  # 0 <= slot < max_run
    holder: Holder
    expires_at: float  # database time; renewed by node_sync while the run goes on
    # A run asked for by `supervisor trigger` (store/sql_triggers.py): the trigger's id;
    # `tick` is then the time it was requested. None: a run of a schedule tick.
    trigger: int | None = None


@dataclass(frozen=True)
class CronTrigger:
    """A request to run a cron worker once now (`supervisor trigger`), as the store keeps
    it and node_sync delivers it while it is open (not all its slots taken, not decided,
    not past its grace)."""

    id: int  # only grows; the trigger's runs are keyed by it, apart from schedule ticks
    worker: str
    key: str  # the idempotency key: one trigger per (worker, key)
    requested_at: float  # database time
    grace: float  # misfire_grace when it was requested: no run starts after that
    actor_user: str
    actor_host: str
    reason: str | None


@dataclass(frozen=True)
class TriggerRequest:
    """What `cron_trigger` did: the trigger, and whether this call created it (False: the
    key was already used, so the trigger asked for before stands and nothing new runs)."""

    trigger: CronTrigger
    created: bool


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
    child_pid: int | None = None  # the run's child (migration 0010); None: not recorded
    trigger: CronTrigger | None = None  # a triggered run: `tick` is its requested_at


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
    # Open triggers of the cron workers the node passed (`cron_workers`), by id.
    triggers: tuple[CronTrigger, ...] = ()
    # Fleet control (store/sql_control.py): the whole state when its version differs
    # from the `control_since` the node passed; None when unchanged or not asked.
    control: ControlState | None = None


@dataclass(frozen=True)
class SyncRefusal:
    """One part of a node's sync that the database refused because of a row, not because
    it could not be reached: the part is rolled back alone, the rest of the sync commits."""

    kind: str  # "lease" (held or wanted), "run" (a cron run), "coord" (a coordinated key)
    key: str  # the lease name, the run's token, the worker key
    reason: str  # the database's words (a constraint, a value): never the URL or password


# --- cron history: the states and reasons both stores write, so that histories read alike ---

RUNNING = "running"
FINAL_STATES = ("succeeded", "failed", "timed_out", "stopped")
MISSED_REASON = "nobody could run it within misfire_grace"
SUPERSEDED_REASON = "overlap replace: a later tick already has runs"
FORBIDDEN_REASON = "overlap forbidden: a run of an earlier tick is still going"
TRIGGER_FORBIDDEN_REASON = "overlap forbidden: another run of the worker is still going"
LOST_REASON = "its node stopped renewing the run"
# A tick-level record (or a trigger's) that decides a claim: the claim's result.
DECIDED_RESULT = {"missed": "missed", "skipped": "overlap"}


def require_final(state: str) -> None:
    """A run ends as one of FINAL_STATES (cron_finish); ValueError otherwise."""
    if state not in FINAL_STATES:
        raise ValueError(f"a run ends as one of {FINAL_STATES}, not {state!r}")


def publish_indexes(expected: int, members: Sequence[Holder], count: int,
                  indexes: Sequence[int | None] | None) -> list[int | None]:
    """The arguments of `coord_publish` checked (ValueError), and the index each member
    gets: `indexes` as given, or by position up to `count` (the rest stand by, None).
    Every store checks them here, before it writes anything."""
    if expected < 0 or count < 0:
        raise ValueError(f"expected and count are >= 0, not {expected} and {count}")
    if len({member.nonce for member in members}) != len(members):
        raise ValueError("a member is listed twice")
    if indexes is None:
        indexes = [i if i < count else None for i in range(len(members))]
    given = [i for i in indexes if i is not None]
    if (len(indexes) != len(members) or len(set(given)) != len(given)
            or any(not 0 <= i < count for i in given)):
        raise ValueError(f"indexes {list(indexes)} are not one per member, distinct "
                         f"and in 0..{count - 1}")
    return list(indexes)


@dataclass(frozen=True)
class ControlEntry:
    """One standing fleet-control request (a row of fs_control).

    kind "pause": worker `target` is paused on the nodes of `group` ("" every group);
    kind "drain": node `target` gives up what it holds (group "");
    kind "handover": the holder `holder_nonce` of worker `target`'s lease in `group`
    ("" its fleet-wide lease) gives it up and stays out until `until` (database time)."""

    kind: str
    target: str
    group: str
    reason: str
    actor_user: str
    actor_host: str
    requested_at: float
    stop_running: bool = False
    until: float | None = None
    holder_nonce: str | None = None


@dataclass(frozen=True)
class ControlState:
    """Every standing control request, and the version they were read at (it grows with
    every control write)."""

    version: int
    entries: tuple[ControlEntry, ...] = ()

    def find(self, kind: str, target: str, group: str = "") -> ControlEntry | None:
        """The request of exactly (kind, target, group), if it stands."""
        return next((e for e in self.entries
                     if (e.kind, e.target, e.group) == (kind, target, group)), None)


@dataclass(frozen=True)
class ControlAction:
    """One recorded control action (fs_control_log): who asked what, when and why. The
    user and host are what the client declared, not authenticated."""

    at: float
    action: str  # pause | resume | drain | undrain | handover
    target: str
    group: str
    actor_user: str
    actor_host: str
    reason: str


@dataclass(frozen=True)
class NodeReport:
    """What a node writes into its membership rows with a sync, only when it changed."""

    drain: str = ""  # "", "acknowledged", "drained"
    summary: str | None = None

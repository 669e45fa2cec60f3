"""Prometheus metrics, in a registry of their own, fed by events.

Names follow SPEC.md and README's metric table (refined once in 0.2, see CHANGELOG):
per worker `supervisor_worker_*`, leadership `supervisor_leader*` and
`supervisor_lease_*`, cron `supervisor_cron_*`, coordinated `supervisor_coordinated_*`,
the database `supervisor_db_*`, plus `supervisor_build_info`, `supervisor_node_info`
and `supervisor_worker_info` (value 1) for joins.

Invariants:

- Every series an alert needs exists from the start with its full label set: a
  follower exports `supervisor_leader 0`, and failure counters start at 0 for every
  worker that can fail (so "no leader" and "no failure" are never "no data").
- Label values are bounded: worker and group names from the config, and fixed sets of
  reasons, outcomes, results and operations; never ticks, pids or tokens.
- No `_created` series (they double the series count and no rule reads them).
- Dropped output lines (`supervisor_output_dropped_lines_total{worker,stream}`,
  `worker=""` for the supervisor's own log) are counted by supervisor.output from any
  thread that logs as well as from the event loop: prometheus-client's counters are
  thread-safe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.exposition import choose_encoder

from supervisor import __version__
from supervisor.model import (
    CoordinationSeen,
    CronClaimed,
    CronRunEnded,
    DatabaseCall,
    Event,
    ExitReason,
    FleetControlSeen,
    LeadershipGained,
    LeadershipLost,
    LeaseRenewed,
    Mode,
    NodeHeartbeat,
    RestartScheduled,
    TrustDeadlineKilled,
    WorkerExited,
    WorkerGaveUp,
    WorkerStarted,
)
from supervisor.schedule import next_tick, parse_schedule, parse_timezone
from supervisor.spec import WorkerSpec

# Process-wide in prometheus-client; this registry is the only one the process has.
_disable_created_metrics()  # type: ignore[no-untyped-call]

LEADER_MODES = (Mode.GLOBAL_LEADER, Mode.GROUP_LEADER)
TRUSTED_MODES = (*LEADER_MODES, Mode.CRON, Mode.COORDINATED)
CRON_OUTCOMES = ("succeeded", "failed", "timed_out", "stopped", "lost", "skipped", "missed")
CLAIM_RESULTS = ("acquired", "full", "missed", "overlap", "paused", "error")
# A claim result that is the tick's outcome for this node (no run follows it).
_CLAIM_OUTCOME = {"missed": "missed", "overlap": "skipped", "paused": "skipped"}
_DB_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class Metrics:
    """Subscriber: keeps the gauges and counters that /metrics exposes."""

    def __init__(self, workers: Iterable[str] | Mapping[str, WorkerSpec] = (), *,
                 node_id: str = "", group: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.group = group
        self._node_families()
        self._worker_families()
        self._leader_families()
        self._cron_families()
        self._coordinated_families()
        self._control_families()
        self.node_info.labels(node_id, group).set(1)
        self.output_dropped.labels("", "stderr")  # every series exists from the start
        specs = workers if isinstance(workers, Mapping) else {w: WorkerSpec() for w in workers}
        if any(spec.mode is not Mode.EVERY_NODE for spec in specs.values()):
            for result in ("ok", "error"):
                self.db_seconds.labels("node_sync", result)
        for name, spec in specs.items():
            self.add_worker(name, spec)

    def _node_families(self) -> None:
        r = self.registry
        build = Gauge("supervisor_build_info", "Always 1; the release this node runs",
                      ["version"], registry=r)
        build.labels(__version__).set(1)
        self.node_info = Gauge("supervisor_node_info", "Always 1; this node's id and group",
                               ["node_id", "group"], registry=r)
        self.start_time = Gauge("supervisor_start_time_seconds",
                                "When this supervisor started (Unix time)", registry=r)
        self.start_time.set(time.time())
        self.heartbeat = Gauge("supervisor_heartbeat_timestamp_seconds",
                               "When this node last proved itself alive to the database; "
                               "0 until it first did", registry=r)
        self.clock_offset = Gauge("supervisor_db_clock_offset_seconds",
                                  "The database's clock minus this node's wall clock",
                                  registry=r)
        self.db_seconds = Histogram("supervisor_db_operation_duration_seconds",
                                    "Database round trips, by store operation and result",
                                    ["operation", "result"], registry=r, buckets=_DB_BUCKETS)
        self.output_dropped = Counter(
            "supervisor_output_dropped_lines", "Lines not written because the reader of the "
            "supervisor's stdout or stderr stalled; worker=\"\" for the supervisor's own log",
            ["worker", "stream"], registry=r)

    def _worker_families(self) -> None:
        r = self.registry
        self.worker_info = Gauge("supervisor_worker_info", "Always 1; each worker's mode",
                                 ["worker", "mode"], registry=r)
        self.worker_up = Gauge("supervisor_worker_up", "1 while the worker's child runs on "
                               "this node; cron workers are 0 between runs, leader workers "
                               "0 on followers", ["worker"], registry=r)
        self.restarts = Counter("supervisor_worker_restarts", "Restarts after a failure or exit",
                                ["worker"], registry=r)
        self.exits = Counter("supervisor_worker_exits", "Child exits, by cause",
                             ["worker", "reason"], registry=r)
        self.backoff = Gauge("supervisor_worker_backoff_seconds",
                             "Delay before the pending restart; 0 when none is pending",
                             ["worker"], registry=r)
        self.attempt = Gauge("supervisor_worker_restart_attempt",
                             "Consecutive quick exits; 0 once a child stays up", ["worker"],
                             registry=r)
        self.failed = Gauge("supervisor_worker_failed",
                            "1 when the worker reached max_restarts and was given up", ["worker"],
                            registry=r)
        self.deadline_kills = Counter(
            "supervisor_trust_deadline_kills", "Children SIGKILLed by the trust watchdog at "
            "their trust deadline because the supervisor could not stop them in time",
            ["worker"], registry=r)

    def _leader_families(self) -> None:
        r = self.registry
        self.leader = Gauge("supervisor_leader",
                            "1 while this node holds the worker's lease and runs it; "
                            "0 on followers", ["worker", "group"], registry=r)
        self.term = Gauge("supervisor_leader_term",
                          "The fencing token of the term this node holds; 0 when none",
                          ["worker", "group"], registry=r)
        self.renewals = Counter("supervisor_lease_renewals", "Lease renewals that succeeded",
                                ["worker", "group"], registry=r)
        self.renewal_failures = Counter("supervisor_lease_renewal_failures",
                                        "Lease renewals that failed", ["worker", "group"],
                                        registry=r)
        self.leadership_changes = Counter("supervisor_leadership_changes",
                                          "Leadership gained or lost by this node",
                                          ["worker", "group", "change"], registry=r)

    def _cron_families(self) -> None:
        r = self.registry
        self.claims = Counter("supervisor_cron_claims", "Cron claims by this node, by result "
                              "(acquired, full, missed, overlap, paused, error)",
                              ["worker", "result"], registry=r)
        self.cron_runs = Counter("supervisor_cron_runs", "Cron ticks as this node saw them, by "
                                 "outcome: runs it ran (succeeded, failed, timed_out, stopped, "
                                 "lost: not recorded), ticks it skipped (an earlier run still "
                                 "going) or found missed", ["worker", "outcome"], registry=r)
        self.cron_last_tick = Gauge("supervisor_cron_last_tick_timestamp_seconds",
                                    "The tick of the last run this node finished; 0: none yet",
                                    ["worker"], registry=r)
        self.cron_last_success = Gauge("supervisor_cron_last_success_timestamp_seconds",
                                       "When the last run on this node that succeeded ended; "
                                       "0: none yet", ["worker"], registry=r)
        self.cron_period = Gauge("supervisor_cron_period_seconds",
                                 "The longest gap between the schedule's coming ticks",
                                 ["worker"], registry=r)

    def _coordinated_families(self) -> None:
        r = self.registry
        self.members = Gauge("supervisor_coordinated_members", "Live members of a coordinated "
                             "worker, as the node that publishes generations sees them",
                             ["worker"], registry=r)
        self.generation = Gauge("supervisor_coordinated_generation", "The coordinated worker's "
                                "published generation (0: none yet)", ["worker"], registry=r)
        self.index = Gauge("supervisor_coordinated_index", "This node's index in the "
                           "generation; -1 while standing by", ["worker"], registry=r)
        self.count = Gauge("supervisor_coordinated_instances", "The count of the generation this "
                           "node runs in", ["worker"], registry=r)
        self.rebalance = Gauge("supervisor_coordinated_rebalance_seconds", "How long the last "
                               "change of live members took to be published as a generation, "
                               "as the node that publishes generations saw it", ["worker"],
                               registry=r)
        self._members_seen: dict[str, tuple[int, float]] = {}  # worker -> (members, since)
        self._generation_seen: dict[str, int] = {}

    def _control_families(self) -> None:
        r = self.registry
        self.paused = Gauge("supervisor_paused", "1 while the worker is paused on this node's "
                            "group (supervisor pause), as this node's last sync read it",
                            ["worker"], registry=r)
        self.draining = Gauge("supervisor_draining", "1 while this node is drained "
                              "(supervisor drain), as its last sync read it", registry=r)
        self._pausable: set[str] = set()

    def add_worker(self, name: str, spec: WorkerSpec) -> None:
        """Create every series of a configured worker, at its idle value."""
        self.worker_info.labels(name, str(spec.mode)).set(1)
        if spec.mode is not Mode.EVERY_NODE:
            self._pausable.add(name)
            self.paused.labels(name).set(0)
        self._worker_series(name)
        if spec.mode in TRUSTED_MODES:
            self.deadline_kills.labels(name)
        if spec.mode in LEADER_MODES:
            self.leader.labels(name, self.group).set(0)
            self.term.labels(name, self.group).set(0)
            self.renewals.labels(name, self.group)
            self.renewal_failures.labels(name, self.group)
            for change in ("gained", "lost"):
                self.leadership_changes.labels(name, self.group, change)
        elif spec.mode is Mode.CRON:
            self._cron_series(name, spec)
        elif spec.mode is Mode.COORDINATED:
            self.generation.labels(name).set(0)
            self.index.labels(name).set(-1)
            self.count.labels(name).set(0)

    def _worker_series(self, worker: str) -> None:
        self.worker_up.labels(worker)
        self.restarts.labels(worker)
        for reason in ExitReason:
            self.exits.labels(worker, str(reason))
        self.backoff.labels(worker)
        self.attempt.labels(worker)
        self.failed.labels(worker)
        for stream in ("stdout", "stderr"):
            self.output_dropped.labels(worker, stream)

    def _cron_series(self, worker: str, spec: WorkerSpec) -> None:
        for outcome in CRON_OUTCOMES:
            self.cron_runs.labels(worker, outcome)
        for result in CLAIM_RESULTS:
            self.claims.labels(worker, result)
        self.cron_last_tick.labels(worker)
        self.cron_last_success.labels(worker)
        if spec.cron:
            self.cron_period.labels(worker).set(cron_period(spec.cron, spec.timezone))

    def output_dropped_line(self, worker: str, stream: str) -> None:
        """For supervisor.output: one line of `worker` ("": the supervisor's) was dropped."""
        self.output_dropped.labels(worker, stream).inc()

    def __call__(self, event: Event) -> None:
        name = event.worker
        if isinstance(event, LeadershipGained | LeadershipLost | LeaseRenewed | NodeHeartbeat
                      | DatabaseCall):
            self._coordination(event)
        elif isinstance(event, FleetControlSeen):
            for worker in self._pausable:
                self.paused.labels(worker).set(1 if worker in event.paused else 0)
            self.draining.set(1 if event.draining else 0)
        elif isinstance(event, CoordinationSeen | CronClaimed | CronRunEnded):
            self._mode(event)
        elif isinstance(event, WorkerStarted):
            self._worker_series(name)  # a worker added by a reload
            self.worker_up.labels(name).set(1)
            self.backoff.labels(name).set(0)
            self.failed.labels(name).set(0)
        elif isinstance(event, WorkerExited):
            self.worker_up.labels(name).set(0)
            self.exits.labels(name, str(event.reason)).inc()
        elif isinstance(event, RestartScheduled):
            self.restarts.labels(name).inc()
            self.backoff.labels(name).set(event.delay)
            self.attempt.labels(name).set(event.attempt)
        elif isinstance(event, WorkerGaveUp):
            self.failed.labels(name).set(1)
        elif isinstance(event, TrustDeadlineKilled):
            self.deadline_kills.labels(name).inc()

    def _mode(self, event: Event) -> None:
        name = event.worker
        if isinstance(event, CoordinationSeen):
            self._coordinated_seen(event)
            self.generation.labels(name).set(event.generation)
            self.index.labels(name).set(-1 if event.index is None else event.index)
            self.count.labels(name).set(event.count)
        elif isinstance(event, CronClaimed):
            self.claims.labels(name, event.result).inc()
            if event.result in _CLAIM_OUTCOME:
                self.cron_runs.labels(name, _CLAIM_OUTCOME[event.result]).inc()
        elif isinstance(event, CronRunEnded):
            outcome = event.state if event.recorded else "lost"
            self.cron_runs.labels(name, outcome).inc()
            self.cron_last_tick.labels(name).set(event.tick)
            if event.state == "succeeded":
                self.cron_last_success.labels(name).set(time.time())

    def _coordinated_seen(self, event: CoordinationSeen) -> None:
        """Members as the publisher sees them, and the time from a change of members to
        the generation that covers it (measured on this process's monotonic clock)."""
        name, now = event.worker, time.monotonic()
        if event.members is None:  # not (or no longer) the publisher: a stale count
            with contextlib.suppress(KeyError):  # would mislead a max() over nodes
                self.members.remove(name)
            self._members_seen.pop(name, None)
        else:
            self.members.labels(name).set(event.members)
            if self._members_seen.get(name, (None, 0.0))[0] != event.members:
                self._members_seen[name] = (event.members, now)
        seen = self._generation_seen.get(name)
        self._generation_seen[name] = event.generation
        if seen is not None and event.generation > seen and name in self._members_seen:
            self.rebalance.labels(name).set(now - self._members_seen[name][1])

    def _coordination(self, event: Event) -> None:
        if isinstance(event, LeadershipGained):
            self.leader.labels(event.worker, event.group).set(1)
            self.term.labels(event.worker, event.group).set(event.term)
            self.leadership_changes.labels(event.worker, event.group, "gained").inc()
        elif isinstance(event, LeadershipLost):
            self.leader.labels(event.worker, event.group).set(0)
            self.term.labels(event.worker, event.group).set(0)
            self.leadership_changes.labels(event.worker, event.group, "lost").inc()
        elif isinstance(event, LeaseRenewed):
            counter = self.renewals if event.ok else self.renewal_failures
            counter.labels(event.worker, event.group).inc()
        elif isinstance(event, NodeHeartbeat):
            self.heartbeat.set(event.at)
            self.clock_offset.set(event.clock_offset)
        elif isinstance(event, DatabaseCall):
            result = "ok" if event.ok else "error"
            self.db_seconds.labels(event.operation, result).observe(event.seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)

    def negotiated(self, accept: str) -> tuple[bytes, str]:
        """The body and its content type: OpenMetrics when `accept` (the scraper's Accept
        header) asks for it, else the Prometheus text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def cron_period(expr: str, timezone: str, now: float | None = None) -> float:
    """The longest gap between the next 16 ticks of a schedule (a week-day schedule's
    weekend counts), for "no success in N periods"."""
    schedule, tz = parse_schedule(expr), parse_timezone(timezone)
    tick = next_tick(schedule, tz, time.time() if now is None else now)
    longest = 0.0
    for _ in range(16):
        following = next_tick(schedule, tz, tick)
        longest, tick = max(longest, following - tick), following
    return longest

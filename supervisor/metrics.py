"""Prometheus metrics, in a registry of their own, fed by events.

Names follow SPEC.md: `supervisor_worker_up`, `supervisor_worker_restarts_total`,
`supervisor_worker_exits_total{reason}`, `supervisor_leader`,
`supervisor_lease_renewals_total`, `supervisor_lease_renewal_failures_total`,
`supervisor_heartbeat_timestamp_seconds`, `supervisor_db_seconds`,
`supervisor_claims_total{result}`; plus cron run outcomes
(`supervisor_cron_runs_total{outcome}`), the backoff
state, so a worker that keeps failing is visible before anyone reads its logs, the
fencing token held, the database-minus-local clock offset, and the lines dropped because
a reader of the supervisor's output stalled
(`supervisor_output_dropped_lines_total{worker,stream}`, `worker=""` for the supervisor's
own log; counted by supervisor.output from any thread that logs as well as from the event
loop: prometheus-client's counters are thread-safe).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from supervisor.model import (
    CoordinationSeen,
    CronClaimed,
    CronRunEnded,
    DatabaseCall,
    Event,
    LeadershipGained,
    LeadershipLost,
    LeaseRenewed,
    NodeHeartbeat,
    RestartScheduled,
    WorkerExited,
    WorkerGaveUp,
    WorkerStarted,
)


class Metrics:
    """Subscriber: keeps the gauges and counters that /metrics exposes."""

    def __init__(self, workers: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.worker_up = Gauge("supervisor_worker_up", "1 while the worker's child runs",
                               ["worker"], registry=r)
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

        self.leader = Gauge("supervisor_leader",
                            "1 while this node holds the worker's lease and runs it",
                            ["worker", "group"], registry=r)
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
        self.claims = Counter("supervisor_claims", "Cron claims by this node, by result "
                              "(acquired, full, missed, overlap, error)",
                              ["worker", "result"], registry=r)
        self.cron_runs = Counter("supervisor_cron_runs", "Cron runs this node ran, by outcome "
                                 "(succeeded, failed, timed_out, stopped)",
                                 ["worker", "outcome"], registry=r)
        self.cron_last_tick = Gauge("supervisor_cron_last_tick_timestamp_seconds",
                                    "The tick of the last run this node finished",
                                    ["worker"], registry=r)
        self.members = Gauge("supervisor_members", "Live members of a coordinated worker, "
                             "as this node's last sync saw them", ["worker"], registry=r)
        self.generation = Gauge("supervisor_generation", "The coordinated worker's published "
                                "generation (0: none yet)", ["worker"], registry=r)
        self.index = Gauge("supervisor_worker_index", "This node's index in the generation; "
                           "-1 while standing by", ["worker"], registry=r)
        self.count = Gauge("supervisor_worker_count", "The generation's count", ["worker"],
                           registry=r)
        self.heartbeat = Gauge("supervisor_heartbeat_timestamp_seconds",
                               "When this node last proved itself alive to the database",
                               registry=r)
        self.clock_offset = Gauge("supervisor_db_clock_offset_seconds",
                                  "The database's clock minus this node's wall clock",
                                  registry=r)
        self.db_seconds = Histogram("supervisor_db_seconds", "Database round trips",
                                    ["operation", "result"], registry=r,
                                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                             1, 2.5, 5, 10))
        self.output_dropped = Counter(
            "supervisor_output_dropped_lines", "Lines not written because the reader of the "
            "supervisor's stdout or stderr stalled; worker=\"\" for the supervisor's own log",
            ["worker", "stream"], registry=r)
        self.output_dropped.labels("", "stderr")  # every series exists from the start
        for name in workers:
            self._output_series(name)

    def _output_series(self, worker: str) -> None:
        for stream in ("stdout", "stderr"):
            self.output_dropped.labels(worker, stream)

    def output_dropped_line(self, worker: str, stream: str) -> None:
        """For supervisor.output: one line of `worker` ("": the supervisor's) was dropped."""
        self.output_dropped.labels(worker, stream).inc()

    def __call__(self, event: Event) -> None:
        name = event.worker
        if isinstance(event, LeadershipGained | LeadershipLost | LeaseRenewed | NodeHeartbeat
                      | DatabaseCall):
            self._coordination(event)
        elif isinstance(event, WorkerStarted):
            self._output_series(name)  # a worker added by a reload
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
        elif isinstance(event, CoordinationSeen):
            if event.members is not None:
                self.members.labels(name).set(event.members)
            self.generation.labels(name).set(event.generation)
            self.index.labels(name).set(-1 if event.index is None else event.index)
            self.count.labels(name).set(event.count)
        elif isinstance(event, CronClaimed):
            self.claims.labels(name, event.result).inc()
        elif isinstance(event, CronRunEnded):
            self.cron_runs.labels(name, event.state).inc()
            self.cron_last_tick.labels(name).set(event.tick)

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
        return generate_latest(self.registry)

"""Prometheus metrics, in a registry of their own, fed by events.

Names follow SPEC.md: `supervisor_worker_up`, `supervisor_worker_restarts_total`,
`supervisor_worker_exits_total{reason}`; plus the backoff state, so a worker that
keeps failing is visible before anyone reads its logs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from supervisor.model import (
    Event,
    RestartScheduled,
    WorkerExited,
    WorkerGaveUp,
    WorkerStarted,
)


class Metrics:
    """Subscriber: keeps the gauges and counters that /metrics exposes."""

    def __init__(self) -> None:
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

    def __call__(self, event: Event) -> None:
        name = event.worker
        if isinstance(event, WorkerStarted):
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""The validated configuration as plain, frozen data: what the running supervisor uses.

`supervisor.config` validates a file with pydantic and hands the result over as
JSON (`to_plain` there, `node_from_plain` here). The long-running process never
imports pydantic: validation, at start and on SIGHUP, runs in a short-lived
child (`supervisor _validate`), which keeps the supervisor's memory small and a
validation bug unable to take it down. Field names match `supervisor.config`
one for one; a unit test keeps them so.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from supervisor.model import Mode, RestartPolicy, leader_stop_grace
from supervisor.policy import Backoff


@dataclass(frozen=True)
class WorkerSpec:
    module: str | None = None
    command: tuple[str, ...] | None = None
    mode: Mode = Mode.EVERY_NODE
    scope: str | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    backoff: Backoff = field(default_factory=Backoff)
    max_restarts: int = 0
    restart_window: float = 300.0
    critical: bool = False
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    pass_database_url: bool = False
    cron: str | None = None
    timezone: str = "UTC"
    max_run: int = 1
    max_per_node: int = 1
    timeout: float | None = None
    misfire_grace: float = 60.0
    overlap: str = "forbid"
    catch_up: str = "none"
    instances: int | None = None
    stable_window: float = 5.0


@dataclass(frozen=True)
class CoordinationSpec:
    lease_ttl: float = 10.0
    renew_interval: float = 1.0
    renew_deadline: float = 5.0

    @property
    def leader_stop_grace(self) -> float:
        return leader_stop_grace(self.lease_ttl, self.renew_interval, self.renew_deadline)


@dataclass(frozen=True)
class MetricsSpec:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 9464


@dataclass(frozen=True)
class HistorySpec:
    keep: float = 7 * 86400.0


@dataclass(frozen=True)
class NodeSpec:
    database_url: str = "sqlite:///supervisor.db"
    database_listen_url: str = ""
    node_id: str = ""
    group: str = "default"
    log_format: str = "text"
    coordination: CoordinationSpec = field(default_factory=CoordinationSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    history: HistorySpec = field(default_factory=HistorySpec)
    workers: dict[str, WorkerSpec] = field(default_factory=dict)


def worker_from_plain(data: dict[str, Any]) -> WorkerSpec:
    values = dict(data)
    values["mode"] = Mode(values["mode"])
    values["restart"] = RestartPolicy(values["restart"])
    values["stop_signal"] = signal.Signals(values["stop_signal"])
    values["backoff"] = Backoff(**values["backoff"])
    if values.get("command") is not None:
        values["command"] = tuple(values["command"])
    return WorkerSpec(**values)


def node_from_plain(data: dict[str, Any]) -> NodeSpec:
    """A NodeSpec from the JSON-ready dict that `supervisor.config.to_plain` makes."""
    values = dict(data)
    values["coordination"] = CoordinationSpec(**values["coordination"])
    values["metrics"] = MetricsSpec(**values["metrics"])
    values["history"] = HistorySpec(**values["history"])
    values["workers"] = {name: worker_from_plain(w) for name, w in values["workers"].items()}
    return NodeSpec(**values)

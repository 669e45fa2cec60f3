"""The config's one declaration: every key of the file, as plain frozen dataclasses.

Each field is declared here once: its name (the file's key), its type, its default
and, as `supervisor.fields` metadata, the checks a file's value must pass.
`supervisor.config` derives its pydantic models from these classes and validates a
file with them; the running supervisor uses the classes themselves.

The long-running process never imports pydantic: validation, at start and on
SIGHUP, runs in a short-lived child (`supervisor _validate`), which keeps the
supervisor's memory small and a validation bug unable to take it down. The child
hands the result over as JSON (`supervisor.config.to_plain` there, `node_from_plain`
here), which is rebuilt by walking these classes' field types.

Vocabulary: a *spec* is this validated, typed form (`NodeSpec` for the node,
`WorkerSpec` for one worker); the *config* is the file and the pydantic models that
read it (`supervisor.config.Settings` for the file, `WorkerConfig` for a
`[workers.NAME]` table).
"""

from __future__ import annotations

import dataclasses
import enum
import signal
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from supervisor.fields import Limits, Seconds
from supervisor.model import Mode, RestartPolicy, leader_stop_grace
from supervisor.policy import Backoff

_Spec = TypeVar("_Spec")


@dataclass(frozen=True)
class WorkerSpec:
    """One `[workers.NAME]` table; the name is the key it has in `NodeSpec.workers`."""

    module: str | None = None
    command: Annotated[tuple[str, ...] | None, Limits(min_length=1)] = None
    mode: Mode = Mode.EVERY_NODE
    scope: Literal["group", "global"] | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    backoff: Backoff = field(default_factory=Backoff)
    max_restarts: Annotated[int, Limits(ge=0)] = 0
    restart_window: Seconds = 300.0
    critical: bool = False
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: Seconds = 10.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    pass_database_url: bool = False
    # signals the supervisor receives that are passed on to this worker's children
    # (None: none, like an empty list)
    forward_signals: tuple[Literal["SIGUSR1", "SIGUSR2"], ...] | None = None
    # cron
    cron: str | None = None
    timezone: str = "UTC"
    max_run: Annotated[int, Limits(ge=1)] = 1
    max_per_node: Annotated[int, Limits(ge=1)] = 1
    timeout: Seconds | None = None
    misfire_grace: Seconds = 60.0
    overlap: Literal["forbid", "allow", "replace"] = "forbid"
    catch_up: Literal["none", "latest", "all"] = "none"
    # coordinated
    instances: Annotated[int | None, Limits(ge=1)] = None
    stable_window: Seconds = 5.0


@dataclass(frozen=True)
class CoordinationSpec:
    lease_ttl: Seconds = 10.0
    renew_interval: Seconds = 1.0
    renew_deadline: Seconds = 5.0

    @property
    def leader_stop_grace(self) -> float:
        return leader_stop_grace(self.lease_ttl, self.renew_interval, self.renew_deadline)


@dataclass(frozen=True)
class MetricsSpec:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Annotated[int, Limits(ge=0, le=65535)] = 9464


@dataclass(frozen=True)
class HistorySpec:
    keep: Seconds = 7 * 86400.0


@dataclass(frozen=True)
class NodeSpec:
    """The whole file. node_id and group are "" until filled from the environment
    (`supervisor.config.Settings.with_identity`), as they always are when running."""

    database_url: str = "sqlite:///supervisor.db"
    # Where PostgreSQL LISTENs for lease releases: "" database_url itself, "none" nowhere
    # (polling only), else a direct URL. A key of its own rather than a parameter smuggled
    # into database_url, or guessing PgBouncer from how a query fails: behind a pooler in
    # transaction mode a listener hears nothing and nothing fails, so only the operator knows.
    database_listen_url: str = ""
    node_id: str = ""
    group: str = ""
    log_format: Literal["text", "json"] = "text"
    # The supervisor's own records below this level are not written; children's lines
    # always are (they are the workers' output, not the supervisor's log).
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The local control socket (`supervisor ps`, `stop`, ...): "" the default path, in
    # $XDG_RUNTIME_DIR or a 0700 directory of its own, named after node_id
    # (supervisor.control.paths); a relative path is relative to the file's directory.
    control_socket: str = ""
    coordination: CoordinationSpec = field(default_factory=CoordinationSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    history: HistorySpec = field(default_factory=HistorySpec)
    workers: dict[str, WorkerSpec] = field(default_factory=dict)


def node_from_plain(data: dict[str, Any]) -> NodeSpec:
    """A NodeSpec from the JSON-ready dict that `supervisor.config.to_plain` makes."""
    return from_plain(NodeSpec, data)


def from_plain(cls: type[_Spec], data: dict[str, Any]) -> _Spec:
    """An instance of the spec dataclass `cls` from plain data (JSON types): enums,
    tuples and nested specs are rebuilt from the types the fields declare."""
    hints = typing.get_type_hints(cls)  # Annotated stripped; on load and reload only
    return cls(**{name: _from_plain_value(hints[name], value) for name, value in data.items()})


def _from_plain_value(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    kind = _concrete(kind)
    origin = typing.get_origin(kind)
    if origin is dict:
        inner = typing.get_args(kind)[1]
        return {key: _from_plain_value(inner, item) for key, item in value.items()}
    if origin is tuple:
        return tuple(value)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return from_plain(kind, value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    return value


def _concrete(kind: Any) -> Any:
    """`X | None` -> X (a value of None never gets here)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return others[0] if len(others) == 1 else kind
    return kind

"""Pure domain types: modes, policies, durations, exit statuses and events.

No I/O here. Events are past-tense records that feed logs, metrics and tests
alike; services publish them, subscribers never call back into services.
"""

from __future__ import annotations

import enum
import re
import signal
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


class Mode(enum.StrEnum):
    EVERY_NODE = "every-node"
    GROUP_LEADER = "group-leader"
    GLOBAL_LEADER = "global-leader"
    COORDINATED = "coordinated"
    CRON = "cron"


class RestartPolicy(enum.StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class ExitReason(enum.StrEnum):
    """Why a child ended; the `reason` label of `supervisor_worker_exits_total`."""

    EXITED = "exited"  # ended on its own with status 0
    FAILED = "failed"  # ended on its own with a non-zero status
    KILLED = "killed"  # killed by a signal nobody in the supervisor sent
    STOPPED = "stopped"  # stopped by the supervisor (shutdown, reload, lost right)
    SPAWN_FAILED = "spawn_failed"  # the program could not be started at all


# --- durations -------------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "500ms", "10s", "5m", "1h", "7d", "1m30s".

    Raises ValueError with a message fit for a user. Negative values are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as \"10s\" or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{_PART.pattern})+", text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or a string such as "
                '"500ms", "10s", "5m", "1h", "7d"'
            )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"invalid duration {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact string `parse_duration` reads back as `seconds`."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


# --- signals and secrets -----------------------------------------------------------------------


def parse_signal(value: object) -> signal.Signals:
    """A signal from its name ("SIGTERM", "TERM", case-insensitive) or number."""
    if isinstance(value, signal.Signals):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            raise ValueError(f"unknown signal number {value}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return signal.Signals[name]
        except KeyError:
            raise ValueError(f'unknown signal name "{value}"') from None
    raise ValueError(f"expected a signal name such as \"SIGTERM\", got {value!r}")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, errors and `check` output."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        # Unparseable: hide everything between "://" and the last "@".
        head, sep, rest = url.partition("://")
        if "@" in rest:
            return f"{head}{sep}***@{rest.rsplit('@', 1)[1]}"
        return url


# --- exit statuses and events ---------------------------------------------------------------


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended: an exit code, or the signal that killed it (returncode < 0)."""

    returncode: int
    stop_requested: bool = False

    @property
    def signal(self) -> signal.Signals | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None

    @property
    def success(self) -> bool:
        return self.returncode == 0

    @property
    def reason(self) -> ExitReason:
        if self.stop_requested:
            return ExitReason.STOPPED
        if self.returncode == 0:
            return ExitReason.EXITED
        if self.returncode < 0:
            return ExitReason.KILLED
        return ExitReason.FAILED

    def describe(self) -> str:
        sig = self.signal
        if sig is not None:
            return f"killed by {sig.name}"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"


@dataclass(frozen=True)
class Event:
    worker: str


@dataclass(frozen=True)
class WorkerStarted(Event):
    pid: int
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerExited(Event):
    pid: int | None
    reason: ExitReason
    description: str
    uptime: float


@dataclass(frozen=True)
class RestartScheduled(Event):
    delay: float
    attempt: int  # consecutive failed starts so far (1 for the first restart)


@dataclass(frozen=True)
class WorkerGaveUp(Event):
    """The restart limit was reached: the worker is failed and will not be started again."""

    restarts: int
    window: float
    critical: bool


@dataclass(frozen=True)
class WorkerOutput(Event):
    stream: str  # "stdout" or "stderr"
    line: str


@dataclass(frozen=True)
class ConfigReloaded(Event):
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfigRejected(Event):
    issues: tuple[str, ...] = field(default_factory=tuple)

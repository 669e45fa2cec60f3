"""Pure domain types: modes, policies, durations, exit statuses and events.

No I/O here. Events are past-tense records that feed logs, metrics and tests
alike; services publish them, subscribers never call back into services.
"""

from __future__ import annotations

import enum
import re
import signal
import time
from dataclasses import dataclass, field
from decimal import Decimal


class Mode(enum.StrEnum):
    EVERY_NODE = "every-node"
    GROUP_LEADER = "group-leader"
    GLOBAL_LEADER = "global-leader"
    COORDINATED = "coordinated"
    CRON = "cron"


KEY_LENGTH = 255  # characters in the database's key columns (lease names, coordinated keys)


# Key names, built and parsed here only. Worker names never contain "/" (config's
# WORKER_NAME); a group may, so a group is everything after the worker's "/".
_SEP = "/"
_LEADER = "leader/"


def leader_lease(worker: str, group: str | None = None) -> str:
    """A leader worker's lease name: "leader/<worker>", or "leader/<worker>/<group>"."""
    return _LEADER + worker if group is None else f"{_LEADER}{worker}{_SEP}{group}"


def lease_name(worker: str, mode: Mode, scope: str | None, group: str) -> str:
    """The lease a leader worker's nodes compete for: one per group, or one fleet-wide."""
    per_group = mode is Mode.GROUP_LEADER and scope != "global"
    return leader_lease(worker, group if per_group else None)


def parse_leader_lease(name: str) -> tuple[str, str | None] | None:
    """(worker, group or None) of a leader lease name; None for any other lease (a
    coordinated key's "coord/..." lease)."""
    if not name.startswith(_LEADER):
        return None
    return _worker_and_group(name[len(_LEADER):])


def coord_key(worker: str, scope: str | None, group: str) -> str:
    """A coordinated worker's membership key: per group with scope "group"."""
    return f"{worker}{_SEP}{group}" if scope == "group" else worker


def parse_coord_key(key: str) -> tuple[str, str | None]:
    """(worker, group or None) of a coordinated key: "indexer/blue" -> ("indexer", "blue"),
    "indexer" -> ("indexer", None)."""
    return _worker_and_group(key)


def per_group_prefix(key: str) -> str:
    """What the per-group forms of a fleet-wide name begin with: `leader_lease(w, g)`
    starts with `per_group_prefix(leader_lease(w))`, and the coordinated key of `w` in
    group g with `per_group_prefix(w)`."""
    return key + _SEP


def _worker_and_group(key: str) -> tuple[str, str | None]:
    worker, _, group = key.partition(_SEP)
    return worker, group or None


def coord_lease(key: str) -> str:
    """The lease whose holder publishes a coordinated key's generations."""
    return f"coord/{key}"


def database_keys(worker: str, mode: Mode, scope: str | None, group: str) -> list[str]:
    """Every key a worker's node writes to the database's key columns."""
    if mode in (Mode.GLOBAL_LEADER, Mode.GROUP_LEADER):
        return [lease_name(worker, mode, scope, group)]
    if mode is Mode.COORDINATED:
        key = coord_key(worker, scope, group)
        return [key, coord_lease(key)]
    return []


class RestartPolicy(enum.StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class WorkerState(enum.StrEnum):
    WAITING = "waiting"  # for its mode's grant
    RUNNING = "running"
    BACKOFF = "backoff"
    EXITED = "exited"  # ended and not restarted under its policy
    FAILED = "failed"  # gave up after max_restarts
    STOPPED = "stopped"


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
        raise ValueError(
            f'expected a duration such as "10s" or a number of seconds, got {value!r}'
        )
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range: refused like any bad duration
            raise ValueError(f"invalid duration {value!r}: too large") from None
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{_PART.pattern})+", text):
            # "ms" divides by 1000: 9 * 0.001 != 0.009, but 9 / 1000 == 0.009 exactly
            seconds = sum(
                float(n) / 1000 if u == "ms" else float(n) * _UNIT_SECONDS[u]
                for n, u in _PART.findall(text)
            )
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
    candidates = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            candidates.append(f"{int(seconds / size)}{unit}")
    if seconds < 1 and (seconds * 1000).is_integer():
        candidates.append(f"{int(seconds * 1000)}ms")
    # Not f"{seconds:g}s": it keeps 6 digits ("1.23457s" for 1.23456789) and writes exponents
    # ("1e-05s") that parse_duration refuses. repr() is the shortest string that reads back as
    # the same float; Decimal spells it without an exponent. Every candidate is checked.
    candidates.append(f"{Decimal(repr(float(seconds))):f}s")
    return next(text for text in candidates if parse_duration(text) == seconds)


def format_utc(epoch: float) -> str:
    """An instant as ISO 8601 in UTC with milliseconds: 2026-01-31T12:00:00.250Z."""
    seconds, millis = divmod(round(epoch * 1000), 1000)  # rounded: 40.7999999 -> 40.800
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def leader_stop_grace(lease_ttl: float, renew_interval: float, renew_deadline: float) -> float:
    """How long a leader that lost trust lets its child stop before SIGKILL.

    The child must be dead before the lease can expire anywhere:
    renew_deadline + grace + renew_interval + 1 s margin <= lease_ttl.
    """
    return lease_ttl - renew_deadline - renew_interval - 1.0


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


# "user:password@" in a URL. The password runs to the LAST "@" (greedy) and may hold any
# character: SQLAlchemy's make_url accepts an unencoded "/", "?", "#" or ":" in a password, where
# urlsplit ends the authority early and found no password at all, so the old urlsplit-based
# mask_url returned such URLs unmasked (a leak, guarantee 10).
_USERINFO = re.compile(r"(?P<user>[^:/?#@]*):(?P<password>.*)@", re.DOTALL)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword)=)[^&#]*")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, errors and `check` output.

    Errs on the side of hiding: everything between the user name's ":" and the last "@" goes,
    and so does a `password=` query parameter (which libpq and PyMySQL also read).
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    rest = _USERINFO.sub(lambda m: f"{m['user']}:***@", rest, count=1)
    return head + sep + _QUERY_SECRET.sub(r"\1***", rest)


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
    exit_code: int | None = None  # None: killed by a signal, or never started
    signal: str | None = None  # the signal's name ("SIGKILL") when one ended it


@dataclass(frozen=True)
class RestartScheduled(Event):
    delay: float
    attempt: int  # consecutive failed starts so far (1 for the first restart)


@dataclass(frozen=True)
class TrustDeadlineKilled(Event):
    """The trust watchdog SIGKILLed the worker's child at its trust deadline, because the
    supervisor could not stop it in time (a blocked loop, a long stop, a stopped process)."""

    pid: int


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


@dataclass(frozen=True)
class LeadershipGained(Event):
    group: str
    lease: str
    term: int  # the fencing token


@dataclass(frozen=True)
class LeadershipLost(Event):
    group: str
    lease: str
    term: int
    reason: str


@dataclass(frozen=True)
class LeaseRenewed(Event):
    group: str
    ok: bool


@dataclass(frozen=True)
class NodeHeartbeat(Event):
    """The node proved itself alive to the database (worker is "")."""

    at: float  # wall clock, for the heartbeat timestamp metric only
    clock_offset: float  # database clock minus local wall clock, seconds


@dataclass(frozen=True)
class FleetControlSeen(Event):
    """This node's sync read changed fleet-control rows (worker is ""): the workers paused
    on its group (or on every group), and whether this node is draining."""

    paused: frozenset[str]
    draining: bool


@dataclass(frozen=True)
class DatabaseCall(Event):
    operation: str
    seconds: float
    ok: bool


@dataclass(frozen=True)
class CronClaimed(Event):
    """What this node's claim of a cron tick got (the `result` of supervisor_cron_claims_total):
    acquired, full, missed, overlap (skipped: an earlier run is still going), paused
    (skipped: the worker is paused fleet-wide), or error."""

    tick: float
    result: str
    slot: int | None = None
    token: int | None = None


@dataclass(frozen=True)
class CronRunEnded(Event):
    """A cron run this node ran has ended: succeeded, failed, timed_out or stopped."""

    tick: float
    slot: int
    token: int
    state: str
    exit_code: int | None
    duration: float
    recorded: bool  # the database took the outcome (False: it will show as lost)


@dataclass(frozen=True)
class CoordinationSeen(Event):
    """What one sync saw of a coordinated worker: its generation, count, this node's
    index (None: standing by, or not assigned yet) and the live members."""

    generation: int
    count: int
    index: int | None
    members: int | None

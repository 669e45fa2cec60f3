"""Cron and @every schedules: pure functions of (expression, timezone, now).

Expressions: five cron fields; six with a leading seconds field (as in Quartz
and robfig/cron); or "@every <duration>", whose ticks are aligned to the Unix
epoch so every node computes the same instants. This module validates
expressions now; tick computation for cron mode builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from supervisor.model import format_duration, parse_duration

_NEVER_FIRES_PROBE = datetime(2000, 1, 1, tzinfo=UTC)  # fixed: validation stays pure
_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


@dataclass(frozen=True)
class CronSchedule:
    expr: str
    seconds_field: bool  # six fields, the first one for seconds


@dataclass(frozen=True)
class EverySchedule:
    period: float  # seconds, > 0

    @property
    def expr(self) -> str:
        return f"@every {format_duration(self.period)}"


Schedule = CronSchedule | EverySchedule


def parse_schedule(expr: str) -> Schedule:
    """Parse and validate a schedule; raises ValueError naming the expression."""
    text = " ".join(expr.split())
    if text.startswith("@every"):
        rest = text.removeprefix("@every").strip()
        try:
            period = parse_duration(rest)
        except ValueError:
            raise ValueError(
                f'invalid schedule "{expr}": @every takes a duration such as "30s"'
            ) from None
        if period <= 0:
            raise ValueError(f'invalid schedule "{expr}": the period must be positive')
        return EverySchedule(period)
    if text.lower() in _ALIASES:
        return CronSchedule(text.lower(), seconds_field=False)
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise ValueError(
            f'invalid cron expression "{expr}": expected five fields '
            "(minute hour day month weekday), six with a leading seconds field, or @every"
        )
    seconds = len(fields) == 6
    # Imported here: croniter (with dateutil) costs megabytes that a node without a cron
    # worker should not carry.
    from croniter import CroniterBadDateError, croniter

    if not croniter.is_valid(text, second_at_beginning=seconds):
        raise ValueError(f'invalid cron expression "{expr}"')
    # fix: "0 0 30 2 *" (Feb 30) or "0 0 31 4 *" passed is_valid, then never fires: croniter
    # raises CroniterBadDateError at the first tick computation, long after `check` said yes.
    try:
        croniter(text, _NEVER_FIRES_PROBE, second_at_beginning=seconds).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f'invalid cron expression "{expr}": it never fires') from None
    return CronSchedule(text, seconds_field=seconds)


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone; raises ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = 'use an IANA name such as "Europe/Berlin"'
        raise ValueError(f'unknown time zone "{name}" ({hint})') from None

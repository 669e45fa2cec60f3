"""Cron and @every schedules: pure functions of (expression, timezone, now).

Expressions: five cron fields; six with a leading seconds field (as in Quartz
and robfig/cron); or "@every <duration>" (100ms to 366 days), whose ticks are aligned to
the Unix epoch so every node computes the same instants.

The cron dialect is Vixie cron's (as in cronie) and nothing more (supervisor/cron_dialect.py):
`*`, numbers, names, ranges `A-B` with A <= B, lists and steps. croniter accepts more
(`R`, random, which gives every node other ticks; `H`, `?`, `L`, `W`, `#`; wrap-around
ranges) and reads some forms otherwise (`1-1` as `*`; `1/2` in day-of-week stopping at
Saturday), so each field is expanded by the dialect and croniter is handed plain lists.
An expression whose day-of-month and day-of-week Vixie cron ANDs and croniter ORs is
refused.

A tick is the scheduled instant in UTC, as epoch seconds; it is the claim key, so every
node must compute the same ticks from the same (expression, timezone). Tick functions are
pure: `after`/`at` is an argument, never a clock read.

Cron expressions are matched against the local wall time of `tz`; croniter iterates
NAIVE wall times (it treats them as plain calendar values) and this module maps each to
an instant itself, because croniter given an aware start fires twice in a repeated hour.
The DST rules:

- a wall time that does not exist (spring-forward gap) runs once, at the end of the gap
  (02:30 on 2024-03-31 in Europe/Berlin runs at 03:00 CEST = 01:00 UTC); all the gap's
  walls and the gap's end map to that one instant, which is a single tick;
- an ambiguous wall time (fall-back fold) runs once, at its first occurrence (fold=0):
  01:30 on 2024-11-03 in America/New_York runs at 01:30 EDT = 05:30 UTC only, and the
  repeated hour itself (01:00-02:00 EST) has no ticks.

The wall -> instant map is monotone, so ticks come out strictly increasing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from supervisor.cron_dialect import normalise
from supervisor.model import format_duration, parse_duration

_NEVER_FIRES_PROBE = datetime(2000, 1, 1, tzinfo=UTC)  # a fixed instant: validation stays pure
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
    for char in expr:
        if not (char.isascii() and (char.isprintable() or char in _BLANKS)):
            raise ValueError(
                f'invalid schedule "{expr}": character {char!r} (U+{ord(char):04X}) is not '
                "allowed; write ASCII digits, names and spaces"
            )
    text = " ".join(expr.split())
    if text.startswith("@every"):
        return _parse_every(expr, text.removeprefix("@every").strip())
    if text.lower() in _ALIASES:
        return CronSchedule(text.lower(), seconds_field=False)
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise ValueError(
            f'invalid cron expression "{expr}": expected five fields '
            "(minute hour day month weekday), six with a leading seconds field, or @every"
        )
    seconds = len(fields) == 6
    walls = normalise(expr, fields)
    # Imported here: croniter (with dateutil) costs megabytes that a node without a cron
    # worker should not carry.
    from croniter import CroniterBadDateError, croniter

    # "0 0 30 2 *" (Feb 30) or "0 0 31 4 *" is well formed and never fires: croniter
    # raises CroniterBadDateError at the first tick computation. Checked on the normalised
    # expression, so that "0 0 31-31 6 *" (June 31st) is caught too.
    try:
        croniter(walls, _NEVER_FIRES_PROBE, second_at_beginning=seconds).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f'invalid cron expression "{expr}": it never fires') from None
    return CronSchedule(text, seconds_field=seconds)


def _parse_every(expr: str, rest: str) -> EverySchedule:
    try:
        period = parse_duration(rest)
    except ValueError:
        raise ValueError(
            f'invalid schedule "{expr}": @every takes a duration such as "30s"'
        ) from None
    if period <= 0:
        raise ValueError(f'invalid schedule "{expr}": the period must be positive')
    if period < EVERY_MIN:
        raise ValueError(
            f'invalid schedule "{expr}": the period must be at least '
            f"{format_duration(EVERY_MIN)}: every tick is claimed in the database by every "
            "node, one transaction each, so a shorter period keeps the database busy with "
            "claims and ticks come faster than a run can start"
        )
    if period > EVERY_MAX:
        raise ValueError(
            f'invalid schedule "{expr}": the period must be at most '
            f"{format_duration(EVERY_MAX)}: ticks are multiples of the period since 1970, so "
            "a longer one runs on odd dates, and the longest put ticks past the year 9999, "
            'where `supervisor status` fails; for rare runs write a cron expression such as '
            '"0 0 1 1 *"'
        )
    return EverySchedule(period)


_BLANKS = " \t"
EVERY_MIN = 0.1  # seconds; see _parse_every
EVERY_MAX = 366 * 86400.0


@functools.lru_cache(maxsize=256)
def _croniter_expr(schedule: CronSchedule) -> str:
    """What croniter is given for a schedule: aliases as they are, fields normalised."""
    if schedule.expr.startswith("@"):
        return schedule.expr
    return normalise(schedule.expr, schedule.expr.split(" "))


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone; raises ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = 'use an IANA name such as "Europe/Berlin"'
        raise ValueError(f'unknown time zone "{name}" ({hint})') from None


# --- ticks -------------------------------------------------------------------------------

_SECOND = timedelta(seconds=1)


def next_tick(schedule: Schedule, tz: ZoneInfo, after: float) -> float:
    """The first tick strictly after `after` (epoch seconds), as epoch seconds."""
    return next(_ticks(schedule, tz, after))


def previous_tick(schedule: Schedule, tz: ZoneInfo, at: float) -> float | None:
    """The latest tick at or before `at`; None when croniter finds none (far in the past)."""
    if isinstance(schedule, EverySchedule):
        k = math.floor(at / schedule.period)
        if k * schedule.period > at:  # float rounding of the division, one step at most
            k -= 1
        elif (k + 1) * schedule.period <= at:
            k += 1
        return k * schedule.period
    from croniter import CroniterBadDateError, croniter

    walls = croniter(
        _croniter_expr(schedule), _boundary_wall(tz, at) + _SECOND,
        second_at_beginning=schedule.seconds_field,
    )
    try:
        wall = walls.get_prev(datetime)  # the latest wall <= the boundary wall
    except CroniterBadDateError:
        return None
    return _instant(tz, wall)[0]


def recent_ticks(
    schedule: Schedule, tz: ZoneInfo, start: float, end: float, limit: int
) -> list[float]:
    """The latest ticks t with start < t <= end, at most `limit` of them, oldest first.

    Walks back from `end`, so a long span costs `limit` steps, not one per tick in it.
    """
    ticks: list[float] = []
    at = end
    while len(ticks) < limit:
        tick = previous_tick(schedule, tz, at)
        if tick is None or tick <= start or (ticks and tick >= ticks[-1]):
            break
        ticks.append(tick)
        # Cron ticks fall on whole seconds, @every ticks a period apart: half of the
        # smaller step back lands strictly between this tick and the one before.
        step = schedule.period if isinstance(schedule, EverySchedule) else 1.0
        at = tick - step / 2
    ticks.reverse()
    return ticks


def _ticks(schedule: Schedule, tz: ZoneInfo, after: float) -> Iterator[float]:
    """Every tick strictly after `after`, strictly increasing; the caller bounds it."""
    if isinstance(schedule, EverySchedule):
        return _every_ticks(schedule.period, after)
    return _cron_ticks(schedule, tz, after)


def _every_ticks(period: float, after: float) -> Iterator[float]:
    """Multiples of the period since the Unix epoch: the same instants on every node."""
    k = math.floor(after / period) + 1
    if k * period <= after:  # float rounding of the division, one step at most
        k += 1
    elif (k - 1) * period > after:
        k -= 1
    while True:
        yield k * period
        k += 1


def _cron_ticks(schedule: CronSchedule, tz: ZoneInfo, after: float) -> Iterator[float]:
    from croniter import croniter

    walls = croniter(
        _croniter_expr(schedule), _boundary_wall(tz, after),
        second_at_beginning=schedule.seconds_field,
    )
    last = after
    while True:
        wall = walls.get_next(datetime)
        tick, existed = _instant(tz, wall)
        if not existed and (gap_end := _wall(tz, tick)) > wall:
            # The rest of the gap and the gap's end run at this same instant: resume after
            # the end, so that a seconds schedule does not step through an hour of duplicates.
            # Only ever forward: walls keep advancing, so this loop always progresses.
            walls.set_current(gap_end, force=True)
        if tick > last:  # holds by monotonicity; kept so that no caller ever sees a repeat
            last = tick
            yield tick


def _boundary_wall(tz: ZoneInfo, at: float) -> datetime:
    """The whole-second wall W such that walls <= W run at or before `at`, later walls after.

    Usually the wall clock at `at`. But when `at` falls in the second pass of a repeated
    hour, every wall of that hour already ran in the first pass (fold=0), so W is the last
    wall of the repeated hour.
    """
    second = math.floor(at)
    local = datetime.fromtimestamp(second, tz)
    if not local.fold:
        return local.replace(tzinfo=None)
    first_pass = int(local.replace(fold=0).timestamp())
    fall_back = _offset_change(tz, first_pass, second)
    return _wall(tz, fall_back - 1)  # the first pass's last second: the fold's last wall


def _instant(tz: ZoneInfo, wall: datetime) -> tuple[float, bool]:
    """When a naive wall time runs, and whether it exists.

    An ambiguous wall runs at its first occurrence (fold=0). A wall in a gap runs at the
    end of the gap: the instant the clock jumped, which is where the offset changes
    between the gap wall read with the later offset (fold=1) and with the earlier one.
    """
    instant = int(wall.replace(tzinfo=tz).timestamp())
    if _wall(tz, instant) == wall:
        return float(instant), True
    earlier = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    return float(_offset_change(tz, earlier, instant)), False


def _offset_change(tz: ZoneInfo, lo: int, hi: int) -> int:
    """The first second in (lo, hi] with hi's UTC offset, given lo's differs: a transition.

    Bisection over whole seconds (tz transitions fall on whole seconds): a day-long gap
    takes 17 steps.
    """
    offset = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi


def _wall(tz: ZoneInfo, instant: float) -> datetime:
    """The naive local wall time at an instant."""
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None)

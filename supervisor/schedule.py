"""Cron and @every schedules: pure functions of (expression, timezone, now).

Expressions: five cron fields; six with a leading seconds field (as in Quartz
and robfig/cron); or "@every <duration>" (100ms to 366 days), whose ticks are aligned to
the Unix epoch so every node computes the same instants.

The cron dialect is Vixie cron's (as in cronie) and nothing more (see "the cron dialect"
below): `*`, numbers, names, ranges `A-B` with A <= B, lists and steps. croniter accepts more (`R`,
random, which gives every node other ticks; `H`, `?`, `L`, `W`, `#`; wrap-around ranges)
and reads some forms otherwise (`1-1` as `*`; `1/2` in day-of-week stopping at Saturday),
so each field is expanded here and croniter is handed plain lists. An expression whose
day-of-month and day-of-week Vixie cron ANDs and croniter ORs is refused.

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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    walls = _normalise(expr, fields)
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


# --- the cron dialect ----------------------------------------------------------------------
#
# Each field is a comma-separated list of items; an item is `*`, `N`, `A-B` (A <= B) or
# either of these followed by `/STEP` (STEP >= 1), or `N/STEP` (N to the field's maximum,
# not in day-of-week). N, A, B: ASCII decimal numbers, or three-letter English names in the
# month (JAN-DEC) and day-of-week (SUN-SAT) fields, any case. Day-of-week 0 and 7 are both
# Sunday. Nothing else: no `?`, `L`, `W`, `#`, `H`, `R`, no wrap-around ranges.
#
# Each field is expanded here to the exact set of values it means and handed to croniter
# as `*` or a plain list of numbers, so croniter's own readings of ranges and steps (which
# differ from Vixie cron's: `1-1` as `*`, `1/2` in day-of-week stopping at Saturday) never
# apply.
#
# Day of month and day of week (Vixie cron, cronie): when both are restricted, a day
# matches if EITHER matches; when either starts with `*`, BOTH must match. croniter and
# Kubernetes (robfig/cron) read `*/2` as restricted, so they OR where Vixie ANDs; such an
# expression is refused unless both readings are the same days.

_BLANKS = " \t"


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is the value low + i


_SECOND_F = _Field("second", 0, 59)
_MINUTE_F = _Field("minute", 0, 59)
_HOUR_F = _Field("hour", 0, 23)
_DOM_F = _Field("day-of-month", 1, 31)
_MONTH_F = _Field("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG",
                                   "SEP", "OCT", "NOV", "DEC"))
_DOW_F = _Field("day-of-week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"))
_ITEM = re.compile(r"(?P<start>\*|[0-9A-Za-z]+)(?:-(?P<end>[0-9A-Za-z]+))?(?:/(?P<step>[0-9]+))?",
                   re.ASCII)

EVERY_MIN = 0.1  # seconds; see _parse_every
EVERY_MAX = 366 * 86400.0


def _normalise(expr: str, fields: list[str]) -> str:
    """The croniter expression with exactly the meaning of `fields` in this dialect."""
    specs = [_MINUTE_F, _HOUR_F, _DOM_F, _MONTH_F, _DOW_F]
    if len(fields) == 6:
        specs.insert(0, _SECOND_F)
    sets = [_expand(expr, f, text) for f, text in zip(specs, fields, strict=True)]
    dom_text, dow_text = fields[-3], fields[-1]
    dom, dow = sets[-3], {d % 7 for d in sets[-1]}
    dom_all, dow_all = dom == set(range(1, 32)), dow == set(range(7))
    vixie_and = dom_text.startswith("*") or dow_text.startswith("*")
    if vixie_and and not dom_all and not dow_all:
        raise ValueError(_day_rule_message(expr, dom_text, dow_text))
    # What remains means one thing everywhere: either one day field matches every day
    # (AND: the other decides; OR with a restricted one: every day), or both are
    # restricted and neither is every day (OR).
    if vixie_and:
        dom_out = "*" if dom_all else _listed(dom)
        dow_out = "*" if dow_all else _listed(dow)
    elif dom_all or dow_all:
        dom_out = dow_out = "*"  # e.g. "1-31" or "0-6": OR with every day
    else:
        dom_out, dow_out = _listed(dom), _listed(dow)
    out = [_listed(s) if s != set(range(f.low, f.high + 1)) else "*"
           for f, s in zip(specs, sets, strict=True)]
    out[-3], out[-1] = dom_out, dow_out
    return " ".join(out)


@functools.lru_cache(maxsize=256)
def _croniter_expr(schedule: CronSchedule) -> str:
    """What croniter is given for a schedule: aliases as they are, fields normalised."""
    if schedule.expr.startswith("@"):
        return schedule.expr
    return _normalise(schedule.expr, schedule.expr.split(" "))


def _name(field: _Field, value: int) -> str:
    return field.names[value - field.low] if field.names else str(value)


def _span(field: _Field, token: str, bound: int) -> str:
    """`token` and the field's bound as a range, lowest first; the token alone when equal."""
    other = _name(field, bound)
    if _value(field, token, lambda why: ValueError(why)) == bound:
        return token
    return f"{other}-{token}" if bound == field.low else f"{token}-{other}"


def _unstarred(field: _Field, text: str) -> str:
    """The field with each leading * spelled as the full range: the same values, restricted."""
    return ",".join(f"{field.low}-{field.high}{item[1:]}" if item.startswith("*") else item
                    for item in text.split(","))


def _listed(values: set[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _expand(expr: str, field: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _expand_item(expr, field, item)
    return values


def _expand_item(expr: str, field: _Field, item: str) -> set[int]:
    def bad(why: str) -> ValueError:
        return ValueError(f'invalid cron expression "{expr}": {field.name} field, "{item}": {why}')

    match = _ITEM.fullmatch(item)
    if match is None:
        for token in ("?", "L", "W", "#", "H", "R"):
            if token in item.upper():
                return _refuse_token(bad, token)
        raise bad("expected *, a number, a range a-b, and an optional /step")
    start, end, step_text = match.group("start", "end", "step")
    if start == "*":
        if end is not None:
            raise bad("* cannot start a range")
        low, high = field.low, field.high
    else:
        low = _value(field, start, bad)
        high = _value(field, end, bad) if end is not None else low
        if end is None and step_text is not None:
            if field is _DOW_F:
                raise bad(
                    "a/n is read differently by cron implementations in day-of-week (up to "
                    "Saturday or up to Sunday = 7); write a range such as 1-7/2 or a list "
                    "such as 1,3,5"
                )
            high = field.high  # N/STEP: from N to the field's maximum, as in Vixie cron
        if low > high:
            raise bad(
                f"a range must not wrap around ({start} comes after {end}); write it as "
                f"two ranges: {_span(field, start, 6 if field is _DOW_F else field.high)},"
                f"{_span(field, end, field.low)}"
            )
    step = 1
    if step_text is not None:
        step = int(step_text)
        if step < 1:
            raise bad("the step must be 1 or more")
    return set(range(low, high + 1, step))


def _refuse_token(bad: Callable[[str], ValueError], token: str) -> set[int]:
    why = {
        "R": "R (random) is not supported: every node would pick a different time",
        "H": "H (hashed) is not supported",
        "?": "? is not supported; write *",
        "L": "L (last) is not supported",
        "W": "W (nearest weekday) is not supported",
        "#": "# (nth weekday of the month) is not supported",
    }[token]
    raise bad(why + "; the dialect is *, numbers, names, ranges a-b, lists and /steps")


def _value(field: _Field, token: str, bad: Callable[[str], ValueError]) -> int:
    if token.isdigit():
        value = int(token)
    elif token.upper() in field.names:
        value = field.low + field.names.index(token.upper())
    else:
        special = re.fullmatch(r"[0-9]*([LWHR])[0-9]*", token.upper(), re.ASCII)
        if special:
            _refuse_token(bad, special.group(1))
        names = f" or a name {field.names[0]}-{field.names[-2 if field is _DOW_F else -1]}" \
            if field.names else ""
        raise bad(f'"{token}" is not a number{names}')
    if not field.low <= value <= field.high:
        raise bad(f"{value} is out of range {field.low}-{field.high}")
    return value


def _day_rule_message(expr: str, dom_text: str, dow_text: str) -> str:
    days, weekdays = _unstarred(_DOM_F, dom_text), _unstarred(_DOW_F, dow_text)
    return (
        f'ambiguous cron expression "{expr}": day-of-month "{dom_text}" and day-of-week '
        f'"{dow_text}" are read two ways. Vixie cron and cronie (a field starting with * '
        f"counts as unrestricted) run on the days that match BOTH; croniter and Kubernetes "
        f"run on the days that match EITHER. For EITHER, write both fields without *: "
        f'"{days}" and "{weekdays}" (or use two workers, one with day-of-month "{days}" '
        f'and day-of-week *, one with day-of-month * and day-of-week "{weekdays}"). BOTH '
        f'is no cron expression: write day-of-month "{days}" with day-of-week * and let '
        f'the worker exit on days other than "{weekdays}", or list the dates per month.'
    )


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

"""The cron dialect: one meaning on every node, the meaning users have from Vixie cron.

What is accepted is exactly what the README's "Cron mode" documents: per field `*`, `N`,
`A-B` with A <= B, either followed by `/STEP`, `N/STEP` (not in day-of-week), lists of
these, month and weekday names; day-of-week 0 and 7 are Sunday. Everything croniter
accepts beyond that (`R`, `H`, `?`, `L`, `W`, `#`, wrap-around ranges) is refused, and the
croniter quirks (`1-1` read as `*`, `1/2` in day-of-week stopping at Saturday, OR for
`*/2` where Vixie cron ANDs) never decide a tick.

The differential test at the end compares ticks with a reference written here (Vixie
semantics and the module's documented DST rule) over thousands of seeded expressions and
with cronsim (Debian cron semantics) away from DST transitions.
"""

from __future__ import annotations

import calendar
import math
import random
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import pytest

from supervisor.config import parse_config
from supervisor.errors import ConfigError
from supervisor.model import format_utc
from supervisor.schedule import (
    EverySchedule,
    _offset_change,
    next_tick,
    parse_schedule,
    previous_tick,
    recent_ticks,
)
from tests.support.ticks import ticks_between

UTC_TZ = ZoneInfo("UTC")
DAY = 86400.0
EVERY_MIN, EVERY_MAX = 0.1, 366 * DAY  # the documented bounds of @every


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


def days(expr: str, start: float, n: int = 8, tz: ZoneInfo = UTC_TZ) -> list[str]:
    """The first n ticks after start, as weekday and date."""
    got = ticks_between(parse_schedule(expr), tz, start, start + 3 * 366 * DAY, n)
    return [datetime.fromtimestamp(t, tz).strftime("%a %Y-%m-%d %H:%M:%S") for t in got]


# --- 1. tokens the README does not document are refused, naming field and token --------

@pytest.mark.parametrize(
    ("expr", "field", "token", "why"),
    [
        ("R * * * *", "minute", "R", "random"),
        ("0 R * * *", "hour", "R", "random"),
        ("H * * * *", "minute", "H", "hashed"),
        ("H(0-29) * * * *", "minute", "H(0-29)", "hashed"),
        ("0 0 ? * MON", "day-of-month", "?", "not supported"),
        ("0 0 * * ?", "day-of-week", "?", "not supported"),
        ("0 0 15W * *", "day-of-month", "15W", "nearest weekday"),
        ("0 0 L * *", "day-of-month", "L", "last"),
        ("0 0 LW * *", "day-of-month", "LW", ""),
        ("0 0 * * 5L", "day-of-week", "5L", "last"),
        ("0 0 * * FRI#3", "day-of-week", "FRI#3", "nth weekday"),
        ("0 0 * * 5#3", "day-of-week", "5#3", "nth weekday"),
        ("5-1 * * * *", "minute", "5-1", "wrap around"),
        ("0 22-2 * * *", "hour", "22-2", "wrap around"),
        ("0 0 1 NOV-FEB *", "month", "NOV-FEB", "wrap around"),
        ("0 0 * * FRI-MON", "day-of-week", "FRI-MON", "wrap around"),
        ("0 0 * * 6-0", "day-of-week", "6-0", "wrap around"),
        ("0 0 28-3 * *", "day-of-month", "28-3", "wrap around"),
        ("*/0 * * * *", "minute", "*/0", "step"),
        ("*-5 * * * *", "minute", "*-5", "range"),
        ("0 0 * * THURSDAY", "day-of-week", "THURSDAY", "name"),
        ("5 * * * * 8", "day-of-week", "8", "out of range"),
        ("60 * * * * *", "second", "60", "out of range"),
    ],
)
def test_undocumented_tokens_are_refused(expr: str, field: str, token: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(expr)
    message = str(info.value)
    assert f'"{expr}"' in message
    assert f'{field} field, "{token}"' in message
    assert why in message


def test_names_and_numbers_mix() -> None:
    assert days("0 0 1 MAR-5 *", utc(2024, 1, 1), 3) == [
        "Fri 2024-03-01 00:00:00", "Mon 2024-04-01 00:00:00", "Wed 2024-05-01 00:00:00"]


@pytest.mark.parametrize(
    "expr",
    ["\u0665 * * * *",          # ARABIC-INDIC DIGIT FIVE: croniter reads it as 5
     "0 \uff12 * * *",          # FULLWIDTH DIGIT TWO
     "0\u00a02 * * *",          # NO-BREAK SPACE: str.split() splits on it
     "0 2\u2003* * *",          # EM SPACE
     "0 2 * * MON\u200b",       # ZERO WIDTH SPACE
     "@every \uff15s",          # FULLWIDTH 5: float() reads it
     "0 2 * * *\x00"],
)
def test_non_ascii_digits_and_whitespace_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="is not allowed; write ASCII") as info:
        parse_schedule(expr)
    assert f"U+{ord(next(c for c in expr if not c.isascii() or c == chr(0))):04X}" in str(
        info.value)


def test_random_croniter_would_give_every_node_other_ticks() -> None:
    # Why R is refused: two croniter objects of "R * * * *" pick different minutes.
    from croniter import croniter

    picks = {croniter("R R * * *", datetime(2024, 1, 1)).get_next(datetime)
             for _ in range(20)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="random"):
        parse_schedule("R R * * *")


def test_config_reports_the_field_and_token() -> None:
    text = '[workers.nightly]\nmodule = "m"\nmode = "cron"\ncron = "0 0 L * *"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    [issue] = info.value.issues
    assert issue.path == "workers.nightly.cron"
    assert 'day-of-month field, "L": L (last) is not supported' in issue.message


# --- 2. a-a means a --------------------------------------------------------------------

def test_one_value_range_in_day_of_month() -> None:
    # croniter alone fires "0 0 1-1 * *" every day.
    assert days("0 0 1-1 * *", utc(2024, 1, 1), 3) == [
        "Thu 2024-02-01 00:00:00", "Fri 2024-03-01 00:00:00", "Mon 2024-04-01 00:00:00"]


def test_one_value_range_in_day_of_week() -> None:
    # croniter alone fires "0 9 * * MON-MON" every day.
    assert days("0 9 * * MON-MON", utc(2024, 1, 1, 10), 3) == [
        "Mon 2024-01-08 09:00:00", "Mon 2024-01-15 09:00:00", "Mon 2024-01-22 09:00:00"]
    assert days("0 9 * * 1-1", utc(2024, 1, 1, 10), 1) == ["Mon 2024-01-08 09:00:00"]


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [("7-7 * * * *", utc(2024, 1, 1), ["Mon 2024-01-01 00:07:00", "Mon 2024-01-01 01:07:00"]),
     ("0 5-5 * * *", utc(2024, 1, 1), ["Mon 2024-01-01 05:00:00", "Tue 2024-01-02 05:00:00"]),
     ("0 0 1 MAR-MAR *", utc(2024, 1, 1), ["Fri 2024-03-01 00:00:00",
                                           "Sat 2025-03-01 00:00:00"]),
     ("9-9 0 0 * * *", utc(2024, 1, 1), ["Mon 2024-01-01 00:00:09",
                                         "Tue 2024-01-02 00:00:09"]),
     ("0 0 1-1/5 * *", utc(2024, 1, 1), ["Thu 2024-02-01 00:00:00",
                                         "Fri 2024-03-01 00:00:00"])],
)
def test_one_value_range_in_every_field(expr: str, start: float, expected: list[str]) -> None:
    assert days(expr, start, 2) == expected


def test_one_value_range_never_firing_is_refused() -> None:
    # croniter alone runs "0 0 31-31 6 *" every day of June; June has no 31st.
    with pytest.raises(ValueError, match="it never fires"):
        parse_schedule("0 0 31-31 6 *")


# --- 3. day of month and day of week -----------------------------------------------------

@pytest.mark.parametrize(
    ("expr", "dom", "dow"),
    [("0 0 */2 * MON", "1-31/2", "MON"),
     ("0 0 1,15 * */2", "1,15", "0-7/2"),
     ("0 0 */2 * */3", "1-31/2", "0-7/3"),
     ("0 0 */10,5 * 1-5", "1-31/10,5", "1-5")],
)
def test_ambiguous_day_fields_are_refused_with_both_readings(expr: str, dom: str, dow: str
                                                              ) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(expr)
    message = str(info.value)
    assert message.startswith(f'ambiguous cron expression "{expr}"')
    assert "Vixie cron and cronie" in message and "BOTH" in message
    assert "croniter and Kubernetes" in message and "EITHER" in message
    assert f'"{dom}" and "{dow}"' in message
    # The spelling offered for EITHER is accepted and means EITHER.
    fields = expr.split(" ")
    fields[2], fields[4] = dom, dow
    parse_schedule(" ".join(fields))


def test_plainly_restricted_day_fields_or() -> None:
    # 2024-01: Mondays are 1, 8, 15, 22, 29. Vixie, cronie, croniter, Kubernetes: EITHER.
    assert days("0 0 10,20 * MON", utc(2024, 1, 1), 6) == [
        "Mon 2024-01-08 00:00:00", "Wed 2024-01-10 00:00:00", "Mon 2024-01-15 00:00:00",
        "Sat 2024-01-20 00:00:00", "Mon 2024-01-22 00:00:00", "Mon 2024-01-29 00:00:00"]
    assert days("0 0 1-31/2 * MON", utc(2024, 1, 1), 4) == [
        "Wed 2024-01-03 00:00:00", "Fri 2024-01-05 00:00:00", "Sun 2024-01-07 00:00:00",
        "Mon 2024-01-08 00:00:00"]


def test_a_full_restricted_day_field_ors_to_every_day() -> None:
    # "1-31" is restricted (no *): EITHER, so every day, as in Vixie cron.
    assert days("0 0 1-31 * MON", utc(2024, 1, 1), 3) == [
        "Tue 2024-01-02 00:00:00", "Wed 2024-01-03 00:00:00", "Thu 2024-01-04 00:00:00"]
    assert days("0 0 13 * 0-6", utc(2024, 1, 1), 2) == [
        "Tue 2024-01-02 00:00:00", "Wed 2024-01-03 00:00:00"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [("0 0 * * MON", ["Mon 2024-01-08 00:00:00", "Mon 2024-01-15 00:00:00"]),
     ("0 0 */1 * MON", ["Mon 2024-01-08 00:00:00", "Mon 2024-01-15 00:00:00"]),
     ("0 0 13 * *", ["Sat 2024-01-13 00:00:00", "Tue 2024-02-13 00:00:00"]),
     ("0 0 */10 * *", ["Thu 2024-01-11 00:00:00", "Sun 2024-01-21 00:00:00"]),
     ("0 0 * * */3", ["Wed 2024-01-03 00:00:00", "Sat 2024-01-06 00:00:00"]),
     ("0 0 */2 * 0-7", ["Wed 2024-01-03 00:00:00", "Fri 2024-01-05 00:00:00"])],
)
def test_one_unrestricted_day_field_is_unambiguous(expr: str, expected: list[str]) -> None:
    assert days(expr, utc(2024, 1, 1, 12), 2) == expected


# --- 4. a/n in day-of-week -------------------------------------------------------------

@pytest.mark.parametrize("expr", ["0 0 * * 1/2", "0 0 * * MON/2", "0 0 * * 0/3,5"])
def test_start_and_step_in_day_of_week_is_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="write a range such as 1-7/2 or a list") as info:
        parse_schedule(expr)
    assert 'day-of-week field, "' in str(info.value)


def test_a_range_with_a_step_in_day_of_week_reaches_sunday_as_7() -> None:
    # 2024-01-01 is a Monday: 1-7/2 is Monday, Wednesday, Friday, Sunday.
    assert days("0 0 * * 1-7/2", utc(2024, 1, 1), 4) == [
        "Wed 2024-01-03 00:00:00", "Fri 2024-01-05 00:00:00", "Sun 2024-01-07 00:00:00",
        "Mon 2024-01-08 00:00:00"]


@pytest.mark.parametrize(("expr", "expected"),
                         [("50/5 * * * *", ["00:50:00", "00:55:00", "01:50:00"]),
                          ("0 20/2 * * *", ["20:00:00", "22:00:00", "20:00:00"])])
def test_start_and_step_elsewhere_runs_to_the_field_maximum(expr: str, expected: list[str]
                                                             ) -> None:
    assert [d[-8:] for d in days(expr, utc(2024, 1, 1), 3)] == expected


# --- 5. @every bounds ------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "message"),
                         [("@every 10ms", "at least 100ms: every tick is claimed in the database"),
                          ("@every 0.05", "at least 100ms"),
                          ("@every 367d", "at most 366d"),
                          ("@every 100000d", "past the year 9999"),
                          ("@every 1e400", "takes a duration")])
def test_every_period_is_bounded(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule(expr)
    assert f'"{expr}"' in str(info.value)


def test_every_at_the_bounds_works_end_to_end() -> None:
    for period in (EVERY_MIN, EVERY_MAX):
        schedule = parse_schedule(f"@every {period}")
        assert schedule == EverySchedule(period)
        for now in (utc(2026, 12, 5), utc(2099, 12, 31)):
            tick = next_tick(schedule, UTC_TZ, now)
            format_utc(tick)  # what `supervisor status` shows
            before = previous_tick(schedule, UTC_TZ, now)
            assert before is not None and before <= now < tick
            assert next_tick(schedule, UTC_TZ, before) == tick
            assert recent_ticks(schedule, UTC_TZ, now - 5 * period, now, 3)


# --- 6. differential: a Vixie reference with the DST rule, and cronsim ------------------

# The reference below is written from the rules, not from the module: Vixie field sets,
# Vixie's day rule, and the documented DST rule stated as "a wall time runs at the first
# instant the local clock shows it or a later time" (which is the first occurrence of an
# ambiguous wall and the end of the gap for a wall that does not exist).

LOW_HIGH = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "dom": (1, 31),
            "month": (1, 12), "dow": (0, 7)}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def ref_number(kind: str, token: str) -> int:
    if kind == "month" and token in MONTHS:
        return MONTHS.index(token) + 1
    if kind == "dow" and token in WEEKDAYS:
        return WEEKDAYS.index(token)
    return int(token)


def ref_set(kind: str, text: str) -> set[int]:
    low, high = LOW_HIGH[kind]
    out: set[int] = set()
    for item in text.split(","):
        body, _, step = item.partition("/")
        if body == "*":
            a, b = low, high
        elif "-" in body:
            x, y = body.split("-")
            a, b = ref_number(kind, x), ref_number(kind, y)
        else:
            a = ref_number(kind, body)
            b = high if step else a
        out.update(range(a, b + 1, int(step) if step else 1))
    if kind == "dow" and 7 in out:
        out = (out - {7}) | {0}
    return out


class Reference:
    def __init__(self, expr: str) -> None:
        fields = expr.split()
        if len(fields) == 5:
            fields.insert(0, "0")
        self.seconds, self.minutes, self.hours, self.dom, self.months, self.dow = (
            sorted(ref_set(k, f)) for k, f in zip(LOW_HIGH, fields, strict=True))
        self.day_and = fields[3].startswith("*") or fields[5].startswith("*")

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.dom, (d.weekday() + 1) % 7 in self.dow
        return (dom and dow) if self.day_and else (dom or dow)

    def readings_differ(self) -> bool:
        """Whether Vixie's day rule and croniter's (OR unless one field is every day) give
        other days."""
        every_dom, every_dow = len(self.dom) == 31, len(self.dow) == 7
        return self.day_and and not every_dom and not every_dow

    def fires(self) -> bool:
        return any(self.day_matches(date(2000, 1, 1) + timedelta(days=i))
                   for i in range(366 * 28))

    def next_after(self, tz: ZoneInfo, after: int) -> float:
        start = wall_at(tz, after) - timedelta(hours=3)  # before any fold containing `after`
        d = start.date()
        for _ in range(366 * 30):
            if self.day_matches(d):
                for h in self.hours:
                    if datetime(d.year, d.month, d.day, h, 59, 59) < start:
                        continue
                    for m in self.minutes:
                        for s in self.seconds:
                            w = datetime(d.year, d.month, d.day, h, m, s)
                            if w >= start and (t := first_instant_showing(tz, w)) > after:
                                return t
            d += timedelta(days=1)
        raise AssertionError("no tick in 30 years")


def wall_at(tz: ZoneInfo, t: float) -> datetime:
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


@lru_cache(maxsize=4096)
def offsets_near(tz: ZoneInfo, day: date) -> tuple[int, ...]:
    base = calendar.timegm(day.timetuple())
    return tuple(sorted({int(datetime.fromtimestamp(base + k * 3 * 3600, tz).utcoffset()
                                  .total_seconds())  # type: ignore[union-attr]
                         for k in range(-16, 17)}))


def first_instant_showing(tz: ZoneInfo, w: datetime) -> float:
    """The first instant whose local wall time is w or later (whole seconds)."""
    naive = calendar.timegm(w.timetuple())
    offsets = offsets_near(tz, w.date())
    exact = [naive - o for o in offsets if wall_at(tz, naive - o) == w]
    if exact:
        return float(min(exact))
    lo, hi = naive - offsets[-1], naive - offsets[0]  # in a gap: wall(lo) < w < wall(hi)
    assert wall_at(tz, lo) < w < wall_at(tz, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if wall_at(tz, mid) > w:
            hi = mid
        else:
            lo = mid
    return float(hi)


def random_field(rng: random.Random, kind: str) -> str:
    low, high = LOW_HIGH[kind]
    if kind == "dow":
        high = 7

    def value() -> str:
        v = rng.randint(low, high)
        if kind == "month" and rng.random() < 0.3:
            return MONTHS[v - 1]
        if kind == "dow" and v < 7 and rng.random() < 0.3:
            return WEEKDAYS[v]
        return str(v)

    def item() -> str:
        form = rng.choice(["*", "*/n", "a", "a", "a-b", "a-b/n", "a/n", "a-a"])
        n = rng.choice([1, 2, 2, 3, 5, 7, 10, 15])
        if form == "*":
            return "*"
        if form == "*/n":
            return f"*/{n}"
        a = value()
        if form == "a":
            return a
        if form == "a-a":
            return f"{a}-{a}"
        if form == "a/n":
            return f"{a}/{n}" if kind != "dow" else a
        b = value()
        if ref_number(kind, b) < ref_number(kind, a):
            a, b = b, a
        return f"{a}-{b}" + (f"/{n}" if form == "a-b/n" else "")

    return ",".join(item() for _ in range(rng.choice([1, 1, 1, 2, 3])))


def random_expression(rng: random.Random) -> str:
    # Sparse seconds, minutes and hours keep the ticks a few minutes or more apart.
    fields = [rng.choice(["0", "30", "*/20", "5,45", "10-12"]) if rng.random() < 0.15 else None,
              rng.choice(["0", "30", "*/15", "7", "0-5", "59", "20-40/10"])
              if rng.random() < 0.7 else random_field(rng, "minute"),
              random_field(rng, "hour") if rng.random() < 0.5
              else rng.choice(["1", "2", "3", "1-3", "2,14", "*"]),
              random_field(rng, "dom"), random_field(rng, "month"), random_field(rng, "dow")]
    return " ".join(f for f in fields if f is not None)


ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Berlin", "America/New_York",
                               "Australia/Lord_Howe", "Pacific/Apia", "Asia/Kolkata")]
TRANSITIONS = [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1), utc(2024, 3, 10, 7),
               utc(2024, 11, 3, 6), utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30),
               utc(2011, 12, 30, 10), utc(2011, 9, 24, 14), utc(2021, 4, 3, 14)]


def start_instants(rng: random.Random) -> list[int]:
    return [rng.randint(int(utc(2000, 1, 1)), int(utc(2040, 1, 1))),
            int(rng.choice(TRANSITIONS)) + rng.randint(-2 * 86400, 2 * 86400),
            int(rng.choice(TRANSITIONS)) + rng.randint(-3 * 3600, 3 * 3600)]


def test_differential_against_a_vixie_reference_with_the_dst_rule() -> None:
    rng = random.Random(12)
    compared = refused = 0
    for _ in range(2500):
        expr = random_expression(rng)
        ref = Reference(expr)
        if ref.readings_differ() or not ref.fires():
            reason = "ambiguous" if ref.readings_differ() else "it never fires"
            with pytest.raises(ValueError, match=reason):
                parse_schedule(expr)
            refused += 1
            continue
        schedule = parse_schedule(expr)
        for tz in rng.sample(ZONES, 2):
            for after in start_instants(rng):
                got = ticks_between(schedule, tz, after, math.inf, 3)
                want = [ref.next_after(tz, after)]
                while len(want) < 3:
                    want.append(ref.next_after(tz, int(want[-1])))
                assert got == want, (expr, tz.key, after)
                assert previous_tick(schedule, tz, want[1] - 0.5) == want[0]
                compared += 1
    assert compared > 10_000 and refused > 100


@cache
def transitions(tz: ZoneInfo) -> tuple[int, ...]:
    """Every offset change of tz between 1999 and 2041 (none are less than 12 h apart)."""
    found = []
    t, end = int(utc(1999, 1, 1)), int(utc(2041, 1, 1))
    while t < end:
        lo, hi = t, t + 12 * 3600
        if datetime.fromtimestamp(lo, tz).utcoffset() != datetime.fromtimestamp(hi, tz).utcoffset():
            # Only where to stay away from (cronsim's DST rule differs), not an expected tick.
            found.append(_offset_change(tz, lo, hi))
        t += 12 * 3600
    return tuple(found)


def test_differential_against_cronsim_away_from_dst() -> None:
    from cronsim import CronSim

    rng = random.Random(1212)
    compared = 0
    zones = [z for z in ZONES if z.key != "Pacific/Apia"] + [ZoneInfo("Pacific/Apia")]
    for _ in range(2000):
        expr = random_expression(rng)
        ref = Reference(expr)
        if ref.readings_differ() or not ref.fires():
            continue
        schedule = parse_schedule(expr)
        tz = rng.choice(zones)
        after = rng.randint(int(utc(2000, 1, 1)), int(utc(2039, 1, 1)))
        got = ticks_between(schedule, tz, after, math.inf, 4)
        sim = CronSim(expr, datetime.fromtimestamp(after, tz))
        want = [next(sim).timestamp() for _ in range(4)]
        # cronsim follows Debian cron across DST (a wildcard-hour job runs in both passes
        # of a repeated hour, and not at all for walls in a gap); the module's rule is
        # another one: compare only where no transition is near.
        window = (after - DAY, max(got[-1], want[-1]) + DAY)
        if any(window[0] <= t <= window[1] for t in transitions(tz)):
            continue
        assert got == want, (expr, tz.key, after)
        compared += 1
    assert compared > 1000

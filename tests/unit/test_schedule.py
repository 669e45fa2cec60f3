"""Schedule expressions: five or six cron fields, aliases, @every; and time zones."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.model import format_duration
from supervisor.schedule import (
    CronSchedule,
    EverySchedule,
    next_tick,
    parse_schedule,
    parse_timezone,
    previous_tick,
    recent_ticks,
)
from tests.support.ticks import ticks_between


@pytest.mark.parametrize(
    "expr",
    ["*/5 * * * *", "0 2 * * *", "0 2 * * MON-FRI", "15,45 8-18 * * 1-5", "0 0 1 1 *",
     "0 0 29 2 *"],
)
def test_five_fields(expr: str) -> None:
    assert parse_schedule(expr) == CronSchedule(expr, seconds_field=False)


@pytest.mark.parametrize("expr", ["*/10 * * * * *", "0 0 2 * * *", "30 */5 * * * MON"])
def test_six_fields_lead_with_seconds(expr: str) -> None:
    assert parse_schedule(expr) == CronSchedule(expr, seconds_field=True)


def test_whitespace_is_normalised() -> None:
    assert parse_schedule("  0   2 *\t* *  ") == CronSchedule("0 2 * * *", seconds_field=False)


@pytest.mark.parametrize(
    "alias", ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]
)
def test_aliases(alias: str) -> None:
    assert parse_schedule(alias) == CronSchedule(alias, seconds_field=False)
    assert parse_schedule(alias.upper()) == CronSchedule(alias, seconds_field=False)


@pytest.mark.parametrize(
    ("expr", "period"),
    [("@every 30s", 30.0), ("@every 1m30s", 90.0), ("@every 500ms", 0.5), ("@every 1h", 3600.0),
     ("@every 10", 10.0), ("@every    2m", 120.0)],
)
def test_every(expr: str, period: float) -> None:
    schedule = parse_schedule(expr)
    assert schedule == EverySchedule(period)
    assert isinstance(schedule, EverySchedule)
    assert parse_schedule(schedule.expr) == schedule


@given(st.integers(min_value=1, max_value=10**7).map(float))
def test_every_expr_round_trips(period: float) -> None:
    schedule = parse_schedule(f"@every {format_duration(period)}")
    assert schedule == EverySchedule(period)
    assert parse_schedule(schedule.expr) == schedule


@pytest.mark.parametrize("expr", ["* * * *", "*/5 * *", "*", "", "   ", "* * * * * * *",
                                  "0 0 0 1 1 * 2030", "@reboot"])
def test_wrong_number_of_fields(expr: str) -> None:
    with pytest.raises(ValueError, match="expected five fields") as info:
        parse_schedule(expr)
    assert f'"{expr}"' in str(info.value)


@pytest.mark.parametrize(
    "expr",
    ["60 * * * *", "0 24 * * *", "* * 32 * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
     "a b c d e", "*/0 * * * *", "5-1x * * * *", "61 * * * * *", "0 0 30 2 *", "0 0 31 4 *",
     "0 0 0 30 2 *"],
)
def test_bad_values(expr: str) -> None:
    with pytest.raises(ValueError, match="invalid cron expression") as info:
        parse_schedule(expr)
    assert f'"{expr}"' in str(info.value)


@pytest.mark.parametrize(
    ("expr", "message"),
    [("@every 0s", "must be positive"), ("@every 0", "must be positive"),
     ("@every 0ms", "must be positive"), ("@every x", "takes a duration"),
     ("@every", "takes a duration"), ("@every -5s", "takes a duration"),
     ("@every 10 s", "takes a duration"), ("@everyday", "takes a duration")],
)
def test_bad_every(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule(expr)
    assert f'"{expr}"' in str(info.value)


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_parse_timezone(name: str) -> None:
    assert parse_timezone(name) == ZoneInfo(name)


@pytest.mark.parametrize("name", ["Mars/Base", "", "utc ", "../etc/passwd", "/etc/localtime",
                                  "Europe/", "Europe/Berlin/Mitte"])
def test_parse_timezone_refuses_unknown(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone") as info:
        parse_timezone(name)
    assert f'"{name}"' in str(info.value)


# --- ticks: pinned instants, no clock -----------------------------------------------------

UTC_TZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


def iso(ticks: list[float]) -> list[str]:
    return [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in ticks]


def between(expr: str, start: float, end: float, tz: ZoneInfo = UTC_TZ, limit: int = 100
            ) -> list[str]:
    return iso(ticks_between(parse_schedule(expr), tz, start, end, limit))


# 2024-01-01 is a Monday.
@pytest.mark.parametrize(
    ("expr", "start", "end", "expected"),
    [
        ("0 9-11 * * *", utc(2024, 1, 1), utc(2024, 1, 1, 23),
         ["2024-01-01 09:00:00", "2024-01-01 10:00:00", "2024-01-01 11:00:00"]),
        ("*/20 * * * *", utc(2024, 1, 1, 5), utc(2024, 1, 1, 6),
         ["2024-01-01 05:20:00", "2024-01-01 05:40:00", "2024-01-01 06:00:00"]),
        ("10-40/15 8 * * *", utc(2024, 1, 1), utc(2024, 1, 2),
         ["2024-01-01 08:10:00", "2024-01-01 08:25:00", "2024-01-01 08:40:00"]),
        ("5,50 7 * * *", utc(2024, 1, 1), utc(2024, 1, 2),
         ["2024-01-01 07:05:00", "2024-01-01 07:50:00"]),
        ("0 12 * * MON", utc(2024, 1, 1, 12), utc(2024, 1, 20),
         ["2024-01-08 12:00:00", "2024-01-15 12:00:00"]),
        ("0 6 * * SAT,SUN", utc(2024, 1, 1), utc(2024, 1, 9),
         ["2024-01-06 06:00:00", "2024-01-07 06:00:00"]),
        ("0 6 * * MON-FRI", utc(2024, 1, 5), utc(2024, 1, 9),
         ["2024-01-05 06:00:00", "2024-01-08 06:00:00"]),
        ("0 0 1 JAN,JUL *", utc(2024, 1, 1), utc(2025, 6, 1),
         ["2024-07-01 00:00:00", "2025-01-01 00:00:00"]),
        ("0 0 15 FEB-APR *", utc(2024, 1, 1), utc(2024, 12, 1),
         ["2024-02-15 00:00:00", "2024-03-15 00:00:00", "2024-04-15 00:00:00"]),
        ("0 0 * * 0", utc(2024, 1, 1), utc(2024, 1, 15),  # 0 is Sunday
         ["2024-01-07 00:00:00", "2024-01-14 00:00:00"]),
        ("0 0 * * 7", utc(2024, 1, 1), utc(2024, 1, 8),  # and so is 7
         ["2024-01-07 00:00:00"]),
        ("@hourly", utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 3),
         ["2024-01-01 01:00:00", "2024-01-01 02:00:00", "2024-01-01 03:00:00"]),
        ("@daily", utc(2024, 1, 1), utc(2024, 1, 3),
         ["2024-01-02 00:00:00", "2024-01-03 00:00:00"]),
        ("@midnight", utc(2024, 1, 1, 12), utc(2024, 1, 3),
         ["2024-01-02 00:00:00", "2024-01-03 00:00:00"]),
        ("@weekly", utc(2024, 1, 1), utc(2024, 1, 15),  # Sundays
         ["2024-01-07 00:00:00", "2024-01-14 00:00:00"]),
        ("@monthly", utc(2024, 1, 1), utc(2024, 3, 1),
         ["2024-02-01 00:00:00", "2024-03-01 00:00:00"]),
        ("@yearly", utc(2024, 1, 1), utc(2026, 1, 1),
         ["2025-01-01 00:00:00", "2026-01-01 00:00:00"]),
        # six fields: the FIRST one is seconds
        ("*/15 * * * * *", utc(2024, 1, 1), utc(2024, 1, 1, 0, 1),
         ["2024-01-01 00:00:15", "2024-01-01 00:00:30", "2024-01-01 00:00:45",
          "2024-01-01 00:01:00"]),
        ("30 0 12 * * *", utc(2024, 1, 1), utc(2024, 1, 3),
         ["2024-01-01 12:00:30", "2024-01-02 12:00:30"]),
        ("0 5 * * * MON", utc(2024, 1, 1, 22), utc(2024, 1, 8, 2),
         ["2024-01-01 22:05:00", "2024-01-01 23:05:00", "2024-01-08 00:05:00",
          "2024-01-08 01:05:00"]),
    ],
)
def test_field_forms(expr: str, start: float, end: float, expected: list[str]) -> None:
    assert between(expr, start, end) == expected


def test_local_wall_time_not_utc() -> None:
    # 02:00 in Berlin is 01:00 UTC in winter, 00:00 UTC in summer
    assert between("0 2 * * *", utc(2024, 1, 1), utc(2024, 1, 2), BERLIN) == [
        "2024-01-01 01:00:00"]
    assert between("0 2 * * *", utc(2024, 6, 30, 12), utc(2024, 7, 1, 12), BERLIN) == [
        "2024-07-01 00:00:00"]


def test_next_tick_is_strictly_after() -> None:
    schedule = parse_schedule("0 * * * *")
    assert next_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5)) == utc(2024, 1, 1, 6)
    assert next_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5) - 0.001) == utc(2024, 1, 1, 5)
    assert next_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5) + 0.5) == utc(2024, 1, 1, 6)


def test_previous_tick_is_at_or_before() -> None:
    schedule = parse_schedule("0 * * * *")
    assert previous_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5)) == utc(2024, 1, 1, 5)
    assert previous_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5) - 0.001) == utc(2024, 1, 1, 4)
    assert previous_tick(schedule, UTC_TZ, utc(2024, 1, 1, 5, 59, 59)) == utc(2024, 1, 1, 5)


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [(UTC_TZ, utc(2025, 1, 1), utc(2028, 2, 29)),
     (BERLIN, utc(2025, 1, 1), utc(2028, 2, 28, 23)),  # midnight CET
     (UTC_TZ, utc(2096, 3, 1), utc(2104, 2, 29))],  # 2100 is not a leap year
)
def test_leap_day(tz: ZoneInfo, start: float, expected: float) -> None:
    schedule = parse_schedule("0 0 29 2 *")
    assert next_tick(schedule, tz, start) == expected
    assert previous_tick(schedule, tz, expected + 1) == expected


def test_leap_day_previous() -> None:
    schedule = parse_schedule("0 0 29 2 *")
    assert previous_tick(schedule, UTC_TZ, utc(2027, 6, 1)) == utc(2024, 2, 29)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [("@every 30s", 1000.5, 1020.0), ("@every 30s", 1020.0, 1050.0),
     ("@every 30s", 1019.999, 1020.0), ("@every 7s", 1000.5, 1001.0),
     ("@every 7s", 1001.0, 1008.0), ("@every 500ms", 1000.2, 1000.5),
     ("@every 1h", utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1)),
     ("@every 90m", 0.0, 5400.0), ("@every 30s", -45.0, -30.0)],
)
def test_every_is_aligned_to_the_epoch(expr: str, after: float, expected: float) -> None:
    schedule = parse_schedule(expr)
    for tz in (UTC_TZ, BERLIN, NEW_YORK, ZoneInfo("Asia/Kolkata")):
        assert next_tick(schedule, tz, after) == expected


def test_every_previous_tick() -> None:
    schedule = parse_schedule("@every 7s")
    assert previous_tick(schedule, BERLIN, 1000.5) == 994.0
    assert previous_tick(schedule, BERLIN, 1001.0) == 1001.0


def test_every_ticks_between() -> None:
    schedule = parse_schedule("@every 10s")
    assert ticks_between(schedule, NEW_YORK, 0.0, 60.0, 100) == [10.0, 20.0, 30.0, 40.0,
                                                                  50.0, 60.0]
    assert ticks_between(schedule, NEW_YORK, 0.0, 60.0, 2) == [10.0, 20.0]


def test_every_minute_over_an_hour_is_60_ticks() -> None:
    ticks = ticks_between(parse_schedule("* * * * *"), UTC_TZ, utc(2024, 5, 1, 10),
                          utc(2024, 5, 1, 11), 1000)
    assert len(ticks) == 60
    assert ticks[0] == utc(2024, 5, 1, 10, 1)  # start excluded
    assert ticks[-1] == utc(2024, 5, 1, 11)  # end included


def test_ticks_between_limit_keeps_the_oldest() -> None:
    ticks = ticks_between(parse_schedule("* * * * *"), UTC_TZ, utc(2024, 5, 1, 10),
                          utc(2024, 5, 1, 11), 3)
    assert iso(ticks) == ["2024-05-01 10:01:00", "2024-05-01 10:02:00", "2024-05-01 10:03:00"]


@pytest.mark.parametrize(("start", "end", "limit"), [(10.0, 10.0, 5), (10.0, 5.0, 5),
                                                     (0.0, 1000.0, 0), (0.0, 1000.0, -1)])
def test_ticks_between_empty(start: float, end: float, limit: int) -> None:
    for expr in ("* * * * * *", "@every 1s"):
        assert ticks_between(parse_schedule(expr), UTC_TZ, start, end, limit) == []


@pytest.mark.parametrize("period", [0.1, 1.1, 0.003, 7.0])
def test_every_survives_float_rounding(period: float) -> None:
    # 43 * 0.1 / 0.1 rounds to 43.00000000000001 and 78 * 0.1 / 0.1 to 77.99999999999999:
    # the division alone would give a tick that is not after `after`, or skip one. (3 ms is
    # below the @every minimum; the tick arithmetic is tested on it all the same.)
    schedule = EverySchedule(period)
    for k in range(1, 400):
        for after in (k * period, math.nextafter(k * period, -math.inf),
                      math.nextafter(k * period, math.inf)):
            tick = next_tick(schedule, UTC_TZ, after)
            j = round(tick / period)
            assert tick == j * period
            assert tick > after >= (j - 1) * period
            before = previous_tick(schedule, UTC_TZ, after)
            assert before is not None
            i = round(before / period)
            assert before == i * period
            assert before <= after < (i + 1) * period


# --- recent_ticks: the tail of ticks_between, found walking back -------------------------

HOUR = 3600.0
# (expression, the longest span drawn for it): spans hold at most about a thousand ticks,
# so that the forward oracle stays cheap.
RECENT_EXPRESSIONS = [
    ("@every 100ms", 60.0), ("@every 300ms", 120.0), ("@every 500ms", 300.0),
    ("@every 7s", HOUR), ("@every 1m30s", 24 * HOUR), ("@every 1h", 4 * 24 * HOUR),
    ("*/15 * * * *", 2 * 24 * HOUR), ("0 * * * *", 3 * 24 * HOUR),
    ("30 2 * * *", 6 * 24 * HOUR), ("30 1 * * *", 6 * 24 * HOUR),
    ("*/7 1-3 * * *", 3 * 24 * HOUR), ("*/20 * * * * *", 3 * HOUR),
    ("0 30 2 * * *", 6 * 24 * HOUR), ("15,45 * 1-3 * * *", 6 * HOUR),
    ("* * * * * *", 10 * 60.0), ("@daily", 30 * 24 * HOUR),
]
RECENT_ZONES = {"UTC": UTC_TZ, "Europe/Berlin": BERLIN, "America/New_York": NEW_YORK}
# The 2024 DST days, in UTC: Berlin Mar 31 01:00 and Oct 27 01:00, New York Mar 10 07:00
# and Nov 3 06:00. Spans are drawn around them so that gaps and folds fall inside.
DST_SHIFTS = [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1), utc(2024, 3, 10, 7),
              utc(2024, 11, 3, 6)]


@st.composite
def recent_spans(draw: st.DrawFn) -> tuple[str, str, float, float, int]:
    expr, longest = draw(st.sampled_from(RECENT_EXPRESSIONS))
    zone = draw(st.sampled_from(sorted(RECENT_ZONES)))
    span = draw(st.floats(0.0, longest))
    anchor = draw(st.one_of(st.sampled_from(DST_SHIFTS),
                            st.floats(utc(2000, 1, 1), utc(2040, 1, 1))))
    end = anchor + draw(st.floats(-span - HOUR, HOUR))
    schedule = parse_schedule(expr)
    if draw(st.booleans()):  # often exactly on a tick: end is included, start excluded
        end = previous_tick(schedule, RECENT_ZONES[zone], end) or end
    start = end - span
    if draw(st.booleans()):
        start = previous_tick(schedule, RECENT_ZONES[zone], start) or start
    limit = draw(st.integers(1, 40))
    return expr, zone, start, end, limit


@settings(deadline=None, max_examples=250)
@given(recent_spans())
def test_recent_ticks_are_the_tail_of_ticks_between(
    case: tuple[str, str, float, float, int],
) -> None:
    expr, zone, start, end, limit = case
    schedule, tz = parse_schedule(expr), RECENT_ZONES[zone]
    every = ticks_between(schedule, tz, start, end, 1_000_000)
    assert recent_ticks(schedule, tz, start, end, limit) == every[-limit:]
    assert recent_ticks(schedule, tz, start, end, len(every) + 5) == every


@pytest.mark.parametrize(
    ("expr", "tz", "start", "end", "expected"),
    [
        # Berlin, spring forward: 02:30 does not exist and runs at 03:00 CEST (01:00 UTC)
        ("30 2 * * *", BERLIN, utc(2024, 3, 29, 12), utc(2024, 4, 1, 12),
         ["2024-03-30 01:30:00", "2024-03-31 01:00:00", "2024-04-01 00:30:00"]),
        # New York, fall back: 01:30 runs once, at its first occurrence (EDT)
        ("30 1 * * *", NEW_YORK, utc(2024, 11, 2), utc(2024, 11, 4, 12),
         ["2024-11-02 05:30:00", "2024-11-03 05:30:00", "2024-11-04 06:30:00"]),
        # every 20 s across New York's repeated hour: its second pass has no ticks
        ("*/20 * * * * *", NEW_YORK, utc(2024, 11, 3, 5, 59, 0), utc(2024, 11, 3, 7, 0, 40),
         ["2024-11-03 05:59:20", "2024-11-03 05:59:40", "2024-11-03 07:00:00",
          "2024-11-03 07:00:20", "2024-11-03 07:00:40"]),
        # every second across Berlin's gap: the gap's walls are one tick at its end
        ("* * * * * *", BERLIN, utc(2024, 3, 31, 0, 59, 57), utc(2024, 3, 31, 1, 0, 2),
         ["2024-03-31 00:59:58", "2024-03-31 00:59:59", "2024-03-31 01:00:00",
          "2024-03-31 01:00:01", "2024-03-31 01:00:02"]),
    ],
)
def test_recent_ticks_across_dst(expr: str, tz: ZoneInfo, start: float, end: float,
                                 expected: list[str]) -> None:
    assert iso(recent_ticks(parse_schedule(expr), tz, start, end, 100)) == expected


def test_recent_ticks_limit_keeps_the_newest() -> None:
    schedule = parse_schedule("* * * * *")
    ticks = recent_ticks(schedule, UTC_TZ, utc(2024, 5, 1, 10), utc(2024, 5, 1, 11), 3)
    assert iso(ticks) == ["2024-05-01 10:58:00", "2024-05-01 10:59:00", "2024-05-01 11:00:00"]
    every = recent_ticks(parse_schedule("@every 250ms"), UTC_TZ, 100.0, 101.0, 2)
    assert every == [100.75, 101.0]


def test_recent_ticks_of_a_long_span_cost_limit_steps() -> None:
    # ten years of a per-second schedule: walking forward would take 3e8 steps
    schedule = parse_schedule("* * * * * *")
    ticks = recent_ticks(schedule, BERLIN, utc(2014, 1, 1), utc(2024, 1, 1), 4)
    assert iso(ticks) == ["2023-12-31 23:59:57", "2023-12-31 23:59:58",
                          "2023-12-31 23:59:59", "2024-01-01 00:00:00"]


@pytest.mark.parametrize(("start", "end"), [(10.0, 10.0), (10.0, 5.0), (60.0, 59.999),
                                            (utc(2024, 1, 1), utc(2023, 1, 1))])
@pytest.mark.parametrize("expr", ["* * * * * *", "* * * * *", "@every 1s", "@every 100ms"])
def test_recent_ticks_empty_when_end_is_not_after_start(expr: str, start: float,
                                                        end: float) -> None:
    assert recent_ticks(parse_schedule(expr), BERLIN, start, end, 10) == []


@pytest.mark.parametrize("limit", [0, -1])
def test_recent_ticks_empty_without_a_limit(limit: int) -> None:
    assert recent_ticks(parse_schedule("@every 1s"), UTC_TZ, 0.0, 100.0, limit) == []

"""Cron ticks across daylight-saving transitions, with pinned instants.

The rules under test (supervisor/schedule.py): a wall time that does not exist (the
spring-forward gap) runs once, at the end of the gap; an ambiguous wall time (the
fall-back fold) runs once, at its first occurrence; a tick is an instant in UTC, and
ticks are strictly increasing.

The 2024 transitions used here, in UTC:
  Europe/Berlin     Mar 31 01:00 (02:00 CET -> 03:00 CEST), Oct 27 01:00 (03:00 CEST -> 02:00 CET)
  America/New_York  Mar 10 07:00 (02:00 EST -> 03:00 EDT),  Nov 3 06:00 (02:00 EDT -> 01:00 EST)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.schedule import next_tick, parse_schedule, previous_tick
from tests.support.ticks import ticks_between

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
HOUR = 3600.0


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


def local(t: float, tz: ZoneInfo) -> str:
    """A tick as the wall clock shows it, with the offset: which pass of a fold it is in."""
    return datetime.fromtimestamp(t, tz).isoformat()


def ticks(expr: str, tz: ZoneInfo, start: float, end: float) -> list[float]:
    return ticks_between(parse_schedule(expr), tz, start, end, 10_000)


# --- spring forward: the gap ------------------------------------------------------------

@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [(BERLIN, utc(2024, 3, 30), ["2024-03-30T02:30:00+01:00", "2024-03-31T03:00:00+02:00",
                                 "2024-04-01T02:30:00+02:00"]),
     (NEW_YORK, utc(2024, 3, 9), ["2024-03-09T02:30:00-05:00", "2024-03-10T03:00:00-04:00",
                                  "2024-03-11T02:30:00-04:00"])],
)
def test_gap_time_runs_once_at_the_end_of_the_gap(
    tz: ZoneInfo, start: float, expected: list[str]
) -> None:
    got = ticks("30 2 * * *", tz, start, start + 3 * 24 * HOUR)
    assert [local(t, tz) for t in got] == expected


def test_gap_end_in_utc() -> None:
    schedule = parse_schedule("30 2 * * *")
    assert next_tick(schedule, BERLIN, utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1)
    assert next_tick(schedule, NEW_YORK, utc(2024, 3, 9, 12)) == utc(2024, 3, 10, 7)
    # and after that instant, the next day's 02:30, not a second run for the gap
    assert next_tick(schedule, BERLIN, utc(2024, 3, 31, 1)) == utc(2024, 4, 1, 0, 30)


@pytest.mark.parametrize(("tz", "start"), [(BERLIN, utc(2024, 3, 31)),
                                           (NEW_YORK, utc(2024, 3, 10, 6))])
def test_quarter_hours_across_the_gap_neither_repeat_nor_miss(tz: ZoneInfo, start: float
                                                              ) -> None:
    # 02:00, 02:15, 02:30, 02:45 do not exist and all map to the gap's end, as does 03:00:
    # one tick there, then 03:15 right on time. In UTC: every 15 minutes, unbroken.
    got = ticks("*/15 * * * *", tz, start, start + 2 * HOUR)
    assert got == [start + 900 * i for i in range(1, 9)]
    schedule = parse_schedule("*/15 * * * *")
    for earlier, later in pairwise(got):  # next_tick alone agrees with the iteration
        assert next_tick(schedule, tz, earlier) == later


def test_several_gap_times_are_one_tick() -> None:
    got = ticks("0,20,40 2,3 * * *", BERLIN, utc(2024, 3, 30, 12), utc(2024, 3, 31, 12))
    assert [local(t, BERLIN) for t in got] == [
        "2024-03-31T03:00:00+02:00", "2024-03-31T03:20:00+02:00", "2024-03-31T03:40:00+02:00"]


def test_every_second_across_the_gap() -> None:
    # 3600 gap walls collapse into the one instant 01:00:00 UTC
    got = ticks("* * * * * *", BERLIN, utc(2024, 3, 31, 0, 59, 58), utc(2024, 3, 31, 1, 0, 2))
    assert got == [utc(2024, 3, 31, 0, 59, 59), utc(2024, 3, 31, 1),
                   utc(2024, 3, 31, 1, 0, 1), utc(2024, 3, 31, 1, 0, 2)]


def test_spring_forward_day_has_23_hourly_ticks() -> None:
    # The local day Mar 31 lasts 23 hours. Walls 00:00..23:00 are 24, but 02:00 does not
    # exist and runs at the gap's end, 03:00 CEST, the same instant as the 03:00 wall.
    day_start = utc(2024, 3, 30, 23)  # 00:00 CET
    day_end = utc(2024, 3, 31, 22)  # next 00:00, CEST
    got = ticks("0 * * * *", BERLIN, day_start - 1, day_end - 1)
    assert len(got) == 23
    assert got == [day_start + HOUR * i for i in range(23)]


def test_a_day_long_gap() -> None:
    # Samoa skipped 2011-12-30 whole (UTC-10 -> UTC+14): noon that day runs at the gap's
    # end, 2011-12-31 00:00 local, then noon on the 31st as usual.
    apia = ZoneInfo("Pacific/Apia")
    got = ticks("0 12 * * *", apia, utc(2011, 12, 29), utc(2011, 12, 31))
    assert [local(t, apia) for t in got] == [
        "2011-12-29T12:00:00-10:00", "2011-12-31T00:00:00+14:00", "2011-12-31T12:00:00+14:00"]


# --- fall back: the fold ------------------------------------------------------------------

def test_ambiguous_time_runs_once_at_its_first_occurrence() -> None:
    schedule = parse_schedule("30 1 * * *")
    got = ticks("30 1 * * *", NEW_YORK, utc(2024, 11, 2, 12), utc(2024, 11, 4, 12))
    assert [local(t, NEW_YORK) for t in got] == [
        "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]  # EDT, not EST too
    assert got[0] == utc(2024, 11, 3, 5, 30)
    # from the first 01:30 itself, and from inside the repeated hour: tomorrow
    assert next_tick(schedule, NEW_YORK, utc(2024, 11, 3, 5, 30)) == utc(2024, 11, 4, 6, 30)
    assert next_tick(schedule, NEW_YORK, utc(2024, 11, 3, 6, 10)) == utc(2024, 11, 4, 6, 30)
    assert previous_tick(schedule, NEW_YORK, utc(2024, 11, 3, 6, 45)) == utc(2024, 11, 3, 5, 30)


def test_ambiguous_time_in_berlin() -> None:
    got = ticks("30 2 * * *", BERLIN, utc(2024, 10, 26, 12), utc(2024, 10, 28, 12))
    assert [local(t, BERLIN) for t in got] == [
        "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [(NEW_YORK, utc(2024, 11, 3, 4),
      ["2024-11-03T00:30:00-04:00", "2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00",
       "2024-11-03T02:00:00-05:00", "2024-11-03T02:30:00-05:00", "2024-11-03T03:00:00-05:00"]),
     (BERLIN, utc(2024, 10, 26, 23),
      ["2024-10-27T01:30:00+02:00", "2024-10-27T02:00:00+02:00", "2024-10-27T02:30:00+02:00",
       "2024-10-27T03:00:00+01:00", "2024-10-27T03:30:00+01:00", "2024-10-27T04:00:00+01:00"])],
)
def test_half_hours_across_the_fold_never_repeat_nor_go_back(
    tz: ZoneInfo, start: float, expected: list[str]
) -> None:
    got = ticks("*/30 * * * *", tz, start, start + 4 * HOUR)
    assert [local(t, tz) for t in got] == expected
    assert all(a < b for a, b in pairwise(got))
    # the repeated hour's second pass has no ticks: a 90-minute step over it
    assert max(b - a for a, b in pairwise(got)) == 1.5 * HOUR


@pytest.mark.parametrize(
    ("tz", "at", "prev", "nxt"),
    [(NEW_YORK, utc(2024, 11, 3, 6), utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 7)),
     (NEW_YORK, utc(2024, 11, 3, 6, 45), utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 7)),
     (BERLIN, utc(2024, 10, 27, 1), utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 2)),
     (BERLIN, utc(2024, 10, 27, 1, 59, 59), utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 2))],
)
def test_from_inside_the_second_pass(tz: ZoneInfo, at: float, prev: float, nxt: float) -> None:
    schedule = parse_schedule("*/30 * * * *")
    assert previous_tick(schedule, tz, at) == prev
    assert next_tick(schedule, tz, at) == nxt


def test_every_second_across_the_fold() -> None:
    # Every wall second of 01:00:00-01:59:59 ran in the first pass (EDT); the second pass
    # (EST) has none, and 02:00:00 EST follows 01:59:59 EDT.
    schedule = parse_schedule("* * * * * *")
    assert next_tick(schedule, NEW_YORK, utc(2024, 11, 3, 6, 30)) == utc(2024, 11, 3, 7)
    got = ticks("* * * * * *", NEW_YORK, utc(2024, 11, 3, 5, 59, 58), utc(2024, 11, 3, 7, 0, 1))
    assert got == [utc(2024, 11, 3, 5, 59, 59), utc(2024, 11, 3, 7), utc(2024, 11, 3, 7, 0, 1)]


@pytest.mark.parametrize(("tz", "day_start", "day_end", "missing"),
                         [(BERLIN, utc(2024, 10, 26, 22), utc(2024, 10, 27, 23),
                           utc(2024, 10, 27, 1)),
                          (NEW_YORK, utc(2024, 11, 3, 4), utc(2024, 11, 4, 5),
                           utc(2024, 11, 3, 6))])
def test_fall_back_day_has_24_hourly_ticks(
    tz: ZoneInfo, day_start: float, day_end: float, missing: float
) -> None:
    # The local day lasts 25 hours but has 24 distinct hourly walls; the repeated hour's
    # wall runs at its first occurrence only, so the second pass's hour has no tick.
    got = ticks("0 * * * *", tz, day_start - 1, day_end - 1)
    assert len(got) == 24
    assert got[0] == day_start
    assert missing not in got
    assert [b - a for a, b in pairwise(got)].count(2 * HOUR) == 1


def test_croniter_alone_would_fire_twice_in_the_repeated_hour() -> None:
    # Why schedule.py maps wall times itself: croniter given an aware start yields 01:30
    # EDT and then 01:30 EST. If this starts failing, croniter changed; our rule did not.
    from croniter import croniter

    aware = croniter("30 1 * * *", datetime(2024, 11, 3, tzinfo=NEW_YORK))
    first, second = aware.get_next(datetime), aware.get_next(datetime)
    assert (first.timestamp(), second.timestamp()) == (utc(2024, 11, 3, 5, 30),
                                                       utc(2024, 11, 3, 6, 30))
    ours = ticks("30 1 * * *", NEW_YORK, utc(2024, 11, 3, 4), utc(2024, 11, 4, 4))
    assert ours == [utc(2024, 11, 3, 5, 30)]


# --- properties -----------------------------------------------------------------------------

EXPRESSIONS = ["*/15 * * * *", "30 2 * * *", "30 1 * * *", "0 * * * *", "0,20,40 2,3 * * *",
               "*/7 1-3 * * *", "59 1 * * SUN", "*/20 * * * * *", "0 30 2 * * *",
               "0 0 29 2 *", "@daily", "@every 7s", "@every 90m", "@every 500ms"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "Pacific/Apia"]
# Transitions by zone, in UTC: where the rules matter. Lord Howe moves by 30 minutes.
TRANSITIONS = {
    "Europe/Berlin": [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1)],
    "America/New_York": [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)],
    "Australia/Lord_Howe": [utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30)],
    "Pacific/Apia": [utc(2011, 12, 30, 10)],  # Samoa's lost day
}
SHIFTS = st.sampled_from([(zone, t) for zone, ts in TRANSITIONS.items() for t in ts])
NEAR_TRANSITION = st.builds(lambda base, offset: base + offset,
                            st.sampled_from([t for ts in TRANSITIONS.values() for t in ts]),
                            st.floats(-2 * 24 * HOUR, 2 * 24 * HOUR))
ANY_TIME = st.floats(utc(2000, 1, 1), utc(2040, 1, 1))
EPSILON = 0.001


@settings(deadline=None, max_examples=300)
@given(st.sampled_from(EXPRESSIONS), st.sampled_from(ZONES),
       st.one_of(NEAR_TRANSITION, ANY_TIME))
def test_tick_properties(expr: str, zone: str, after: float) -> None:
    schedule, tz = parse_schedule(expr), ZoneInfo(zone)
    first = next_tick(schedule, tz, after)
    assert first > after
    got = ticks_between(schedule, tz, after, first + 3 * 24 * HOUR, 12)
    assert got[0] == first
    assert all(a < b for a, b in pairwise(got))
    for i, t in enumerate(got):
        assert next_tick(schedule, tz, t - EPSILON) == t
        assert previous_tick(schedule, tz, t) == t
        if i + 1 < len(got):
            assert next_tick(schedule, tz, t) == got[i + 1]
    before = previous_tick(schedule, tz, after)
    assert before is not None
    assert before <= after
    assert next_tick(schedule, tz, before) == first  # nothing between them


def _oracle(expr: str, tz: ZoneInfo, start: float, end: float) -> list[float]:
    """The rules, by brute force over every UTC minute: a wall that matches runs at its
    first occurrence; at a gap's end, run if the end or any wall in the gap matches."""
    from croniter import croniter

    def wall(u: float) -> datetime:
        return datetime.fromtimestamp(u, tz).replace(tzinfo=None)

    out = []
    for u in range(math.floor(start / 60) * 60 + 60, math.floor(end / 60) * 60 + 1, 60):
        here = datetime.fromtimestamp(u, tz)
        gap_start = wall(u - 1) + timedelta(seconds=1)
        walls = [wall(u)]
        while walls[-1] - timedelta(minutes=1) >= gap_start:  # walls skipped just before u
            walls.append(walls[-1] - timedelta(minutes=1))
        if here.fold == 0 and any(croniter.match(expr, w) for w in walls):
            out.append(float(u))
    return out


@settings(deadline=None, max_examples=60)
@given(st.sampled_from(["*/15 * * * *", "30 2 * * *", "30 1 * * *", "0 * * * *",
                        "0,20,40 2,3 * * *", "*/7 1-3 * * *", "45 1,2 * * *", "0 2 * * *"]),
       SHIFTS.filter(lambda shift: shift[0] != "Pacific/Apia"), st.floats(-4 * HOUR, HOUR))
def test_ticks_match_a_brute_force_oracle(expr: str, shift: tuple[str, float], offset: float
                                          ) -> None:
    tz = ZoneInfo(shift[0])
    after = shift[1] + offset
    expected = _oracle(expr, tz, after, after + 5 * HOUR)
    assert ticks_between(parse_schedule(expr), tz, after, after + 5 * HOUR, 1000) == expected


def test_a_gap_costs_one_croniter_step_not_one_per_gap_wall(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # `* * * * * *` has 86400 walls in Samoa's lost day; they are one tick, found by
    # jumping to the gap's end rather than by stepping through them.
    from croniter import croniter

    calls = 0
    real_get_next = croniter.get_next

    def counting(self: croniter, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_get_next(self, *args, **kwargs)

    monkeypatch.setattr(croniter, "get_next", counting)
    apia = ZoneInfo("Pacific/Apia")
    got = ticks("* * * * * *", apia, utc(2011, 12, 30, 9, 59, 58), utc(2011, 12, 30, 10, 0, 2))
    assert got == [utc(2011, 12, 30, 9, 59, 59) + i for i in range(4)]
    assert calls < 10

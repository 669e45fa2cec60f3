"""Schedule expressions: five or six cron fields, aliases, @every; and time zones."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.model import format_duration
from supervisor.schedule import CronSchedule, EverySchedule, parse_schedule, parse_timezone


@pytest.mark.parametrize(
    "expr",
    ["*/5 * * * *", "0 2 * * *", "0 2 * * MON-FRI", "15,45 8-18 * * 1-5", "0 0 1 1 *",
     "0 2 L * *", "0 0 29 2 *"],
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

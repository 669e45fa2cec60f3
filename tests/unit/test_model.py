"""Pure domain types: durations, signals, URL masking, exit statuses, key names."""

from __future__ import annotations

import math
import signal

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from supervisor.model import (
    ExitReason,
    ExitStatus,
    Mode,
    coord_key,
    coord_lease,
    database_keys,
    format_duration,
    leader_lease,
    lease_name,
    mask_url,
    parse_coord_key,
    parse_duration,
    parse_leader_lease,
    parse_signal,
    per_group_prefix,
)

# --- parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (10, 10.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
        ("1.5s", 1.5),
        ("  10s  ", 10.0),
        ("9ms", 0.009),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds, rel=0, abs=1e-12)


def test_parse_duration_milliseconds_are_exact() -> None:
    # 9 * 0.001 is 0.009000000000000001; the parser must give the float closest to 0.009.
    assert parse_duration("9ms") == 0.009
    assert parse_duration("7ms") == 0.007


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-10s", " -5m", "-0"])
def test_parse_duration_refuses_negatives(value: object) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 1}, b"10s"])
def test_parse_duration_refuses_non_durations(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    ["", " ", "s", "ten seconds", "10 s", "10sec", "10S", "1e3", "5x", "1.s", ".5s", "10s5",
     "inf", "nan", "0x10", "1_000"],
)
def test_parse_duration_refuses_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, 10**400, "9" * 400, "9" * 400 + "d"]
)
def test_parse_duration_refuses_non_finite(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_format_duration_prefers_units() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.5) == "500ms"
    assert format_duration(10) == "10s"
    assert format_duration(300) == "5m"
    assert format_duration(3600) == "1h"
    assert format_duration(7 * 86400) == "7d"
    assert format_duration(1.5) == "1.5s"


@pytest.mark.parametrize("seconds", [1.23456789, 1234567.5, 1e-05, 1e16, 0.009, 5e-324])
def test_format_duration_never_loses_precision_or_writes_exponents(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text.removesuffix("ms").removesuffix("s").removesuffix("d")
    assert parse_duration(text) == seconds


@given(
    st.one_of(
        st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=10**12).map(float),
        st.integers(min_value=0, max_value=10**6).map(lambda ms: ms / 1000),
    )
)
@example(0.1)
@example(90.0)
@example(1e-07)
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# --- parse_signal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("sigterm", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("int", signal.SIGINT),
        (" SIGHUP ", signal.SIGHUP),
        ("SIGKILL", signal.SIGKILL),
        (15, signal.SIGTERM),
        (int(signal.SIGUSR1), signal.SIGUSR1),
        (signal.SIGQUIT, signal.SIGQUIT),
    ],
)
def test_parse_signal_accepts(value: object, expected: signal.Signals) -> None:
    assert parse_signal(value) is expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("SIGFOO", "unknown signal name"),
        ("", "unknown signal name"),
        ("SIG", "unknown signal name"),
        ("SIG_DFL", "unknown signal name"),
        (0, "unknown signal number"),
        (-15, "unknown signal number"),
        (1000, "unknown signal number"),
        (True, "expected a signal name"),
        (15.0, "expected a signal name"),
        (None, "expected a signal name"),
    ],
)
def test_parse_signal_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_signal(value)


# --- mask_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://fleet:s3cret@db:5432/fleet",
         "postgresql+psycopg://fleet:***@db:5432/fleet"),
        ("mysql+pymysql://root:hunter2@mysql.internal/app?charset=utf8mb4",
         "mysql+pymysql://root:***@mysql.internal/app?charset=utf8mb4"),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:pw@[2001:db8::7]/db", "postgresql://u:***@[2001:db8::7]/db"),
        ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
        ("postgresql://u:p%40ss@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u@db:5432/x?password=hunter2&sslmode=require",
         "postgresql://u@db:5432/x?password=***&sslmode=require"),
    ],
)
def test_mask_url_replaces_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    ["sqlite:///supervisor.db", "sqlite://", "postgresql://fleet@db/fleet",
     "postgresql://db:5432/fleet", "mysql+pymysql://root@[::1]/app", "not a url"],
)
def test_mask_url_leaves_urls_without_password_alone(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize(
    "password",
    ["p@ss", "p@ss@word", "pa/ss", "pa#ss", "pa?ss", "p:a:ss", "pa ss", "p\nss", "pä$$wörd",
     "]]:[[", "%zz", "pa/ss?x#y@z"],
)
@pytest.mark.parametrize(
    "template",
    ["postgresql+psycopg://fleet:{}@db.example.com:5432/fleet",
     "mysql+pymysql://root:{}@[::1]:3306/app",
     "postgresql://u:{}@[2001:db8::1/broken-ipv6",
     "postgresql://u:{}@db:99999/port-out-of-range",
     "postgresql//u:{}@no-scheme-separator"],
)
def test_mask_url_never_shows_odd_passwords(template: str, password: str) -> None:
    assert password not in mask_url(template.format(password))


_HOSTS = st.sampled_from(
    ["db", "db.example.com", "10.0.0.7", "[::1]", "[2001:db8::42]", "[fe80::1%25eth0]"]
)


@given(
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql",
                            "mariadb+pymysql"]),
    user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=12),
    password=st.text(min_size=1),
    host=_HOSTS,
    port=st.sampled_from(["", ":5432", ":3306", ":99999", ":x"]),
    tail=st.sampled_from(["", "/fleet", "/fleet?sslmode=require", "/app?charset=utf8mb4"]),
)
def test_mask_url_never_contains_the_password(
    scheme: str, user: str, password: str, host: str, port: str, tail: str
) -> None:
    skeleton = f"{scheme}://{user}:***@{host}{port}{tail}"
    assume(password not in skeleton)  # "d" is in "db": not a leak
    url = f"{scheme}://{user}:{password}@{host}{port}{tail}"
    assert password not in mask_url(url)


# --- ExitStatus -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "description"),
    [
        (ExitStatus(0), ExitReason.EXITED, "exit status 0"),
        (ExitStatus(1), ExitReason.FAILED, "exit status 1"),
        (ExitStatus(255), ExitReason.FAILED, "exit status 255"),
        (ExitStatus(-9), ExitReason.KILLED, "killed by SIGKILL"),
        (ExitStatus(-int(signal.SIGSEGV)), ExitReason.KILLED, "killed by SIGSEGV"),
        (ExitStatus(-200), ExitReason.KILLED, "killed by signal 200"),
        (ExitStatus(-15, stop_requested=True), ExitReason.STOPPED, "killed by SIGTERM"),
        (ExitStatus(0, stop_requested=True), ExitReason.STOPPED, "exit status 0"),
        (ExitStatus(3, stop_requested=True), ExitReason.STOPPED, "exit status 3"),
    ],
)
def test_exit_status_reason_and_description(
    status: ExitStatus, reason: ExitReason, description: str
) -> None:
    assert status.reason is reason
    assert status.describe() == description


def test_exit_status_signal_and_success() -> None:
    assert ExitStatus(0).success
    assert not ExitStatus(1).success
    assert not ExitStatus(-9).success
    assert ExitStatus(-9).signal is signal.SIGKILL
    assert ExitStatus(-200).signal is None
    assert ExitStatus(2).signal is None


# --- key names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "scope", "name"),
    [
        (Mode.GLOBAL_LEADER, None, "leader/indexer"),
        (Mode.GROUP_LEADER, None, "leader/indexer/eu"),
        (Mode.GROUP_LEADER, "group", "leader/indexer/eu"),
        (Mode.GROUP_LEADER, "global", "leader/indexer"),
    ],
)
def test_a_leader_lease_is_per_group_only_for_a_group_leader(
        mode: Mode, scope: str | None, name: str) -> None:
    assert lease_name("indexer", mode, scope, "eu") == name


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("leader/indexer", ("indexer", None)),
        ("leader/indexer/eu", ("indexer", "eu")),
        ("leader/indexer/eu/west", ("indexer", "eu/west")),  # a group may hold "/"
        ("coord/indexer/eu", None),
        ("indexer", None),
    ],
)
def test_a_leader_lease_name_parses_into_worker_and_group(
        name: str, parsed: tuple[str, str | None] | None) -> None:
    assert parse_leader_lease(name) == parsed


@pytest.mark.parametrize(
    ("scope", "key", "parsed"),
    [
        (None, "indexer", ("indexer", None)),
        ("global", "indexer", ("indexer", None)),
        ("group", "indexer/eu/west", ("indexer", "eu/west")),
    ],
)
def test_a_coordinated_key_parses_back_into_worker_and_group(
        scope: str | None, key: str, parsed: tuple[str, str | None]) -> None:
    assert coord_key("indexer", scope, "eu/west") == key
    assert parse_coord_key(key) == parsed


worker_names = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
groups = st.text(st.characters(min_codepoint=0x21), min_size=1, max_size=20)


@given(worker_names, groups)
def test_built_keys_parse_back(worker: str, group: str) -> None:
    assert parse_leader_lease(leader_lease(worker, group)) == (worker, group)
    assert parse_leader_lease(leader_lease(worker)) == (worker, None)
    assert parse_coord_key(coord_key(worker, "group", group)) == (worker, group)
    assert leader_lease(worker, group).startswith(per_group_prefix(leader_lease(worker)))
    assert coord_key(worker, "group", group).startswith(per_group_prefix(worker))


def test_database_keys_are_every_key_a_worker_writes() -> None:
    assert database_keys("w", Mode.GROUP_LEADER, None, "eu") == ["leader/w/eu"]
    assert database_keys("w", Mode.COORDINATED, "group", "eu") == ["w/eu", "coord/w/eu"]
    assert database_keys("w", Mode.COORDINATED, None, "eu") == ["w", coord_lease("w")]
    assert database_keys("w", Mode.CRON, None, "eu") == []

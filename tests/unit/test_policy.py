"""Restart decisions, driven by scripted exit histories, a fake now and an injected draw."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.model import RestartPolicy
from supervisor.policy import Backoff, RestartDecision, RestartTracker

BACKOFF = Backoff(initial=1.0, max=60.0, factor=2.0, jitter=0.2, reset=30.0)
NO_JITTER = Backoff(initial=1.0, max=60.0, factor=2.0, jitter=0.0, reset=30.0)


def scripted(draws: Iterable[float]) -> Iterator[float]:
    return iter(draws)


def tracker(
    policy: RestartPolicy = RestartPolicy.ON_FAILURE,
    backoff: Backoff = NO_JITTER,
    max_restarts: int = 0,
    window: float = 300.0,
    draw: float = 0.0,
) -> RestartTracker:
    return RestartTracker(policy, backoff, max_restarts, window, draw=lambda: draw)


def crash_loop(
    t: RestartTracker, times: Iterable[float], uptime: float = 0.1
) -> list[RestartDecision]:
    """A child that fails after `uptime` seconds, once at each of `times`."""
    return [t.on_exit(success=False, uptime=uptime, now=now) for now in times]


# --- Backoff.delay --------------------------------------------------------------------------


def test_first_restart_is_immediate_whatever_the_draw() -> None:
    for draw in (0.0, 0.5, 0.999):
        assert BACKOFF.delay(1, draw) == 0.0


def test_delays_grow_by_factor_then_cap_at_max() -> None:
    delays = [NO_JITTER.delay(attempt, 0.0) for attempt in range(1, 11)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_delay_uses_initial_and_factor() -> None:
    backoff = Backoff(initial=0.5, max=100.0, factor=3.0, jitter=0.0)
    assert [backoff.delay(n, 0.0) for n in (2, 3, 4)] == [0.5, 1.5, 4.5]


def test_jitter_draw_shortens_the_delay_within_bounds() -> None:
    assert BACKOFF.delay(4, 0.0) == 4.0  # no shortening at draw 0
    assert BACKOFF.delay(4, 0.5) == pytest.approx(4.0 * 0.9)
    assert BACKOFF.delay(4, 1.0) == pytest.approx(4.0 * 0.8)  # the lower bound


@given(
    attempt=st.integers(min_value=2, max_value=5000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
)
def test_delay_is_within_jitter_bounds_and_never_above_max(
    attempt: int, draw: float, jitter: float, factor: float
) -> None:
    backoff = Backoff(initial=1.0, max=60.0, factor=factor, jitter=jitter)
    growth = (attempt - 2) * math.log(factor)
    full = 60.0 if growth > math.log(60.0) + 1 else min(60.0, factor ** (attempt - 2))
    delay = backoff.delay(attempt, draw)
    assert full * (1 - jitter) - 1e-9 <= delay <= full + 1e-9
    assert delay <= 60.0


def test_delay_after_thousands_of_attempts_is_the_cap() -> None:
    # factor ** (attempt - 2) overflows a float near attempt 1026 for factor 2.
    assert NO_JITTER.delay(1100, 0.0) == 60.0
    assert NO_JITTER.delay(10**6, 0.0) == 60.0


# --- RestartTracker: scripted histories -----------------------------------------------------


def test_quick_crashes_restart_at_once_then_back_off_to_the_cap() -> None:
    t = tracker()
    decisions = crash_loop(t, [float(n) for n in range(9)])
    assert all(d.restart and not d.give_up for d in decisions)
    assert [d.attempt for d in decisions] == list(range(1, 10))
    assert [d.delay for d in decisions] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert t.attempt == 9


def test_injected_draws_apply_jitter_per_restart() -> None:
    draws = scripted([0.9, 0.0, 1.0, 0.5])
    t = RestartTracker(RestartPolicy.ALWAYS, BACKOFF, draw=lambda: next(draws))
    delays = [d.delay for d in crash_loop(t, [0.0, 1.0, 2.0, 3.0])]
    assert delays == pytest.approx([0.0, 1.0, 2.0 * 0.8, 4.0 * 0.9])


def test_a_child_that_stayed_up_for_reset_starts_over_immediately() -> None:
    t = tracker()
    crash_loop(t, [0.0, 1.0, 3.0, 7.0])
    assert t.attempt == 4
    healthy = t.on_exit(success=False, uptime=30.0, now=100.0)  # exactly `reset`
    assert healthy == RestartDecision(restart=True, delay=0.0, attempt=1)
    assert t.on_exit(success=False, uptime=0.1, now=101.0).delay == 1.0


def test_uptime_just_below_reset_keeps_backing_off() -> None:
    t = tracker()
    crash_loop(t, [0.0, 1.0, 3.0])
    decision = t.on_exit(success=False, uptime=29.9, now=40.0)
    assert decision.attempt == 4
    assert decision.delay == 4.0


@pytest.mark.parametrize(
    ("policy", "success", "restart"),
    [
        (RestartPolicy.ALWAYS, True, True),
        (RestartPolicy.ALWAYS, False, True),
        (RestartPolicy.ON_FAILURE, True, False),
        (RestartPolicy.ON_FAILURE, False, True),
        (RestartPolicy.NEVER, True, False),
        (RestartPolicy.NEVER, False, False),
    ],
)
def test_restart_policies(policy: RestartPolicy, success: bool, restart: bool) -> None:
    t = tracker(policy=policy, max_restarts=1)
    decision = t.on_exit(success=success, uptime=5.0, now=10.0)
    assert decision.restart is restart
    assert decision.give_up is False  # not restarting by policy is not giving up
    assert decision.delay == 0.0


def test_always_backs_off_clean_exits_too() -> None:
    t = tracker(policy=RestartPolicy.ALWAYS)
    decisions = [t.on_exit(success=True, uptime=0.1, now=float(n)) for n in range(4)]
    assert [d.delay for d in decisions] == [0.0, 1.0, 2.0, 4.0]


def test_never_and_clean_on_failure_exits_do_not_count_as_restarts() -> None:
    t = tracker(policy=RestartPolicy.ON_FAILURE, max_restarts=2, window=60.0)
    for n in range(10):
        assert not t.on_exit(success=True, uptime=0.1, now=float(n)).give_up
    assert t.attempt == 0
    decisions = crash_loop(t, [20.0, 21.0])
    assert all(d.restart for d in decisions)


def test_gives_up_when_max_restarts_fall_within_the_window() -> None:
    t = tracker(max_restarts=3, window=60.0)
    decisions = crash_loop(t, [0.0, 10.0, 20.0, 30.0])
    assert [d.restart for d in decisions] == [True, True, True, False]
    assert decisions[-1].give_up
    assert not any(d.give_up for d in decisions[:-1])


def test_window_sliding_lets_a_slow_crash_loop_continue() -> None:
    t = tracker(max_restarts=3, window=60.0)
    # Never more than 3 restarts within any 60 s: restarts at 0, 25, 50, then 75 sees 0 expire.
    decisions = crash_loop(t, [0.0, 25.0, 50.0, 75.0, 100.0, 125.0, 150.0])
    assert all(d.restart and not d.give_up for d in decisions)


def test_window_boundary_a_restart_exactly_window_ago_no_longer_counts() -> None:
    t = tracker(max_restarts=2, window=60.0)
    crash_loop(t, [0.0, 30.0])
    assert t.on_exit(success=False, uptime=0.1, now=59.9).give_up
    t = tracker(max_restarts=2, window=60.0)
    crash_loop(t, [0.0, 30.0])
    assert t.on_exit(success=False, uptime=0.1, now=60.0).restart


def test_after_a_burst_the_tracker_continues_once_the_window_has_passed() -> None:
    t = tracker(max_restarts=2, window=60.0)
    crash_loop(t, [0.0, 1.0])
    assert t.on_exit(success=False, uptime=0.1, now=2.0).give_up
    assert t.on_exit(success=False, uptime=0.1, now=62.0).restart


def test_max_restarts_zero_never_gives_up() -> None:
    t = tracker(max_restarts=0, window=60.0)
    decisions = crash_loop(t, [n * 0.01 for n in range(2000)])
    assert all(d.restart and not d.give_up for d in decisions)
    assert decisions[-1].attempt == 2000
    assert decisions[-1].delay == 60.0


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=120.0), max_size=60),
    max_restarts=st.integers(min_value=1, max_value=5),
    window=st.floats(min_value=1.0, max_value=600.0),
)
def test_never_more_than_max_restarts_within_any_window(
    gaps: list[float], max_restarts: int, window: float
) -> None:
    t = tracker(policy=RestartPolicy.ALWAYS, max_restarts=max_restarts, window=window)
    now = 0.0
    restarted_at: list[float] = []
    for gap in gaps:
        now += gap
        decision = t.on_exit(success=False, uptime=0.1, now=now)
        if decision.restart:
            restarted_at.append(now)
        else:
            assert decision.give_up
    for time in restarted_at:
        in_window = [r for r in restarted_at if time - window < r <= time]
        assert len(in_window) <= max_restarts

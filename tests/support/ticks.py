"""`ticks_between`, the forward walk the schedule tests compare against, built on the
public `next_tick` alone (production code needs only the next tick, or the latest ones:
supervisor.schedule.recent_ticks)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from supervisor.schedule import Schedule, next_tick


def ticks_between(schedule: Schedule, tz: ZoneInfo, start: float, end: float,
                  limit: int) -> list[float]:
    """Ticks t with start < t <= end, oldest first, at most `limit` of them."""
    ticks: list[float] = []
    at = start
    while len(ticks) < limit and end > at:
        at = next_tick(schedule, tz, at)
        if at > end:
            break
        ticks.append(at)
    return ticks
